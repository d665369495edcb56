import assert from "node:assert/strict";
import { test } from "node:test";
import { Decoding } from "../src/core/decoding.js";
import { generate } from "../src/core/generate.js";
import { compileConstraint, jsonSchemaToGbnf } from "../src/core/grammar/index.js";
import { ByteTokenizer } from "../src/core/tokenizer/bytes.js";
import { NeoxTokenizer } from "../src/core/tokenizer/neox.js";
import type { Tokenizer } from "../src/core/tokenizer/types.js";
import { parseWorldVocab, WorldTokenizer } from "../src/core/tokenizer/world.js";
import { loadModel } from "../src/node/load.js";
import { readFileSync } from "node:fs";
import { sharedPath } from "./shared.js";

const bytes = new ByteTokenizer();

/** Whether the grammar accepts `text` as a complete sentence, fed one byte-token at a time. */
function accepts(grammar: string, text: string): boolean {
  const m = compileConstraint({ kind: "gbnf", grammar }, bytes, 256).matcher();
  for (const b of new TextEncoder().encode(text)) {
    if (!m.allows(b)) return false;
    m.accept(b);
  }
  return m.accepting;
}

test("GBNF: literals, classes, groups, repetition and comments match exactly the sentences they describe", () => {
  const g = String.raw`# a key=value list
root ::= pair ("," pair){0,2}
pair ::= [a-z]+ "=" ([0-9] | "\x41")+`;
  for (const ok of ["a=1", "ab=12,c=A", "a=1,b=2,c=3"]) assert.equal(accepts(g, ok), true, ok);
  for (const bad of ["", "a=", "A=1", "a=1,b=2,c=3,d=4", "a=1,", "a=b"]) assert.equal(accepts(g, bad), false, bad);
  assert.equal(accepts(`root ::= [^"]* "\\""`, "héllo\""), true);
  assert.equal(accepts("root ::= \"é\" | \"ü\"", "ü"), true);
  assert.equal(accepts("root ::= \"é\"", "e"), false);
});

test("GBNF: bad grammars are refused with the rule and problem named", () => {
  const err = (grammar: string, re: RegExp) => assert.throws(() => compileConstraint({ kind: "gbnf", grammar }, bytes, 256), re);
  err("root ::= \"a\" root", /grammar: can never finish/);
  err("root ::= x\nx ::= x \"a\" | \"b\"", /rule x is left-recursive/);
  err("root ::= item", /rule item is used but never defined/);
  err("start ::= \"a\"", /no rule named root/);
  err("root ::= \"a", /line 1: unterminated string literal/);
  err("root ::= [b-a]", /reversed/);
  err("root ::= \"a\"{3,1}", /max < min/);
  err("root ::= \"a\"{0,99999999}", /above 10000/);
  err("root ::= (\"a\"", /expected "\)"/);
});

