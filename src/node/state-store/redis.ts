import { Redis } from "ioredis";
import type { Model } from "../../core/model/model.js";
import type { State } from "../../core/model/state.js";
import type { PrefixStore } from "../../core/prefix-cache.js";
import { checkStateBelongs, decodeStateFile, encodeStateFile, modelIdentity } from "../../core/state-file.js";
import { lengthsKey, prefixDigests, stateKey, storeNamespace } from "./keys.js";

/*
 * The prefix cache's second level in Redis, shared by every replica of a model: `rwkv serve
 * --state-store redis://HOST:PORT[/DB]`. Values are rwkv-ts state files (state + next-token
 * logits, with the model identity checked on read); keys are in keys.ts.
 *
 * Eviction, all in Redis: every key is written with a TTL (`ttlSeconds`, renewed when a state is
 * read), so a conversation idle for longer is forgotten; the size bound is Redis's own
 * `maxmemory` with an LRU policy (`allkeys-lru`, or `volatile-lru` since every key has a TTL),
 * so a full Redis drops the least recently used states. Under `noeviction` a full Redis refuses
 * writes: they are counted as errors and the local cache goes on working.
 *
 * Failure policy: the store never fails a request. A command that errors or takes longer than
 * `timeoutMs` makes the lookup a miss (the prompt is recomputed) or drops the write; it is
 * counted (errors_total), logged once per outage, and the store is skipped for
 * `retryAfterMs` (skipped_total) so a hung Redis does not add `timeoutMs` to every request.
 * The client reconnects in the background; the first command that succeeds ends the outage.
 */

export interface RedisStateStoreOptions {
  /** redis://[:password@]HOST:PORT[/DB] (parsed by parseStateStoreUrl). */
  readonly url: string;
  readonly model: Model;
  /** storeModelId(model, load options): the weights + backend + loading the states are valid for. */
  readonly modelId: string;
  /** The adapter applied on top of the model, if any (a separate key namespace). */
  readonly adapterId?: string | null;
  readonly ttlSeconds: number;
  readonly timeoutMs: number;
  readonly retryAfterMs?: number;
  /** Candidate prefix lengths checked per lookup (the longest ones below the prompt's length). */
  readonly maxCandidates?: number;
  /** Where the once-per-outage lines go. */
  readonly log: (line: string) => void;
}

export const STATE_STORE_DEFAULTS = { ttlSeconds: 3600, timeoutMs: 200, retryAfterMs: 1000, maxCandidates: 1024 } as const;
/** Reconnect delays grow by this per attempt up to the cap. */
const RECONNECT_STEP_MS = 100;
const RECONNECT_MAX_MS = 2000;
const MAX_DB = 1 << 16;

