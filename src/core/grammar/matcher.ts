import { RwkvInputError } from "../errors.js";
import type { Tokenizer } from "../tokenizer/types.js";
import { charsMatch, type CharElem, checkGrammar, type Elem, type Grammar } from "./gbnf.js";

/*
 * A grammar run as a pushdown automaton over code points (the approach of llama.cpp's grammar
 * sampler): the matcher's state is a set of stacks, each a chain of frames "in this alternative,
 * at this element, then return to the parent". Frames and states are interned, so a state is one
 * object with an id, its transitions per code point are memoized, and the token mask of a state is
 * computed once and cached.
 *
 * The mask walks a byte trie of the vocabulary (every token's bytes, from tokenizer.decodeBytes),
 * feeding the grammar one byte at a time through a UTF-8 decoder: a subtree is abandoned at the
 * first byte the grammar rejects, so the cost is the number of trie nodes still alive, not the
 * vocabulary size times the token length. A token may end inside a multi-byte character when the
 * pending bytes can still complete a character the grammar accepts; the pending bytes are part of
 * the matcher state.
 */

interface Alt { readonly id: number; readonly elems: readonly Elem[] }
interface Frame { readonly id: number; readonly alt: Alt; readonly pos: number; readonly parent: Frame | null }

/** A set of stacks, interned by its content. */
export interface GrammarState {
  readonly id: number;
  /** Frames whose next element is a character class. */
  readonly tops: readonly Frame[];
  /** Some stack is empty: the input so far is a complete sentence. */
  readonly accepting: boolean;
  readonly next: Map<number, GrammarState | null>;
}

/** A grammar ready to run: checked, with interned frames and states shared by every matcher of it. */
export class CompiledGrammar {
  private readonly alts: Alt[][];
  private readonly frames = new Map<string, Frame>();
  private readonly states = new Map<string, GrammarState>();
  readonly start: GrammarState;

  constructor(readonly grammar: Grammar, subject = "grammar") {
    checkGrammar(grammar, subject);
    let id = 0;
    this.alts = grammar.rules.map((alts) => alts.map((elems) => ({ id: id++, elems })));
    this.start = this.close(this.alts[grammar.root].map((alt) => (alt.elems.length === 0 ? null : this.frame(alt, 0, null))));
  }

  private frame(alt: Alt, pos: number, parent: Frame | null): Frame {
    const key = `${alt.id}:${pos}:${parent ? parent.id : -1}`;
    let f = this.frames.get(key);
    if (!f) { f = { id: this.frames.size, alt, pos, parent }; this.frames.set(key, f); }
    return f;
  }

  /** The frame after `f`'s element; at the end of the alternative, straight to the parent (a tail call keeps repetition stacks flat). */
  private after(f: Frame): Frame | null {
    return f.pos + 1 === f.alt.elems.length ? f.parent : this.frame(f.alt, f.pos + 1, f.parent);
  }

  /** Expands rule references until every stack has a character class on top (or is empty). */
  private close(seeds: ReadonlyArray<Frame | null>): GrammarState {
    const tops = new Map<number, Frame>();
    let accepting = false;
    const seen = new Set<number>();
    const work = [...seeds];
    while (work.length > 0) {
      const f = work.pop()!;
      if (f === null) { accepting = true; continue; }
      if (seen.has(f.id)) continue;
      seen.add(f.id);
      const e = f.alt.elems[f.pos];
      if (e.kind === "chars") { tops.set(f.id, f); continue; }
      const cont = this.after(f);
      for (const alt of this.alts[e.rule]) work.push(alt.elems.length === 0 ? cont : this.frame(alt, 0, cont));
    }
    const list = [...tops.values()].sort((a, b) => a.id - b.id);
    const key = list.map((f) => f.id).join(",") + (accepting ? "A" : "");
    let s = this.states.get(key);
    if (!s) { s = { id: this.states.size, tops: list, accepting, next: new Map() }; this.states.set(key, s); }
    return s;
  }