test("JSON Schema: unsupported keywords and invalid schemas are refused naming the keyword and where it is", () => {
  const err = (schema: unknown, re: RegExp) => assert.throws(() => jsonSchemaToGbnf(schema, "json_schema"), re);
  err({ type: "string", pattern: "^a" }, /json_schema: \/: unsupported keyword pattern/);
  err({ type: "object", properties: { n: { type: "integer", minimum: 0, multipleOf: 2 } } }, /\/properties\/n: unsupported keywords minimum, multipleOf/);
  err({ type: "strin" }, /\/type: must be one of object, array/);
  err({ type: "object", properties: { a: { type: "string" } }, required: ["b"] }, /required property "b" is not in properties/);
  err({ enum: [] }, /\/enum: must be a non-empty array/);
  err({ type: "array", minItems: 3, maxItems: 1 }, /maxItems 1 is below minItems 3/);
  err({ $ref: "#/$defs/missing" }, /#\/\$defs\/missing is not defined/);
  err({ type: "string", format: "email" }, /unsupported format "email"/);
  err(false, /matches nothing/);
  err("string", /must be an object or a boolean/);
});

/* An independent JSON Schema check of the subset the tests use (not the grammar's own code). */
function validate(v: unknown, s: Record<string, unknown>, root: Record<string, unknown>, path = "$"): string | null {
  if (s.$ref) return validate(v, (root.$defs as Record<string, Record<string, unknown>>)[String(s.$ref).split("/").pop()!], root, path);
  if (s.const !== undefined) return JSON.stringify(v) === JSON.stringify(s.const) ? null : `${path}: not the const`;
  if (s.enum) return (s.enum as unknown[]).some((e) => JSON.stringify(e) === JSON.stringify(v)) ? null : `${path}: not in enum`;
  if (s.anyOf) return (s.anyOf as Record<string, unknown>[]).some((b) => validate(v, b, root, path) === null) ? null : `${path}: no anyOf branch`;
  const types = s.type === undefined ? null : Array.isArray(s.type) ? s.type as string[] : [s.type as string];
  const typeOf = (x: unknown) => x === null ? "null" : Array.isArray(x) ? "array" : Number.isInteger(x) ? "integer" : typeof x;
  const t = typeOf(v);
  if (types && !types.some((ty) => ty === t || (ty === "number" && t === "integer"))) return `${path}: ${t} is not ${types.join("|")}`;
  if (t === "string") {
    const len = [...(v as string)].length;
    if (s.minLength !== undefined && len < (s.minLength as number)) return `${path}: too short`;
    if (s.maxLength !== undefined && len > (s.maxLength as number)) return `${path}: too long`;
    if (s.format === "date" && !/^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$/.test(v as string)) return `${path}: not a date`;
    if (s.format === "uuid" && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(v as string)) return `${path}: not a uuid`;
  }
  if (t === "array") {
    const a = v as unknown[];
    if (s.minItems !== undefined && a.length < (s.minItems as number)) return `${path}: too few items`;
    if (s.maxItems !== undefined && a.length > (s.maxItems as number)) return `${path}: too many items`;
    if (s.items) for (let i = 0; i < a.length; i++) { const e = validate(a[i], s.items as Record<string, unknown>, root, `${path}[${i}]`); if (e) return e; }
  }
  if (t === "object") {
    const o = v as Record<string, unknown>;
    for (const r of (s.required as string[] | undefined) ?? []) if (!(r in o)) return `${path}: missing ${r}`;
    const props = (s.properties ?? {}) as Record<string, Record<string, unknown>>;
    for (const [k, x] of Object.entries(o)) {
      if (!(k in props)) { if (s.additionalProperties === false) return `${path}: extra property ${k}`; continue; }
      const e = validate(x, props[k], root, `${path}.${k}`);
      if (e) return e;
    }
  }
  return null;
}

/** Ten schemas covering types, required/optional, enums, nesting, bounds, formats, anyOf, $ref. */
export const SCHEMAS: Array<Record<string, unknown>> = [
  { type: "object", properties: { name: { type: "string", maxLength: 12 }, age: { type: "integer" } }, required: ["name", "age"], additionalProperties: false },
  { type: "array", items: { type: "number" }, minItems: 1, maxItems: 5 },
  { type: "object", properties: { color: { enum: ["red", "green", "blue"] }, ok: { type: "boolean" } }, required: ["color"] },
  { type: "object", properties: { a: { type: "string", maxLength: 5 }, b: { type: "null" }, c: { type: "integer" } }, additionalProperties: false },
  { type: "object", properties: { point: { type: "object", properties: { x: { type: "number" }, y: { type: "number" } }, required: ["x", "y"] } }, required: ["point"] },
  { type: "array", items: { type: "object", properties: { id: { type: "integer" }, tags: { type: "array", items: { type: "string", maxLength: 4 }, maxItems: 3 } }, required: ["id", "tags"] }, maxItems: 3 },
  { type: "object", properties: { when: { type: "string", format: "date" }, id: { type: "string", format: "uuid" } }, required: ["when", "id"] },
  { anyOf: [{ type: "integer" }, { type: "string", minLength: 2, maxLength: 6 }, { const: { kind: "none" } }] },
  { type: "object", properties: { v: { type: ["string", "integer", "null"], maxLength: 8 }, k: { const: 42 } }, required: ["k", "v"] },
  { $defs: { leaf: { type: "object", properties: { n: { type: "integer" } }, required: ["n"] } }, type: "object", properties: { l: { $ref: "#/$defs/leaf" }, m: { type: "array", items: { $ref: "#/$defs/leaf" }, maxItems: 2 } }, required: ["l"] },
];

test("JSON Schema: 200 seeded generations over 10 schemas by a barely trained byte-level model all parse and validate", async (t) => {
  const file = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!file) return;
  const model = await loadModel(file);
  let total = 0;
  for (const [i, schema] of SCHEMAS.entries()) {
    const grammar = compileConstraint({ kind: "json_schema", schema }, bytes, 256);
    for (let seed = 0; seed < 20; seed++) {
      const it = generate(model, bytes, { prompt: "JSON: " }, { maxTokens: 400, seed: 1000 * i + seed, sampler: { temperature: 1, topP: 1 }, grammar });
      let r = await it.next();
      while (!r.done) r = await it.next();
      assert.equal(r.value.finishReason, "stop", `schema ${i} seed ${seed}: ${r.value.text}`);
      let v: unknown;
      try { v = JSON.parse(r.value.text); } catch { assert.fail(`schema ${i} seed ${seed}: not JSON: ${r.value.text}`); }
      assert.equal(validate(v, schema, schema), null, `schema ${i} seed ${seed}: ${r.value.text}`);
      total++;
    }
  }
  assert.equal(total, 200);
});

