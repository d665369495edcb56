import { setImmediate as nextTurn } from "node:timers/promises";
import type { DecodeStep, Decoding, FinishReason } from "../../core/decoding.js";
import type { Model } from "../../core/model/model.js";
import type { State } from "../../core/model/state.js";
import { DEFAULT_CHUNK_LEN } from "../../core/generate.js";
import { PrefixCache, type PrefixStore } from "../../core/prefix-cache.js";
import { ApiError, HTTP } from "./errors.js";

/*
 * Continuous batching for one model. Up to `slots` requests are active at once; more wait in a
 * bounded FIFO queue (full → 429). One loop runs while there is work; each turn of it
 *
 *   1. admits queued requests into free slots: the longest cached prefix of the prompt comes from
 *      the prefix cache, only the rest needs prefilling;
 *   2. prefills: the oldest prefilling requests get up to `prefillChunk` prompt tokens this turn
 *      (model.forward, the parallel form), or DEFAULT_CHUNK_LEN when nobody is decoding. Capping the
 *      chunk while others decode keeps a long prompt from freezing their token streams (chunked
 *      prefill); serving the oldest first finishes one prompt at a time, the best mean TTFT;
 *   3. feeds the token each decoding request sampled last turn: ONE model.stepBatch over all of
 *      them, a matrix-matrix product per projection instead of B matrix-vector products;
 *   4. samples the next token of every request whose logits are ready (each with its own Decoding:
 *      its own RNG, penalties and stop strings), hands out its text, retires finished requests;
 *   5. yields to the event loop (setImmediate), so sockets flush, new requests arrive and closed
 *      connections cancel before the next turn.
 * The model calls of steps 2 and 3 are awaited (Model is asynchronous). cancel() (a socket's close
 * handler) may run while one is in flight: it drops the request from its slot at once, and the turn
 * ignores what the call returns for a request that is done by then. The work a finished request
 * leaves for the prefix cache (remember) runs at the end of the turn, before the next admits.
 *
 * Adapters kept unmerged (Model.loadAdapter): a request's `adapter` goes on its State, so requests
 * of different adapters and of the base share the slots and one stepBatch; each adapter has its
 * own prefix cache (a state computed under one adapter is never resumed under another).
 *
 * Determinism: a request's tokens depend only on its prompt, its options and its seed. Its Decoding
 * sees only its own logits row, and every kernel computes each row with the same operations in the
 * same order whatever else is in the batch (the reference matmul is one dot product per output;
 * the WKV scans run per sequence), so stepBatch rows are bit-identical to step(), and chunked
 * prefill or a cached prefix gives bit-identical states to one forward() (tests check it).
 */

export interface SchedulerOptions {
  /** Requests decoded together. */
  readonly slots: number;
  /** Requests waiting for a slot; more are refused with 429. */
  readonly queue: number;
  /** Prefix cache budget in bytes (0 = no cache). */
  readonly cacheBytes: number;
  /** Prompt tokens prefilled per loop turn while other requests decode. */
  readonly prefillChunk: number;
  /** The prefix cache's second level shared with other replicas (e.g. Redis); needs cacheBytes > 0. */
  readonly stateStore?: PrefixStore | null;
  /** Adapters loaded unmerged into the model that requests may name (JobSpec.adapter); each gets a cacheBytes cache of its own. */
  readonly adapters?: readonly string[];
}

export interface JobSpec {
  readonly prompt: readonly number[];
  /** The adapter (loaded unmerged, SchedulerOptions.adapters) this request runs with; absent: the base. */
  readonly adapter?: string;
  readonly decoding: Decoding;
  /** Receives each piece of text as soon as it is safe to show (called synchronously inside a turn). */
  readonly onText?: (text: string) => void;
  /** Receives every sampled token's step (its logprobs), before its text goes to onText. */
  readonly onToken?: (step: DecodeStep) => void;
  /**
   * The token sequence the NEXT request of this conversation will start with, given this one's
   * output (prompt + reply + separator for chat); the state after it is cached. Null: cache the
   * state after what was fed.
   */
  readonly continuation?: (output: string, finish: FinishReason) => readonly number[] | null;
  /**
   * Also cache the state right after the prompt (helps a repeated prompt). Chat turns skip it: the
   * state after the reply covers the next turn, and a second entry per turn would halve how many
   * conversations fit in the cache (a 1.5B model's state is ~12 MB).
   */
  readonly cachePrompt?: boolean;
}

export type CancelReason = "client" | "shutdown";