/** Checks a --state-store URL; returns it normalised, or throws a one-line message naming the problem. */
export function parseStateStoreUrl(text: string): string {
  let u: URL;
  try { u = new URL(text); } catch { throw new RangeError(`"${text}" is not a URL; expected redis://HOST:PORT[/DB]`); }
  if (u.protocol !== "redis:" && u.protocol !== "rediss:") throw new RangeError(`"${text}": only redis:// (or rediss://) URLs are supported`);
  if (u.hostname === "") throw new RangeError(`"${text}" has no host; expected redis://HOST:PORT[/DB]`);
  const db = u.pathname.replace(/^\//, "");
  if (db !== "" && !(/^\d+$/.test(db) && Number(db) < MAX_DB)) throw new RangeError(`"${text}": the database must be a number (redis://HOST:PORT/DB), got "${db}"`);
  if (u.search !== "" || u.hash !== "") throw new RangeError(`"${text}": query strings and fragments are not supported`);
  return u.toString();
}

/** The URL without its password, for logs. */
function redacted(url: string): string {
  const u = new URL(url);
  if (u.password) u.password = "***";
  return u.toString();
}

export class RedisStateStore implements PrefixStore {
  private readonly redis: Redis;
  private readonly namespace: string;
  private readonly where: string;
  private readonly counters = { hits: 0, misses: 0, writes: 0, bytesWritten: 0, bytesRead: 0, errors: 0, skipped: 0 };
  /** Skip the store until this time (performance.now()) after a failure. */
  private downUntil = 0;
  private outage = false;
  private closed = false;

  constructor(private readonly options: RedisStateStoreOptions) {
    this.namespace = storeNamespace(options.modelId, options.adapterId);
    this.where = redacted(options.url);
    this.redis = new Redis(options.url, {
      lazyConnect: true,
      // While disconnected, commands fail at once instead of queueing behind a dead connection.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.timeoutMs,
      connectTimeout: Math.max(options.timeoutMs, RECONNECT_MAX_MS),
      retryStrategy: (attempt) => (this.closed ? null : Math.min(attempt * RECONNECT_STEP_MS, RECONNECT_MAX_MS)),
    });
    // A lost connection is an outage even before a command notices (commands are skipped meanwhile).
    this.redis.on("error", (e: Error) => this.failed(e));
    // Each failed reconnect also closes: counted once, through its "error".
    this.redis.on("close", () => this.failed(new Error("the connection closed"), false));
    this.redis.on("ready", () => this.succeeded());
  }

  /** Connects; a Redis that is not there yet is an outage like any other (logged, retried), not an error. */
  async connect(): Promise<boolean> {
    try {
      await this.redis.connect();
      await this.redis.ping();
      return true;
    } catch (e) {
      this.failed(e);
      return false;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    try { await this.redis.quit(); } catch { this.redis.disconnect(); }
  }

  metrics(): Record<string, number> {
    const c = this.counters;
    return {
      state_store_up: this.usable() ? 1 : 0,
      state_store_hits_total: c.hits, state_store_misses_total: c.misses, state_store_writes_total: c.writes,
      state_store_bytes_written_total: c.bytesWritten, state_store_bytes_read_total: c.bytesRead,
      // errors: failed or timed-out commands and failed connection attempts; skipped: operations not tried during an outage.
      state_store_errors_total: c.errors, state_store_skipped_total: c.skipped,
    };
  }

  async fetch(tokens: readonly number[], minLength: number): Promise<{ length: number; state: State; logits: Float32Array } | null> {
    if (!this.usable()) { this.counters.skipped++; return null; }
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<"timeout">((resolve) => { timer = setTimeout(() => resolve("timeout"), this.options.timeoutMs); });
    try {
      const got = await Promise.race([this.find(tokens, minLength), deadline]);
      if (got === "timeout") throw new Error(`no answer within ${this.options.timeoutMs} ms`);
      this.succeeded();
      if (got) this.counters.hits++; else this.counters.misses++;
      return got;
    } catch (e) {
      this.failed(e);
      return null;
    } finally {
      clearTimeout(timer);
    }
  }

  put(tokens: readonly number[], state: State, logits: Float32Array): void {
    if (tokens.length === 0) return;
    if (!this.usable()) { this.counters.skipped++; return; }
    const o = this.options;
    // Encoded now: the caller goes on advancing `state` after this returns. A GPU backend's state
    // is copied on the GPU now and encoded once read back.
    if (state.stale) {
      const copy = state.clone();
      const ids = [...tokens], values = logits.slice();
      void copy.sync().then(() => this.put(ids, copy, values), (e: unknown) => this.failed(e));
      return;
    }
    const bytes = encodeStateFile({ model: modelIdentity(o.model), state, logits, tokens: tokens.length, extra: null });
    const value = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const digest = prefixDigests(tokens, [tokens.length]).get(tokens.length)!;
    const lens = lengthsKey(this.namespace);
    this.redis.pipeline()
      .set(stateKey(this.namespace, digest), value, "EX", o.ttlSeconds)
      .zadd(lens, tokens.length, String(tokens.length))
      .expire(lens, o.ttlSeconds)
      .exec()
      .then((results) => {
        const err = results?.find(([e]) => e)?.[0];
        if (err) throw err;
        this.succeeded();
        this.counters.writes++;
        this.counters.bytesWritten += value.length;
      })
      .catch((e: unknown) => this.failed(e));
  }

  /** The longest stored prefix of `tokens` longer than minLength: candidate lengths, which exist, then the longest that decodes. */
  private async find(tokens: readonly number[], minLength: number): Promise<{ length: number; state: State; logits: Float32Array } | null> {
    const o = this.options;
    const limit = o.maxCandidates ?? STATE_STORE_DEFAULTS.maxCandidates;
    const found = await this.redis.zrevrangebyscore(lengthsKey(this.namespace), tokens.length, `(${minLength}`, "LIMIT", 0, limit);
    const lengths = found.map(Number).filter((n) => Number.isSafeInteger(n) && n > minLength && n <= tokens.length);
    if (lengths.length === 0) return null;
    const digests = prefixDigests(tokens, lengths);
    const keys = lengths.map((n) => stateKey(this.namespace, digests.get(n)!));
    const check = this.redis.pipeline();
    for (const k of keys) check.exists(k);
    const exists = (await check.exec()) ?? [];
    for (let i = 0; i < keys.length; i++) {
      const [err, n] = exists[i] ?? [null, 0];
      if (err) throw err;
      if (n !== 1) continue;
      const [[getErr, value]] = (await this.redis.pipeline().getBuffer(keys[i]).expire(keys[i], o.ttlSeconds).exec()) ?? [[null, null]];
      if (getErr) throw getErr;
      if (!(value instanceof Buffer)) continue; // evicted since the check
      this.counters.bytesRead += value.length;
      try {
        const file = decodeStateFile(new Uint8Array(value.buffer, value.byteOffset, value.byteLength), `${this.where} ${keys[i]}`);
        checkStateBelongs(file, o.model, keys[i]);
        if (file.tokens !== lengths[i] || !file.logits) throw new Error(`holds ${file.tokens} tokens${file.logits ? "" : " without logits"}, expected ${lengths[i]}`);
        return { length: lengths[i], state: file.state, logits: file.logits };
      } catch {
        // A value that is not a state of this model (another writer, a format change): not an outage.
        this.counters.errors++;
        this.redis.del(keys[i]).catch(() => {});
      }
    }
    return null;
  }

  private usable(): boolean {
    return !this.closed && performance.now() >= this.downUntil && this.redis.status === "ready";
  }

  private succeeded(): void {
    if (!this.outage) return;
    this.outage = false;
    this.options.log(`state store ${this.where}: reachable again`);
  }

  private failed(e: unknown, count = true): void {
    if (this.closed) return;
    if (count) this.counters.errors++;
    this.downUntil = performance.now() + (this.options.retryAfterMs ?? STATE_STORE_DEFAULTS.retryAfterMs);
    if (this.outage) return;
    this.outage = true;
    const why = e instanceof Error ? e.message : String(e);
    this.options.log(`state store ${this.where}: ${why}; serving from the local prefix cache and recomputing until it answers again ` +
      "(counted in /metrics as rwkv_state_store_errors_total / _skipped_total; logged once per outage)");
  }
}