/** Steers a Decoding toward `want`'s tokens with a 0/10 logit vector: the mask must let each one through and end right after. */
function steer(tokenizer: Tokenizer, schema: unknown, want: string, end: number[]): string {
  const g = compileConstraint({ kind: "json_schema", schema }, tokenizer, tokenizer.vocabSize);
  const dec = new Decoding(tokenizer, tokenizer.vocabSize, { grammar: g, sampler: { temperature: 0 }, stopTokens: end });
  const logits = new Float32Array(tokenizer.vocabSize);
  const ids = tokenizer.encode(want);
  let i = 0;
  for (;;) {
    logits.fill(0);
    logits[ids[i] ?? end[0]] = 10;
    const s = dec.next(logits);
    if (s.token !== null) { assert.equal(s.token, ids[i], `token ${i} of ${JSON.stringify(want)} was masked`); i++; }
    if (!s.feed) { assert.equal(s.finish, "stop"); break; }
  }
  return dec.output;
}

test("20B vocabulary: BPE tokens (with their byte-level spaces) pass the mask exactly where the JSON allows them", (t) => {
  const file = sharedPath(t, "tokenizers", "20B_tokenizer.json");
  if (!file) return;
  const neox = NeoxTokenizer.fromJson(readFileSync(file, "utf8"));
  const schema = { type: "object", properties: { city: { type: "string" }, n: { type: "integer" } }, required: ["city", "n"] };
  assert.equal(steer(neox, schema, "{\"city\": \"Zürich am See\", \"n\": -42}", [0]), "{\"city\": \"Zürich am See\", \"n\": -42}");
  // A token the grammar cannot take is masked: "{" then a digit is not an object key.
  const g = compileConstraint({ kind: "json_schema", schema }, neox, neox.vocabSize).matcher();
  g.accept(neox.encode("{")[0]);
  assert.equal(g.allows(neox.encode("7")[0]), false);
  assert.equal(g.allows(neox.encode("\"")[0]), true);
});

test("World vocabulary: masks allow multi-byte tokens only where the grammar does, and generation ends when the grammar is complete", (t) => {
  const vocab = sharedPath(t, "tokenizers", "rwkv_vocab_v20230424.txt");
  if (!vocab) return;
  const world = new WorldTokenizer(parseWorldVocab(readFileSync(vocab, "utf8")));
  const g = compileConstraint({ kind: "json_schema", schema: { enum: ["hello world", "help"] } }, world, world.vocabSize);
  const m = g.matcher();
  const allowed = Array.from({ length: world.vocabSize }, (_, id) => id).filter((id) => m.allows(id)).map((id) => world.decode([id]));
  // Every allowed token is a prefix of one of the two JSON strings, and the obvious first tokens are there.
  for (const s of allowed) assert.ok("\"hello world\"".startsWith(s) || "\"help\"".startsWith(s), `unexpected token ${JSON.stringify(s)}`);
  assert.ok(allowed.includes("\""), "the quote alone is allowed");
  // Feed "\"hel", then "p\"": complete, and nothing may follow.
  const dec = new Decoding(world, world.vocabSize, { grammar: g, sampler: { temperature: 0 }, stopTokens: [0] });
  const logits = new Float32Array(world.vocabSize);
  const want = world.encode("\"help\"");
  const out: number[] = [];
  for (;;) {
    logits.fill(0);
    logits[want[out.length] ?? 0] = 10; // steer toward the wanted tokens; the mask must let them through
    const s = dec.next(logits);
    if (s.token !== null) out.push(s.token);
    if (!s.feed) { assert.equal(s.finish, "stop"); break; }
  }
  assert.equal(dec.output, "\"help\"");
});
