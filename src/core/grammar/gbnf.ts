import { RwkvInputError } from "../errors.js";

/*
 * GBNF, the grammar format of llama.cpp (grammars/README.md there), parsed into plain rules:
 *
 *   root ::= "{" ws pair ("," ws pair)* "}"      # comments run to the end of the line
 *   pair ::= [a-z]+ ":" [0-9]{1,3}
 *
 * Supported: rules `name ::= ...`, alternatives `|`, groups `( )`, literals "..." and character
 * classes [...] / [^...] (escapes \n \r \t \\ \" \] \- \xHH \uHHHH \UHHHHHHHH), `.` (any character),
 * and the postfix operators * + ? {m} {m,} {m,n}. Matching is over Unicode code points. The rule
 * `root` is the start. Repetitions become helper rules named after the rule they appear in.
 */

/** Code point ranges, [lo0, hi0, lo1, hi1, ...] inclusive; `negated` matches everything else. */
export interface CharElem { readonly kind: "chars"; readonly ranges: readonly number[]; readonly negated: boolean }
export interface RefElem { readonly kind: "ref"; readonly rule: number }
export type Elem = CharElem | RefElem;

export interface Grammar {
  readonly names: readonly string[];
  /** rules[r] = alternatives, each a sequence of elements (an empty one matches the empty string). */
  readonly rules: ReadonlyArray<ReadonlyArray<readonly Elem[]>>;
  readonly root: number;
}

const MAX_CODE_POINT = 0x10ffff;
/** {m,n} is unrolled into rules: a bound keeps a typo like {0,99999999} from exhausting memory. */
export const MAX_REPEAT = 10000;
const NAME = /[a-zA-Z0-9_-]+/y;
const RULE_START = /[a-zA-Z0-9_-]+[ \t]*::=/y;

export function charsMatch(e: CharElem, cp: number): boolean {
  const r = e.ranges;
  for (let i = 0; i < r.length; i += 2) if (cp >= r[i] && cp <= r[i + 1]) return !e.negated;
  return e.negated;
}

/** Parses GBNF text; errors are RwkvInputError naming `subject` and where the problem is. */
export function parseGbnf(src: string, subject = "grammar"): Grammar {
  return new Parser(src, subject).parse();
}

class Parser {
  private pos = 0;
  private readonly names: string[] = [];
  private readonly index = new Map<string, number>();
  private readonly rules: Elem[][][] = [];
  private readonly defined: boolean[] = [];

  constructor(private readonly src: string, private readonly subject: string) {}

  private fail(problem: string): never {
    const line = this.src.slice(0, this.pos).split("\n").length;
    throw new RwkvInputError(this.subject, `line ${line}: ${problem}`);
  }

  private ruleId(name: string): number {
    let id = this.index.get(name);
    if (id === undefined) {
      id = this.names.length;
      this.names.push(name);
      this.index.set(name, id);
      this.rules.push([]);
      this.defined.push(false);
    }
    return id;
  }

  private helper(base: string, alts: Elem[][]): number {
    const id = this.ruleId(`${base}-${this.names.length}`);
    this.rules[id] = alts;
    this.defined[id] = true;
    return id;
  }

  private skipSpace(): void {
    const s = this.src;
    while (this.pos < s.length) {
      const c = s[this.pos];
      if (c === " " || c === "\t" || c === "\n" || c === "\r") this.pos++;
      else if (c === "#") { while (this.pos < s.length && s[this.pos] !== "\n") this.pos++; }
      else break;
    }
  }

  private match(re: RegExp): string | null {
    re.lastIndex = this.pos;
    const m = re.exec(this.src);
    return m ? m[0] : null;
  }