  /** The state after code point `cp`, or null when the grammar rejects it. */
  advance(s: GrammarState, cp: number): GrammarState | null {
    const cached = s.next.get(cp);
    if (cached !== undefined) return cached;
    const seeds: Array<Frame | null> = [];
    for (const f of s.tops) if (charsMatch(f.alt.elems[f.pos] as CharElem, cp)) seeds.push(this.after(f));
    const result = seeds.length === 0 ? null : this.close(seeds);
    s.next.set(cp, result);
    return result;
  }

  /** Whether some code point in [lo, hi] is accepted next (for a token ending inside a character). */
  acceptsSomeIn(s: GrammarState, lo: number, hi: number): boolean {
    for (const f of s.tops) {
      const e = f.alt.elems[f.pos] as CharElem;
      const r = e.ranges;
      if (e.negated) {
        let covered = false;
        for (let i = 0; i < r.length; i += 2) if (r[i] <= lo && r[i + 1] >= hi) covered = true;
        if (!covered) return true;
      } else {
        for (let i = 0; i < r.length; i += 2) if (r[i] <= hi && r[i + 1] >= lo) return true;
      }
    }
    return false;
  }
}

/** The vocabulary's token bytes as a trie (children per byte, tokens ending at each node). */
export class TokenTrie {
  readonly children: Array<Map<number, number>> = [new Map()];
  readonly ends: number[][] = [[]];

  constructor(tokenizer: Tokenizer, choosable: number) {
    for (let id = 0; id < choosable; id++) {
      let bytes: Uint8Array;
      try { bytes = tokenizer.decodeBytes([id]); } catch { continue; } // ids the tokenizer cannot map never match
      if (bytes.length === 0) continue; // end-of-text and special tokens: handled as stop tokens
      let node = 0;
      for (const b of bytes) {
        let next = this.children[node].get(b);
        if (next === undefined) { next = this.children.length; this.children.push(new Map()); this.ends.push([]); this.children[node].set(b, next); }
        node = next;
      }
      this.ends[node].push(id);
    }
  }
}

const trieCache = new WeakMap<Tokenizer, Map<number, TokenTrie>>();

/** One trie per tokenizer and vocabulary size (building it for 65536 tokens takes tens of ms). */
export function tokenTrie(tokenizer: Tokenizer, choosable: number): TokenTrie {
  let byN = trieCache.get(tokenizer);
  if (!byN) { byN = new Map(); trieCache.set(tokenizer, byN); }
  let t = byN.get(choosable);
  if (!t) { t = new TokenTrie(tokenizer, choosable); byN.set(choosable, t); }
  return t;
}

/** Where a matcher is: a grammar state plus the bytes of an unfinished UTF-8 character. */
interface Position {
  readonly state: GrammarState;
  /** The bits of an unfinished character so far, how many continuation bytes it still needs, and the smallest code point its length may encode. */
  readonly cp: number;
  readonly need: number;
  readonly min: number;
}

/** Masks beyond this many per grammar are dropped (oldest first): with 65,536 tokens a mask is 8 KiB, so 4 MiB per grammar. */
const MAX_CACHED_MASKS = 512;
const BITS = 32;

/** A compiled grammar bound to one vocabulary: token masks, cached per matcher position. */
export class TokenGrammar {
  private readonly masks = new Map<string, Uint32Array>();
  readonly trie: TokenTrie;

  constructor(readonly compiled: CompiledGrammar, readonly tokenizer: Tokenizer, readonly choosable: number) {
    this.trie = tokenTrie(tokenizer, choosable);
  }

  /** A fresh matcher at the start of the grammar. */
  matcher(): GrammarMatcher {
    return new GrammarMatcher(this, { state: this.compiled.start, cp: 0, need: 0, min: 0 });
  }

  /** @internal A bitset of the tokens the grammar allows at `p` (bit i of word i >>> 5). */
  mask(p: Position): Uint32Array {
    const key = `${p.state.id}:${p.cp}:${p.need}:${p.min}`;
    const hit = this.masks.get(key);
    if (hit) return hit;
    const mask = new Uint32Array(Math.ceil(this.choosable / BITS));
    this.walk(0, p, mask);
    if (this.masks.size >= MAX_CACHED_MASKS) this.masks.delete(this.masks.keys().next().value!);
    this.masks.set(key, mask);
    return mask;
  }