export interface JobResult {
  readonly text: string;
  readonly finishReason: FinishReason;
  /** Why it was cancelled (finishReason "cancelled"). */
  readonly cancelReason: CancelReason | null;
  readonly promptTokens: number;
  /** Prompt tokens taken from the prefix cache instead of being processed. */
  readonly cachedTokens: number;
  readonly completionTokens: number;
  /** Milliseconds from submission to a slot, and to the first text (-1: none). */
  readonly waitMs: number;
  readonly firstTextMs: number;
}

/** Generated tokens the continuation may add past what was fed (normally the "\n\n" separator): bounds the extra work at the end. */
const MAX_CONTINUATION_EXTRA_TOKENS = 32;

/** "forked": admitted with a group's first request, waiting for its prompt state (see submitForked). */
type Phase = "queued" | "forked" | "prefill" | "decode" | "done";

export class Job {
  phase: Phase = "queued";
  state: State | null = null;
  /** Prompt tokens still to prefill start at prefillPos. */
  prefillPos = 0;
  cachedTokens = 0;
  /** Next-token logits waiting to be sampled (null while a token waits to be fed). */
  logits: Float32Array | null = null;
  /** Logits belonging to `state` (kept for the prefix cache after the last, unfed, sample). */
  stateLogits: Float32Array | null = null;
  /** The state and logits right after the prompt, kept for the cache when the reply cannot extend it (see remember). */
  afterPrompt: { state: State; logits: Float32Array } | null = null;
  /** A sampled token waiting to be fed by the next stepBatch. */
  pending: number | null = null;
  /** Every token behind `state`: prompt, then the fed part of the reply. */
  readonly fed: number[];
  cancelReason: CancelReason | null = null;
  /** Requests with the same prompt that start from a copy of this one's state after the prompt. */
  readonly followers: Job[] = [];
  /** performance.now() when queued, given a slot, and when its first text went out (for logs). */
  readonly submittedAt = performance.now();
  admittedAt = 0;
  firstTextAt = 0;
  readonly done: Promise<JobResult>;
  private resolveDone!: (r: JobResult) => void;
  private rejectDone!: (e: unknown) => void;

  constructor(readonly spec: JobSpec, private readonly scheduler: Scheduler) {
    this.fed = [...spec.prompt];
    this.done = new Promise<JobResult>((resolve, reject) => { this.resolveDone = resolve; this.rejectDone = reject; });
  }

  /** Ends the request now (client gone, shutdown); its slot or queue place is free when this returns. */
  cancel(reason: CancelReason): void {
    this.scheduler.cancel(this, reason);
  }

  /** @internal */
  settle(result: JobResult | null, error?: unknown): void {
    if (this.phase === "done") return;
    this.phase = "done";
    if (result) this.resolveDone(result);
    else this.rejectDone(error);
  }
}

/** Counters exposed at /metrics. */
export interface SchedulerMetrics {
  requestsStarted: number;
  requestsFinished: number;
  requestsCancelled: number;
  requestsFailed: number;
  requestsRejected: number;
  promptTokens: number;
  promptTokensCached: number;
  promptTokensProcessed: number;
  completionTokens: number;
  decodeSteps: number;
  decodeTokens: number;
  prefillChunks: number;
  /** The most requests fed by one stepBatch so far. */
  largestBatch: number;
  /** Chat turns whose state after prompt + reply was cached for the next turn... */
  continuationsCached: number;
  /** ...and those whose reply did not re-tokenize as generated (the state after the prompt was cached). */
  continuationsMissed: number;
}

export class Scheduler {
  /** The base model's prefix cache. */
  readonly cache: PrefixCache | null;
  /** Each unmerged adapter's (local only: the shared store holds base states). */
  private readonly adapterCaches = new Map<string, PrefixCache | null>();
  readonly metrics: SchedulerMetrics = {
    requestsStarted: 0, requestsFinished: 0, requestsCancelled: 0, requestsFailed: 0, requestsRejected: 0,
    promptTokens: 0, promptTokensCached: 0, promptTokensProcessed: 0, completionTokens: 0,
    decodeSteps: 0, decodeTokens: 0, prefillChunks: 0, largestBatch: 0, continuationsCached: 0, continuationsMissed: 0,
  };
  private readonly active: Job[] = [];
  private readonly waiting: Job[] = [];
  private running = false;
  private accepting = true;
  private idleWaiters: Array<() => void> = [];
  /** Requests finished this turn whose state the turn still offers the prefix cache (remember). */
  private readonly finished: Array<[Job, FinishReason]> = [];

