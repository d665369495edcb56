import { RwkvInputError } from "../errors.js";

/*
 * JSON Schema → GBNF. The output is compact JSON: no whitespace except one optional space after
 * ":" and "," (models often write one), so a barely trained model cannot wander off into endless
 * blanks. Numbers are bounded too (at most 16 integer digits, 15 fraction digits, 3 exponent
 * digits): a sampled number always ends. Objects list their properties in the schema's order,
 * required ones always, optional ones possibly skipped; no other properties are generated (that is
 * valid whatever additionalProperties says).
 *
 * Supported: type (one or a list), properties, required, additionalProperties, items, prefixItems,
 * minItems, maxItems, enum, const, anyOf, oneOf (as anyOf: the output matches at least one
 * branch), allOf with a single schema, minLength, maxLength, format (date, time, date-time, uuid),
 * $ref to #/$defs/... or #/definitions/... (recursion allowed), and the annotations title,
 * description, default, examples, $schema, $id, $comment, deprecated, readOnly, writeOnly.
 * Anything else (pattern, minimum, multipleOf, patternProperties, if/then, ...) is refused with
 * its name, rather than silently generating output that might not validate.
 */

const ANNOTATIONS = ["title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly", "$defs", "definitions"];
const SUPPORTED = new Set([...ANNOTATIONS, "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
  "enum", "const", "anyOf", "oneOf", "allOf", "minLength", "maxLength", "format", "$ref"]);
const TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"];
/** Bounds are unrolled into grammar rules; beyond this, refuse rather than build a huge grammar. */
const MAX_BOUND = 1000;

/** Generic JSON, and the pieces every schema grammar uses. */
export const JSON_BASE_GBNF = String.raw`
sp ::= " "?
string ::= "\"" char* "\""
char ::= [^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
number ::= integer ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" (string ":" sp value ("," sp string ":" sp value)*)? "}"
array ::= "[" (value ("," sp value)*)? "]"
date ::= [0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])
time ::= ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])
date-time ::= date "T" time
uuid ::= [0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}
`;
const FORMATS = new Set(["date", "time", "date-time", "uuid"]);

type Schema = { [key: string]: unknown };

/** GBNF for "any JSON object" (response_format json_object). */
export function jsonObjectGbnf(): string {
  return `root ::= object\n${JSON_BASE_GBNF}`;
}

/** GBNF whose sentences are exactly compact JSON texts valid against `schema`; errors name `subject`. */
export function jsonSchemaToGbnf(schema: unknown, subject = "json_schema"): string {
  const { root, rules } = jsonSchemaRules(schema, subject, "s");
  return `root ::= ${root}\n${rules}\n${JSON_BASE_GBNF}`;
}

/**
 * The rules of a schema without a root rule and without JSON_BASE_GBNF (for combining several
 * schemas in one grammar): `root` is the expression to use, helper rules are named prefix0, prefix1...
 */
export function jsonSchemaRules(schema: unknown, subject: string, prefix: string): { root: string; rules: string } {
  return new Converter(schema, subject, prefix).run();
}

