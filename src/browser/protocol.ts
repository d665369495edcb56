import type { ModelConfig } from "../core/model/model.js";
import type { TokenizerKind } from "../core/tokenizer/types.js";
import type { Source } from "./sources.js";

/* Messages between the page (engine.ts) and the engine Worker (engine-worker.ts). */

export interface EngineLoad {
  readonly source: Source;
  readonly name?: string;
  readonly backend?: string;
  readonly threads?: number;
  readonly matrices?: "compact" | "f32" | "int8";
  /** The tokenizer file (not needed for byte-level models); its kind defaults to the one the vocabulary size implies. */
  readonly tokenizer?: Source | null;
  readonly tokenizerKind?: TokenizerKind;
}

export interface EngineInfo {
  readonly name: string;
  readonly config: ModelConfig;
  readonly fingerprint: string;
  readonly backend: string;
  readonly threads: number;
  /** The GPU adapter of the webgpu backend, null for others. */
  readonly adapter: string | null;
  /** Why the engine runs on another backend than asked or preferred (no WebGPU here...), or null. */
  readonly backendNote: string | null;
  /** The wasm backend's build ("simd" or "relaxed-simd"), null for others. */
  readonly simd: string | null;
  /** Null when the vocabulary fits no known tokenizer and no file was given: chat is off, logits work. */
  readonly tokenizer: TokenizerKind | null;
  /** From the load request to a model ready to run, in the Worker. */
  readonly loadMs: number;
  readonly crossOriginIsolated: boolean;
}

export interface TurnResult {
  readonly text: string;
  readonly finishReason: "length" | "stop" | "cancelled";
  readonly tokens: number;
  /** Generated tokens per second of the reply (the input's prefill not counted), null when none. */
  readonly tokensPerSecond: number | null;
  readonly history: string;
}

export interface BenchResult { readonly tokens: number; readonly ms: number; readonly tokensPerSecond: number }

export type EngineRequest =
  | { op: "load"; load: EngineLoad }
  | { op: "logits"; tokens: number[]; mode: "rnn" | "seq" }
  | { op: "send"; text: string; raw: boolean }
  | { op: "stop" }
  | { op: "reset" }
  | { op: "set"; assignments: string[] }
  | { op: "save" }
  | { op: "restore"; bytes: Uint8Array; name: string }
  | { op: "bench"; prompt: number[]; tokens: number }
  | { op: "kernelCalls" };

/** What each op resolves to. */
export interface EngineResults {
  load: EngineInfo;
  logits: Float32Array;
  send: TurnResult;
  stop: null;
  reset: string;
  set: string;
  save: Uint8Array;
  restore: string;
  bench: BenchResult;
  kernelCalls: KernelCalls;
}

/** Kernel calls run by all threads / by the calling thread alone so far (wasm backend; zeros for others). */
export interface KernelCalls { readonly parallel: number; readonly single: number }

export type EngineMessage =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: { name: string; message: string } }
  | { id: number; text: string };