  parse(): Grammar {
    this.skipSpace();
    while (this.pos < this.src.length) {
      const name = this.match(NAME);
      if (name === null) this.fail(`expected a rule name, got ${JSON.stringify(this.src[this.pos])}`);
      this.pos += name.length;
      this.skipSpace();
      if (!this.src.startsWith("::=", this.pos)) this.fail(`expected "::=" after rule name ${name}`);
      this.pos += 3;
      const id = this.ruleId(name);
      if (this.defined[id]) this.fail(`rule ${name} is defined twice`);
      this.defined[id] = true;
      this.rules[id] = this.alternatives(name);
      this.skipSpace();
      if (this.src[this.pos] === ")") this.fail("unbalanced \")\"");
    }
    const root = this.index.get("root");
    if (root === undefined || !this.defined[root]) throw new RwkvInputError(this.subject, "has no rule named root (the start rule)");
    const undefinedRule = this.names.find((_, i) => !this.defined[i]);
    if (undefinedRule !== undefined) throw new RwkvInputError(this.subject, `rule ${undefinedRule} is used but never defined`);
    return { names: this.names, rules: this.rules, root };
  }

  private alternatives(base: string): Elem[][] {
    const alts = [this.sequence(base)];
    while (this.src[this.pos] === "|") {
      this.pos++;
      alts.push(this.sequence(base));
    }
    return alts;
  }

  private sequence(base: string): Elem[] {
    const seq: Elem[] = [];
    for (;;) {
      this.skipSpace();
      const c = this.src[this.pos];
      if (c === undefined || c === "|" || c === ")" || this.match(RULE_START) !== null) return seq;
      let atom: Elem[];
      if (c === "\"") atom = this.literal();
      else if (c === "[") atom = [this.charClass()];
      else if (c === ".") { this.pos++; atom = [{ kind: "chars", ranges: [0, MAX_CODE_POINT], negated: false }]; }
      else if (c === "(") {
        this.pos++;
        const alts = this.alternatives(base);
        if (this.src[this.pos] !== ")") this.fail("expected \")\"");
        this.pos++;
        atom = [{ kind: "ref", rule: this.helper(base, alts) }];
      } else {
        const name = this.match(NAME);
        if (name === null) this.fail(`unexpected ${JSON.stringify(c)}`);
        this.pos += name.length;
        atom = [{ kind: "ref", rule: this.ruleId(name) }];
      }
      const bounds = this.repetition();
      if (!bounds) { seq.push(...atom); continue; }
      const x: Elem = atom.length === 1 ? atom[0] : { kind: "ref", rule: this.helper(base, [atom]) };
      seq.push(...this.repeat(base, x, bounds[0], bounds[1]));
    }
  }