/** A GBNF string literal for `text`. */
function lit(text: string): string {
  let out = "\"";
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (ch === "\"" || ch === "\\") out += `\\${ch}`;
    else if (cp < 0x20) out += `\\x${cp.toString(16).padStart(2, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

class Converter {
  private readonly rules = new Map<string, string>();
  private readonly refNames = new Map<string, string>();
  private count = 0;

  constructor(private readonly root: unknown, private readonly subject: string, private readonly prefix: string) {}

  private fail(path: string, problem: string): never {
    throw new RwkvInputError(this.subject, `${path || "/"}: ${problem}`);
  }

  run(): { root: string; rules: string } {
    const root = this.convert(this.root, "");
    return { root, rules: [...this.rules].map(([n, b]) => `${n} ::= ${b}`).join("\n") };
  }

  /** A GBNF expression (a rule name or a parenthesized group) for `s` at JSON pointer `path`. */
  private convert(s: unknown, path: string): string {
    if (s === true) return "value";
    if (s === false) this.fail(path, "the schema false matches nothing");
    if (typeof s !== "object" || s === null || Array.isArray(s)) this.fail(path, "a schema must be an object or a boolean");
    const o = s as Schema;
    const bad = Object.keys(o).filter((k) => !SUPPORTED.has(k));
    if (bad.length > 0) this.fail(path, `unsupported keyword${bad.length > 1 ? "s" : ""} ${bad.join(", ")} (supported: ${[...SUPPORTED].filter((k) => !ANNOTATIONS.includes(k)).join(", ")})`);
    if (o.$ref !== undefined) return this.ref(o.$ref, path);
    if (o.const !== undefined) return `(${lit(JSON.stringify(o.const))})`;
    if (o.enum !== undefined) {
      if (!Array.isArray(o.enum) || o.enum.length === 0) this.fail(`${path}/enum`, "must be a non-empty array");
      return `(${o.enum.map((v) => lit(JSON.stringify(v))).join(" | ")})`;
    }
    for (const key of ["anyOf", "oneOf"] as const) {
      if (o[key] === undefined) continue;
      const list = o[key];
      if (!Array.isArray(list) || list.length === 0) this.fail(`${path}/${key}`, "must be a non-empty array of schemas");
      return `(${list.map((b, i) => this.convert(b, `${path}/${key}/${i}`)).join(" | ")})`;
    }
    if (o.allOf !== undefined) {
      if (!Array.isArray(o.allOf) || o.allOf.length !== 1) this.fail(`${path}/allOf`, "only allOf with exactly one schema is supported");
      return this.convert(o.allOf[0], `${path}/allOf/0`);
    }
    let types: string[];
    if (o.type === undefined) {
      types = o.properties !== undefined ? ["object"] : o.items !== undefined || o.prefixItems !== undefined ? ["array"] : [];
      if (types.length === 0) return "value";
    } else {
      types = Array.isArray(o.type) ? o.type : [o.type];
      for (const t of types) if (typeof t !== "string" || !TYPES.includes(t)) this.fail(`${path}/type`, `must be one of ${TYPES.join(", ")} (or a list of them), got ${JSON.stringify(t)}`);
      if (types.length === 0) this.fail(`${path}/type`, "must not be an empty list");
    }
    return `(${types.map((t) => this.typed(o, t, path)).join(" | ")})`;
  }

  private typed(o: Schema, type: string, path: string): string {
    switch (type) {
      case "object": return this.object(o, path);
      case "array": return this.array(o, path);
      case "string": return this.string(o, path);
      default: return type; // number, integer, boolean, null: rules of BASE
    }
  }

  private ref(ref: unknown, path: string): string {
    const m = typeof ref === "string" ? /^#\/(\$defs|definitions)\/([^/]+)$/.exec(ref) : null;
    if (!m) this.fail(`${path}/$ref`, `only local references #/$defs/NAME or #/definitions/NAME are supported, got ${JSON.stringify(ref)}`);
    const known = this.refNames.get(m[0]);
    if (known) return known;
    const defs = (this.root as Schema)[m[1]];
    const target = typeof defs === "object" && defs !== null ? (defs as Schema)[m[2]] : undefined;
    if (target === undefined) this.fail(`${path}/$ref`, `${m[0]} is not defined`);
    const name = `${this.prefix}${this.count++}`;
    this.refNames.set(m[0], name);
    this.rules.set(name, this.convert(target, `/${m[1]}/${m[2]}`)); // set after: the body may refer to the name
    return name;
  }

  private bound(o: Schema, key: string, path: string): number | undefined {
    const v = o[key];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) this.fail(`${path}/${key}`, `must be an integer >= 0, got ${JSON.stringify(v)}`);
    if (v > MAX_BOUND) this.fail(`${path}/${key}`, `values above ${MAX_BOUND} are not supported, got ${v}`);
    return v;
  }

  private bounds(o: Schema, minKey: string, maxKey: string, path: string): [number, number | undefined] {
    const min = this.bound(o, minKey, path) ?? 0;
    const max = this.bound(o, maxKey, path);
    if (max !== undefined && max < min) this.fail(path, `${maxKey} ${max} is below ${minKey} ${min}`);
    return [min, max];
  }

  private string(o: Schema, path: string): string {
    if (o.format !== undefined) {
      if (typeof o.format !== "string" || !FORMATS.has(o.format)) this.fail(`${path}/format`, `unsupported format ${JSON.stringify(o.format)} (supported: ${[...FORMATS].join(", ")})`);
      if (o.minLength !== undefined || o.maxLength !== undefined) this.fail(path, "minLength/maxLength together with format are not supported");
      return `("\\"" ${o.format} "\\"")`;
    }
    const [min, max] = this.bounds(o, "minLength", "maxLength", path);
    return `("\\"" char{${min},${max ?? ""}} "\\"")`;
  }

  private array(o: Schema, path: string): string {
    const [min, max] = this.bounds(o, "minItems", "maxItems", path);
    const prefix = o.prefixItems;
    if (prefix !== undefined) {
      if (!Array.isArray(prefix)) this.fail(`${path}/prefixItems`, "must be an array of schemas");
      if (o.items !== false || min !== prefix.length) this.fail(path, "prefixItems is supported only as a fixed tuple (items: false, minItems = its length)");
      const parts = prefix.map((p, i) => this.convert(p, `${path}/prefixItems/${i}`));
      return `("[" ${parts.join(" \",\" sp ")} "]")`;
    }
    const item = o.items === undefined ? "value" : this.convert(o.items, `${path}/items`);
    if (max === 0) return "(\"[\" \"]\")";
    const more = `("," sp ${item})`;
    const rest = `${more}{${Math.max(min - 1, 0)},${max === undefined ? "" : max - 1}}`;
    return min > 0 ? `("[" ${item} ${rest} "]")` : `("[" (${item} ${rest})? "]")`;
  }

  private object(o: Schema, path: string): string {
    const props = o.properties ?? {};
    if (typeof props !== "object" || props === null || Array.isArray(props)) this.fail(`${path}/properties`, "must be an object");
    const required = o.required ?? [];
    if (!Array.isArray(required) || !required.every((r): r is string => typeof r === "string")) this.fail(`${path}/required`, "must be an array of strings");
    const ap = o.additionalProperties;
    if (ap !== undefined && typeof ap !== "boolean" && (typeof ap !== "object" || ap === null)) this.fail(`${path}/additionalProperties`, "must be a boolean or a schema");
    const names = Object.keys(props);
    for (const r of required) {
      if (!names.includes(r)) this.fail(`${path}/required`, `required property ${JSON.stringify(r)} is not in properties`);
    }
    if (names.length === 0) return o.properties === undefined && ap !== false ? "object" : "(\"{\" \"}\")";
    const kv = names.map((n) => `${lit(JSON.stringify(n))} ":" sp ${this.convert((props as Schema)[n], `${path}/properties/${n}`)}`);
    const isReq = names.map((n) => required.includes(n));
    // From property i on, given that something was already written (so each needs a comma).
    const tail = (i: number): string => names.slice(i).map((_, j) => (isReq[i + j] ? `"," sp ${kv[i + j]}` : `("," sp ${kv[i + j]})?`)).join(" ");
    const firstReq = isReq.indexOf(true);
    // The first property written is some optional one before the first required, or the first required.
    const starts: string[] = [];
    for (let i = 0; i < names.length; i++) {
      if (firstReq >= 0 && i > firstReq) break;
      starts.push(`${kv[i]} ${tail(i + 1)}`.trim());
    }
    const body = starts.map((s) => `(${s})`).join(" | ");
    return firstReq >= 0 ? `("{" (${body}) "}")` : `("{" (${body})? "}")`;
  }
}