  constructor(private readonly model: Model, readonly options: SchedulerOptions) {
    for (const [k, v] of [["slots", options.slots], ["prefillChunk", options.prefillChunk]] as const) {
      if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${k} must be a positive integer, got ${v}`);
    }
    if (!Number.isSafeInteger(options.queue) || options.queue < 0) throw new RangeError(`queue must be an integer >= 0, got ${options.queue}`);
    this.cache = options.cacheBytes > 0 ? new PrefixCache(options.cacheBytes, options.stateStore ?? null) : null;
    for (const a of options.adapters ?? []) this.adapterCaches.set(a, options.cacheBytes > 0 ? new PrefixCache(options.cacheBytes, null) : null);
  }

  /** The prefix cache of the job's adapter (the base's without one). */
  private cacheOf(job: Job): PrefixCache | null {
    return job.spec.adapter === undefined ? this.cache : this.adapterCaches.get(job.spec.adapter) ?? null;
  }

  get activeCount(): number { return this.active.length; }
  get queuedCount(): number { return this.waiting.length; }
  get idle(): boolean { return this.active.length === 0 && this.waiting.length === 0; }

  /** Queues a request; throws ApiError 429 when the queue is full, 503 while shutting down. */
  submit(spec: JobSpec): Job {
    if (!this.accepting) {
      this.metrics.requestsRejected++;
      throw new ApiError(HTTP.unavailable, "the server is shutting down", "server_error", null, "shutting_down");
    }
    if (spec.adapter !== undefined && !this.adapterCaches.has(spec.adapter)) throw new RangeError(`adapter "${spec.adapter}" is not served by this scheduler`);
    if (spec.prompt.length === 0) throw new ApiError(HTTP.badRequest, "the prompt is empty", "invalid_request_error", "prompt", "invalid_value");
    if (this.active.length >= this.options.slots && this.waiting.length >= this.options.queue) {
      this.metrics.requestsRejected++;
      throw new ApiError(HTTP.tooManyRequests, `all ${this.options.slots} slots are busy and ${this.waiting.length} requests are waiting; retry later`,
        "rate_limit_error", null, "queue_full", { "Retry-After": "1" });
    }
    const job = new Job(spec, this);
    this.waiting.push(job);
    this.metrics.requestsStarted++;
    this.wake();
    return job;
  }

  /**
   * Queues requests that share one prompt (n > 1): the prompt is prefilled once, by the first;
   * the others start decoding from a copy of its state and logits, and all are decoded together
   * in the batch. Admitted together, so at most `slots` of them.
   */
  submitForked(specs: readonly JobSpec[]): Job[] {
    if (specs.length > this.options.slots) {
      throw new ApiError(HTTP.badRequest, `n must be at most ${this.options.slots} (the server's slots)`, "invalid_request_error", "n", "invalid_value");
    }
    const leader = this.submit(specs[0]);
    for (const spec of specs.slice(1)) {
      if (spec.prompt.length !== specs[0].prompt.length || spec.prompt.some((t, i) => t !== specs[0].prompt[i])) throw new RangeError("forked requests must share their prompt");
      leader.followers.push(new Job(spec, this));
      this.metrics.requestsStarted++;
    }
    return [leader, ...leader.followers];
  }

  /** Drops a request from its slot or the queue at once and settles it as cancelled. */
  cancel(job: Job, reason: CancelReason): void {
    if (job.phase === "done") return;
    job.cancelReason = reason;
    job.spec.decoding.cancel();
    this.remove(job);
    this.metrics.requestsCancelled++;
    job.settle(this.result(job, "cancelled"));
    // Followers still waiting for this prompt would never get it.
    for (const f of job.followers) if (f.phase === "queued" || f.phase === "forked") this.cancel(f, reason);
    this.wake(); // a freed slot can admit a queued request
    this.checkIdle();
  }

  /** Refuses new requests from now on (503). */
  stopAccepting(): void {
    this.accepting = false;
  }

  /** Resolves true once nothing is active or queued, false if `timeoutMs` passed first. */
  async whenIdle(timeoutMs: number): Promise<boolean> {
    if (this.idle) return true;
    return new Promise<boolean>((resolve) => {
      const done = (ok: boolean) => { clearTimeout(timer); this.idleWaiters = this.idleWaiters.filter((w) => w !== waiter); resolve(ok); };
      const waiter = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.idleWaiters.push(waiter);
    });
  }

  cancelAll(reason: CancelReason): void {
    for (const job of [...this.waiting, ...this.active]) this.cancel(job, reason);
  }

  private remove(job: Job): void {
    const a = this.active.indexOf(job);
    if (a >= 0) this.active.splice(a, 1);
    const w = this.waiting.indexOf(job);
    if (w >= 0) this.waiting.splice(w, 1);
  }

  private checkIdle(): void {
    if (!this.idle) return;
    for (const w of [...this.idleWaiters]) w();
  }

  private wake(): void {
    if (this.running || this.idle) return;
    this.running = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      // Never turn inside submit(): its caller must get the Job (and send headers) before any text.
      await nextTurn();
      while (!this.idle) {
        try {
          await this.turn();
        } catch (e) {
          // Model work is guarded per request; anything else is a bug. Fail what is active rather
          // than leave its clients hanging, and keep serving the queue.
          for (const job of [...this.active]) { this.remove(job); this.metrics.requestsFailed++; job.settle(null, e); }
        }
        await nextTurn();
      }
    } finally {
      this.running = false;
      this.checkIdle();
    }
  }