  private walk(node: number, p: Position, mask: Uint32Array): void {
    const g = this.compiled;
    for (const [b, child] of this.trie.children[node]) {
      const next = step(g, p, b);
      if (next === null) continue;
      if (next.need > 0 && !g.acceptsSomeIn(next.state, ...pendingRange(next))) continue;
      for (const id of this.trie.ends[child]) mask[id >>> 5] |= 1 << (id & 31);
      this.walk(child, next, mask);
    }
  }

  /** @internal The position after `bytes`, or null when the grammar rejects them. */
  feed(p: Position, bytes: Uint8Array): Position | null {
    let cur: Position | null = p;
    for (const b of bytes) {
      cur = step(this.compiled, cur, b);
      if (cur === null) return null;
    }
    return cur;
  }
}

const MAX_CODE_POINT = 0x10ffff;
const SURROGATES_LO = 0xd800;
const SURROGATES_HI = 0xdfff;

/** One byte through the UTF-8 decoder and, when it completes a character, the grammar. */
function step(g: CompiledGrammar, p: Position, b: number): Position | null {
  const state = p.state;
  if (p.need === 0) {
    if (b < 0x80) { const s = g.advance(state, b); return s ? { state: s, cp: 0, need: 0, min: 0 } : null; }
    if (b >= 0xc2 && b < 0xe0) return { state, cp: b & 0x1f, need: 1, min: 0x80 };
    if (b >= 0xe0 && b < 0xf0) return { state, cp: b & 0x0f, need: 2, min: 0x800 };
    if (b >= 0xf0 && b < 0xf5) return { state, cp: b & 0x07, need: 3, min: 0x10000 };
    return null; // a continuation byte or a byte that never appears in UTF-8
  }
  if ((b & 0xc0) !== 0x80) return null;
  const next: Position = { state, cp: (p.cp << 6) | (b & 0x3f), need: p.need - 1, min: p.min };
  // Refuse as early as possible what can only become an overlong form, a surrogate or a value above U+10FFFF.
  const [lo, hi] = pendingRange(next);
  if (hi < next.min || lo > MAX_CODE_POINT || (lo >= SURROGATES_LO && hi <= SURROGATES_HI)) return null;
  if (next.need > 0) return next;
  const s = g.advance(state, next.cp);
  return s ? { state: s, cp: 0, need: 0, min: 0 } : null;
}

/** The code points an unfinished character may still become (clipped to what its length may encode). */
function pendingRange(p: Position): [number, number] {
  const lo = p.cp * 2 ** (6 * p.need);
  return [Math.max(lo, p.min), Math.min(lo + 2 ** (6 * p.need) - 1, MAX_CODE_POINT)];
}

/**
 * One sequence's progress through a grammar. Decoding asks for the allowed tokens before sampling
 * and reports the sampled token after.
 */
export class GrammarMatcher {
  constructor(private readonly tg: TokenGrammar, private pos: Position) {}

  /** The tokens the grammar allows next, as a bitset: token i is allowed when bit (i & 31) of word i >>> 5 is set. */
  allowed(): Uint32Array { return this.tg.mask(this.pos); }
  /** Whether the grammar allows `token` next. */
  allows(token: number): boolean { return ((this.tg.mask(this.pos)[token >>> 5] >>> (token & 31)) & 1) === 1; }
  /** The text so far is a complete sentence of the grammar (a stop token may end it). */
  get accepting(): boolean { return this.pos.need === 0 && this.pos.state.accepting; }
  /** Complete, and nothing may follow: generation must end here. */
  get finished(): boolean { return this.accepting && this.pos.state.tops.length === 0; }

  /** Advances by a sampled token; throws when the grammar does not allow it (a bug in masking). */
  accept(token: number): void {
    const next = this.tg.feed(this.pos, this.tg.tokenizer.decodeBytes([token]));
    if (next === null) throw new RwkvInputError("grammar", `token ${token} does not continue the grammar`);
    this.pos = next;
  }

  clone(): GrammarMatcher { return new GrammarMatcher(this.tg, this.pos); }
}
