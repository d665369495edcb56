import type { State } from "./model/state.js";

/**
 * A second cache level shared between processes (e.g. Redis, src/node/state-store/). It may be
 * slow or down: fetch resolves null rather than rejecting, put never throws and never waits.
 */
export interface PrefixStore {
  /**
   * The longest stored prefix of `tokens` longer than `minLength` tokens, or null (none, or the
   * store failed or was too slow: the caller then recomputes).
   */
  fetch(tokens: readonly number[], minLength: number): Promise<{ length: number; state: State; logits: Float32Array } | null>;
  /** Saves the state after `tokens`; must copy what it keeps before returning (the caller goes on advancing `state`). */
  put(tokens: readonly number[], state: State, logits: Float32Array): void;
  /** Counters for /metrics (names without prefix, `_total` for counters). */
  metrics(): Record<string, number>;
}

/**
 * Remembers the state (and next-token logits) after token prefixes that were already processed,
 * so a prompt that extends one of them — the next turn of a conversation — resumes there instead
 * of re-reading its history. One cache serves one model from its initial state. Bounded by a
 * byte budget; the least recently used entries are evicted first. With a second level (a
 * PrefixStore) every stored entry is also written there, and prefetch() copies a longer prefix
 * from it into this cache before a request is admitted, so replicas continue each other's work.
 */
export interface CachedPrefix {
  /** How many leading tokens of the looked-up sequence this entry covers. */
  readonly length: number;
  /** A private copy: the caller may advance it. */
  readonly state: State;
  readonly logits: Float32Array;
}

interface Entry { tokens: readonly number[]; state: State; logits: Float32Array; bytes: number }

export class PrefixCache {
  // A Map iterates in insertion order; re-inserting on use keeps the LRU entry first.
  private readonly entries = new Map<string, Entry>();
  private used = 0;
  hits = 0;
  misses = 0;

  constructor(readonly budgetBytes: number, readonly secondLevel: PrefixStore | null = null) {
    if (!(budgetBytes >= 0)) throw new RangeError(`prefix cache budget must be >= 0 bytes, got ${budgetBytes}`);
  }

  /**
   * Asks the second level for a prefix of `tokens` longer than the longest one held here and, if
   * it has one, keeps it here (not written back), so the next lookup() finds it. Never rejects.
   */
  async prefetch(tokens: readonly number[]): Promise<void> {
    if (!this.secondLevel || tokens.length === 0) return;
    const have = this.longest(tokens)?.tokens.length ?? 0;
    if (have === tokens.length) return;
    const got = await this.secondLevel.fetch(tokens, have);
    if (got && got.length > have && got.length <= tokens.length) this.insert(tokens.slice(0, got.length), got.state, got.logits);
  }

  get size(): number { return this.entries.size; }
  get bytes(): number { return this.used; }

  /** The longest cached prefix of `tokens` (possibly all of them), or null. */
  lookup(tokens: readonly number[]): CachedPrefix | null {
    const best = this.longest(tokens);
    if (!best) { this.misses++; return null; }
    this.hits++;
    const key = keyOf(best.tokens);
    this.entries.delete(key);
    this.entries.set(key, best);
    return { length: best.tokens.length, state: best.state.clone(), logits: best.logits.slice() };
  }

  /** Stores copies of `state` and `logits` as the result of processing `tokens` from the initial state. */
  store(tokens: readonly number[], state: State, logits: Float32Array): void {
    if (tokens.length === 0) return;
    this.secondLevel?.put(tokens, state, logits);
    this.insert(tokens, state, logits);
  }

  private longest(tokens: readonly number[]): Entry | null {
    let best: Entry | null = null;
    for (const e of this.entries.values()) {
      if (e.tokens.length <= tokens.length && (!best || e.tokens.length > best.tokens.length) && isPrefix(e.tokens, tokens)) best = e;
    }
    return best;
  }

  private insert(tokens: readonly number[], state: State, logits: Float32Array): void {
    const key = keyOf(tokens);
    const old = this.entries.get(key);
    if (old) { this.entries.delete(key); this.used -= old.bytes; }
    const bytes = 4 * (state.size + logits.length) + 8 * tokens.length;
    if (bytes > this.budgetBytes) return;
    this.entries.set(key, { tokens: tokens.slice(), state: state.clone(), logits: logits.slice(), bytes });
    this.used += bytes;
    for (const [k, e] of this.entries) {
      if (this.used <= this.budgetBytes) break;
      this.entries.delete(k);
      this.used -= e.bytes;
    }
  }

  clear(): void {
    this.entries.clear();
    this.used = 0;
  }
}

function isPrefix(p: readonly number[], of: readonly number[]): boolean {
  for (let i = 0; i < p.length; i++) if (p[i] !== of[i]) return false;
  return true;
}

const keyOf = (tokens: readonly number[]) => tokens.join(",");