  /** The postfix operator right after an atom as [min, max] (max null = unbounded), or null. */
  private repetition(): [number, number | null] | null {
    const c = this.src[this.pos];
    if (c === "*") { this.pos++; return [0, null]; }
    if (c === "+") { this.pos++; return [1, null]; }
    if (c === "?") { this.pos++; return [0, 1]; }
    if (c !== "{") return null;
    const m = /\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}/y;
    m.lastIndex = this.pos;
    const r = m.exec(this.src);
    if (!r) this.fail("expected {m}, {m,} or {m,n}");
    this.pos += r[0].length;
    const min = Number(r[1]);
    const max = r[2] === undefined ? min : r[3] === "" ? null : Number(r[3]);
    if (min > MAX_REPEAT || (max !== null && max > MAX_REPEAT)) this.fail(`repetition bounds above ${MAX_REPEAT} are not supported`);
    if (max !== null && max < min) this.fail(`repetition {${min},${max}} has max < min`);
    return [min, max];
  }

  private repeat(base: string, x: Elem, min: number, max: number | null): Elem[] {
    const out: Elem[] = new Array<Elem>(min).fill(x);
    if (max === null) {
      const r = this.helper(base, []);
      this.rules[r] = [[x, { kind: "ref", rule: r }], []];
      out.push({ kind: "ref", rule: r });
      return out;
    }
    let tail: Elem[] = [];
    for (let k = min; k < max; k++) tail = [{ kind: "ref", rule: this.helper(base, [[x, ...tail], []]) }];
    return [...out, ...tail];
  }

  private literal(): Elem[] {
    this.pos++; // opening quote
    const out: Elem[] = [];
    for (;;) {
      const c = this.src[this.pos];
      if (c === undefined || c === "\n") this.fail("unterminated string literal");
      if (c === "\"") { this.pos++; return out; }
      const cp = this.char();
      out.push({ kind: "chars", ranges: [cp, cp], negated: false });
    }
  }

  private charClass(): CharElem {
    this.pos++; // [
    const negated = this.src[this.pos] === "^";
    if (negated) this.pos++;
    const ranges: number[] = [];
    for (;;) {
      const c = this.src[this.pos];
      if (c === undefined || c === "\n") this.fail("unterminated character class");
      if (c === "]") { this.pos++; return { kind: "chars", ranges, negated }; }
      const lo = this.char();
      let hi = lo;
      if (this.src[this.pos] === "-" && this.src[this.pos + 1] !== "]" && this.pos + 1 < this.src.length) {
        this.pos++;
        hi = this.char();
        if (hi < lo) this.fail(`character range is reversed (U+${lo.toString(16)} > U+${hi.toString(16)})`);
      }
      ranges.push(lo, hi);
    }
  }

  /** One (possibly escaped) character as a code point. */
  private char(): number {
    const s = this.src;
    if (s[this.pos] !== "\\") {
      const cp = s.codePointAt(this.pos)!;
      this.pos += cp > 0xffff ? 2 : 1;
      return cp;
    }
    const e = s[this.pos + 1];
    this.pos += 2;
    const simple: Record<string, number> = { n: 10, r: 13, t: 9, "\\": 92, "\"": 34, "]": 93, "[": 91, "-": 45, "/": 47, "^": 94 };
    if (e !== undefined && e in simple) return simple[e];
    const digits = e === "x" ? 2 : e === "u" ? 4 : e === "U" ? 8 : 0;
    if (digits === 0) this.fail(`unknown escape \\${e ?? ""}`);
    const hex = s.slice(this.pos, this.pos + digits);
    if (!new RegExp(`^[0-9a-fA-F]{${digits}}$`).test(hex)) this.fail(`\\${e} needs ${digits} hex digits`);
    this.pos += digits;
    const cp = parseInt(hex, 16);
    if (cp > MAX_CODE_POINT) this.fail(`\\${e}${hex} is not a code point`);
    return cp;
  }
}

/**
 * Refuses grammars that cannot be used: a root that can never derive a complete string (every
 * alternative needs itself again), and left recursion (a rule that can reach itself before
 * consuming a character), which a top-down matcher would expand forever.
 */
export function checkGrammar(g: Grammar, subject = "grammar"): void {
  const n = g.rules.length;
  const productive = new Array<boolean>(n).fill(false);
  const nullable = new Array<boolean>(n).fill(false);
  for (let changed = true; changed;) {
    changed = false;
    for (let r = 0; r < n; r++) {
      if (!productive[r] && g.rules[r].some((alt) => alt.every((e) => e.kind === "chars" || productive[e.rule]))) { productive[r] = true; changed = true; }
      if (!nullable[r] && g.rules[r].some((alt) => alt.every((e) => e.kind === "ref" && nullable[e.rule]))) { nullable[r] = true; changed = true; }
    }
  }
  if (!productive[g.root]) throw new RwkvInputError(subject, "can never finish: rule root cannot derive any complete string (every alternative recurses without end)");
  // Left edges: r -> s when s can be the first thing r expands to.
  const left: number[][] = g.rules.map((alts) => {
    const out: number[] = [];
    for (const alt of alts) {
      for (const e of alt) {
        if (e.kind === "chars") break;
        out.push(e.rule);
        if (!nullable[e.rule]) break;
      }
    }
    return out;
  });
  const color = new Uint8Array(n); // 0 new, 1 on the path, 2 done
  const visit = (r: number): void => {
    color[r] = 1;
    for (const s of left[r]) {
      if (color[s] === 1) throw new RwkvInputError(subject, `rule ${g.names[s]} is left-recursive (it can reach itself before matching a character); rewrite it with repetition`);
      if (color[s] === 0) visit(s);
    }
    color[r] = 2;
  };
  for (let r = 0; r < n; r++) if (color[r] === 0) visit(r);
}
