import type { BenchResult, KernelCalls, EngineInfo, EngineLoad, EngineMessage, EngineRequest, EngineResults, TurnResult } from "./protocol.js";
import { getWorkerScript, ROLE_KEY, type WorkerRole } from "./threads.js";

/*
 * The page side of the engine: starts rwkv.js itself as a dedicated module Worker (engine-worker.ts
 * runs there) and turns its messages into promises. Every method returns at once; the model runs
 * in the Worker, with kernel threads when the page is cross-origin isolated.
 */

interface WorkerLike {
  postMessage(message: unknown): void;
  addEventListener(type: "message", listener: (e: MessageEvent<EngineMessage>) => void): void;
  addEventListener(type: "error", listener: (e: ErrorEvent) => void): void;
  terminate(): void;
}
type WorkerCtor = new (url: string | URL, options: { type: "module"; name?: string }) => WorkerLike;

export interface EngineOptions {
  /** Where rwkv.js is served (default: the URL this module was loaded from). */
  readonly workerUrl?: string | URL;
}

export interface SendOptions {
  /** Completion mode: continue the text as is, no User/Assistant framing. */
  readonly raw?: boolean;
  /** Receives the reply as it is generated. */
  readonly onText?: (text: string) => void;
}

interface Pending { resolve(v: unknown): void; reject(e: Error): void; onText?: (t: string) => void }

/** An error from the Worker, with the name it had there ("RwkvInputError" for bad input). */
export class EngineError extends Error {
  constructor(name: string, message: string) {
    super(message);
    this.name = name;
  }
}

export class RwkvEngine {
  private readonly worker: WorkerLike;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private dead: Error | null = null;

  constructor(options: EngineOptions = {}) {
    const W = (globalThis as unknown as { Worker?: WorkerCtor }).Worker;
    if (typeof W !== "function") throw new Error("RwkvEngine needs Web Workers");
    this.worker = new W(options.workerUrl ?? getWorkerScript(), { type: "module", name: "rwkv-engine" });
    this.worker.addEventListener("message", (e) => this.receive(e.data));
    this.worker.addEventListener("error", (e) => this.fail(new Error(`the rwkv engine worker failed: ${e.message || "script error"}`)));
    this.worker.postMessage({ [ROLE_KEY]: "engine" satisfies WorkerRole });
  }

  private receive(m: EngineMessage): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    if ("text" in m) { p.onText?.(m.text); return; }
    this.pending.delete(m.id);
    if (m.ok) p.resolve(m.value);
    else p.reject(new EngineError(m.error.name, m.error.message));
  }

  private fail(e: Error): void {
    this.dead = e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  private call<K extends EngineRequest["op"]>(req: Extract<EngineRequest, { op: K }>, onText?: (t: string) => void): Promise<EngineResults[K]> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, onText });
      this.worker.postMessage({ id, req });
    });
  }

  /** Loads a model (and its tokenizer); the previous one stays if this fails. */
  load(load: EngineLoad): Promise<EngineInfo> { return this.call({ op: "load", load }); }
  /** Logits (T·V) of `tokens` from the initial state, token by token ("rnn") or as one sequence ("seq"). */
  logits(tokens: number[], mode: "rnn" | "seq" = "rnn"): Promise<Float32Array> { return this.call({ op: "logits", tokens, mode }); }
  /** One chat turn (or a completion with raw), streaming the reply. */
  send(text: string, options: SendOptions = {}): Promise<TurnResult> {
    return this.call({ op: "send", text, raw: options.raw === true }, options.onText);
  }
  /** Ends the running reply early (what was generated is kept). */
  stop(): Promise<null> { return this.call({ op: "stop" }); }
  /** Back to the start of the conversation; resolves to the transcript (empty). */
  reset(): Promise<string> { return this.call({ op: "reset" }); }
  /** Sampler settings as `rwkv chat`'s /set takes them ("temperature=0.8", "top_p=0.5", "seed=3"...). */
  set(assignments: string[]): Promise<string> { return this.call({ op: "set", assignments }); }
  /** The conversation as a state file (the same format as `rwkv chat`'s /save). */
  save(): Promise<Uint8Array> { return this.call({ op: "save" }); }
  /** Continues a saved conversation; resolves to its transcript. */
  restore(bytes: Uint8Array, name = "state"): Promise<string> { return this.call({ op: "restore", bytes, name }); }
  /** Greedy decoding speed: `tokens` steps after `prompt`. */
  bench(prompt: number[], tokens: number): Promise<BenchResult> { return this.call({ op: "bench", prompt, tokens }); }

  /** How many kernel calls ran on all threads and on one (wasm backend), to see threads at work. */
  kernelCalls(): Promise<KernelCalls> { return this.call({ op: "kernelCalls" }); }

  terminate(): void {
    this.worker.terminate();
    this.fail(new Error("the rwkv engine was terminated"));
  }
}

/** Starts an engine Worker. */
export function startEngine(options: EngineOptions = {}): RwkvEngine {
  return new RwkvEngine(options);
}