  /** One turn: admit, prefill, one batched step, sample, then what finished requests leave for the cache. */
  private async turn(): Promise<void> {
    this.admit();
    await this.prefill();
    await this.step();
    this.sample();
    for (const [job, reason] of this.finished.splice(0)) await this.guardModel([], () => this.remember(job, reason));
  }

  private admit(): void {
    while (this.waiting.length > 0 && this.active.length + 1 + this.waiting[0].followers.length <= this.options.slots) {
      const job = this.waiting.shift()!;
      const prompt = job.spec.prompt;
      const hit = this.guard([job], () => this.cacheOf(job)?.lookup(prompt) ?? null);
      if (job.phase === "done") continue; // the lookup failed: the request got its error
      job.state = hit ? hit.state : this.model.initState(job.spec.adapter);
      job.state.adapter = job.spec.adapter;
      job.cachedTokens = hit ? hit.length : 0;
      job.admittedAt = performance.now();
      job.prefillPos = job.cachedTokens;
      this.metrics.promptTokens += prompt.length;
      this.metrics.promptTokensCached += job.cachedTokens;
      this.active.push(job);
      for (const f of job.followers) {
        f.phase = "forked";
        f.admittedAt = job.admittedAt;
        this.active.push(f);
      }
      if (hit && hit.length === prompt.length) {
        this.promptDone(job, hit.logits);
      } else {
        job.phase = "prefill";
      }
    }
  }

  private async prefill(): Promise<void> {
    const someoneDecodes = this.active.some((j) => j.phase === "decode");
    let budget = someoneDecodes ? this.options.prefillChunk : Math.max(this.options.prefillChunk, DEFAULT_CHUNK_LEN);
    for (const job of [...this.active]) {
      if (budget <= 0) break;
      if (job.phase !== "prefill") continue;
      const prompt = job.spec.prompt;
      const n = Math.min(budget, prompt.length - job.prefillPos);
      const logits = await this.guardModel([job], () => this.model.forward(prompt.slice(job.prefillPos, job.prefillPos + n), job.state!));
      if (!logits || job.phase !== "prefill") continue; // failed, or cancelled while the forward ran
      job.prefillPos += n;
      budget -= n;
      this.metrics.promptTokensProcessed += n;
      this.metrics.prefillChunks++;
      if (job.prefillPos === prompt.length) this.promptDone(job, logits);
    }
  }

  /** The prompt is behind the job's state: start decoding. */
  private promptDone(job: Job, logits: Float32Array): void {
    job.phase = "decode";
    job.logits = logits;
    for (const f of job.followers) {
      if (f.phase !== "forked") continue;
      f.phase = "decode";
      f.state = job.state!.clone();
      f.logits = logits;
      f.cachedTokens = job.cachedTokens;
      f.prefillPos = job.prefillPos;
    }
    // A retried request, or one sharing this exact prompt, starts here.
    if (job.spec.cachePrompt) this.cacheOf(job)?.store(job.spec.prompt, job.state!, logits);
    else if (this.cacheOf(job) && job.spec.continuation) job.afterPrompt = { state: job.state!.clone(), logits };
  }

  private async step(): Promise<void> {
    const jobs = this.active.filter((j) => j.pending !== null);
    if (jobs.length === 0) return;
    const out = await this.guardModel(jobs, () => this.model.stepBatch(jobs.map((j) => j.pending!), jobs.map((j) => j.state!)));
    if (!out) return;
    const V = out.length / jobs.length;
    jobs.forEach((job, b) => {
      if (job.phase === "done") return; // cancelled while the step ran
      job.fed.push(job.pending!);
      job.pending = null;
      job.logits = out.slice(b * V, (b + 1) * V);
    });
    this.metrics.decodeSteps++;
    this.metrics.decodeTokens += jobs.length;
    this.metrics.largestBatch = Math.max(this.metrics.largestBatch, jobs.length);
  }

  private sample(): void {
    for (const job of [...this.active]) {
      const logits = job.logits;
      if (logits === null || job.phase !== "decode") continue;
      // Sampling and handing out text belong to this request alone: a failure fails only it.
      const step = this.guard([job], () => {
        const s = job.spec.decoding.next(logits);
        if (s.token !== null) job.spec.onToken?.(s);
        if (s.text) {
          if (job.firstTextAt === 0) job.firstTextAt = performance.now();
          job.spec.onText?.(s.text);
        }
        return s;
      });
      if (!step) continue;
      job.logits = null;
      job.stateLogits = logits;
      if (step.token !== null) this.metrics.completionTokens++;
      if (step.feed) job.pending = step.token;
      else this.finish(job, step.finish ?? "stop");
    }
  }

  private finish(job: Job, reason: FinishReason): void {
    this.remove(job);
    this.metrics.requestsFinished++;
    job.settle(this.result(job, reason));
    // The loop reports idle only after the turn has run it (so a waiter sees the cache updated).
    this.finished.push([job, reason]);
  }

  /**
   * Caches the state after this conversation turn. When the client's next prompt will begin with
   * `continuation` (prompt + reply + "\n\n") and what was fed is a prefix of it, the few missing
   * tokens (the unfed separator) are run now, so the next turn prefills only its new messages.
   * When the reply's tokens are not a prefix of it (the text the client sends back tokenizes
   * differently, e.g. whitespace that message cleaning removes, or bytes that are not UTF-8), the
   * state after the prompt is cached instead: the next turn then prefills the reply and its new
   * messages, never the older history. Without a continuation, the state after what was fed is.
   */
  private async remember(job: Job, reason: FinishReason): Promise<void> {
    const cache = this.cacheOf(job);
    if (!cache || !job.state || !job.stateLogits) return;
    const target = job.spec.continuation?.(job.spec.decoding.output, reason) ?? null;
    const extra = target ? target.length - job.fed.length : -1;
    if (target && extra >= 0 && extra <= MAX_CONTINUATION_EXTRA_TOKENS && job.fed.every((t, i) => t === target[i])) {
      const logits = extra > 0 ? await this.model.forward(target.slice(job.fed.length), job.state) : job.stateLogits;
      cache.store(target, job.state, logits);
      this.metrics.continuationsCached++;
    } else if (job.afterPrompt) {
      cache.store(job.spec.prompt, job.afterPrompt.state, job.afterPrompt.logits);
      this.metrics.continuationsMissed++;
    } else if (job.fed.length > job.spec.prompt.length) {
      cache.store(job.fed, job.state, job.stateLogits);
    }
  }

  private result(job: Job, finishReason: FinishReason): JobResult {
    return {
      text: job.spec.decoding.output, finishReason, cancelReason: job.cancelReason, promptTokens: job.spec.prompt.length,
      cachedTokens: job.cachedTokens, completionTokens: job.spec.decoding.generated.length,
      waitMs: job.admittedAt ? job.admittedAt - job.submittedAt : -1, firstTextMs: job.firstTextAt ? job.firstTextAt - job.submittedAt : -1,
    };
  }

  /** Runs work for `jobs`; an exception fails those requests (not the server) and returns null. */
  private guard<T>(jobs: Job[], f: () => T): T | null {
    try {
      return f();
    } catch (e) {
      this.fail(jobs, e);
      return null;
    }
  }

  /** guard() for model calls: a rejection fails those requests and gives null. */
  private async guardModel<T>(jobs: Job[], f: () => Promise<T>): Promise<T | null> {
    try {
      return await f();
    } catch (e) {
      this.fail(jobs, e);
      return null;
    }
  }

  /** Fails `jobs` (those not already done, e.g. cancelled while a call ran) and their waiting followers. */
  private fail(jobs: Job[], e: unknown): void {
    for (const job of [...jobs, ...jobs.flatMap((j) => j.followers.filter((f) => f.phase === "forked" || f.phase === "queued"))]) {
      if (job.phase === "done") continue;
      this.remove(job);
      this.metrics.requestsFailed++;
      job.settle(null, e);
    }
    this.checkIdle();
  }
}
