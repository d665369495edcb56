/*
 * rwkv-ts for browsers (bundled to dist/browser/rwkv.js): the core (models, kernels, tokenizers,
 * sampling, chat, state files, eval) plus loaders that take bytes, Blobs and URLs, and an engine
 * that runs all of it in a Worker. Started as a Worker by itself, this module becomes the engine or
 * a kernel thread, as the first message says.
 */
import type { WasmWorkerInit } from "../core/backend/wasm.js";
import { Engine } from "./engine-worker.js";
import type { EngineRequest } from "./protocol.js";
import { inWorker, ROLE_KEY, runKernelWorker, type WorkerRole } from "./threads.js";

export * from "../core/index.js";
export { applySettings, describeSettings, type ChatSettings, type ChatStart, type Reply } from "../core/chat.js";
export { loadModel, loadTokenizer, type BrowserLoadOptions, type BrowserTokenizerOptions } from "./load.js";
export { BlobSource, openSource, type Source } from "./sources.js";
export { backendReady, browserWasmBackend, defaultThreads, maxThreads, setWorkerScript, threadsUnavailableReason } from "./threads.js";
export { EngineError, RwkvEngine, type EngineOptions, type SendOptions, startEngine } from "./engine.js";
export type { BenchResult, EngineInfo, EngineLoad, KernelCalls, TurnResult } from "./protocol.js";
export { DEFAULT_CHAT_SETTINGS } from "./engine-worker.js";

interface WorkerScope {
  addEventListener(type: "message", listener: (e: MessageEvent) => void): void;
  removeEventListener(type: "message", listener: (e: MessageEvent) => void): void;
  postMessage(message: unknown): void;
}

interface RoleMessage { [ROLE_KEY]: WorkerRole; init?: WasmWorkerInit }

function isRoleMessage(d: unknown): d is RoleMessage {
  return typeof d === "object" && d !== null && ROLE_KEY in d;
}

/** Waits for a role only in Workers; any other message (a user's own) is left alone. */
if (inWorker()) {
  const scope = globalThis as unknown as WorkerScope;
  const onRole = (e: MessageEvent): void => {
    if (!isRoleMessage(e.data)) return;
    scope.removeEventListener("message", onRole);
    if (e.data[ROLE_KEY] === "kernel" && e.data.init) {
      runKernelWorker(e.data.init, (m) => scope.postMessage(m));
    } else if (e.data[ROLE_KEY] === "engine") {
      const engine = new Engine((m) => scope.postMessage(m));
      scope.addEventListener("message", (ev: MessageEvent<{ id: number; req: EngineRequest }>) => engine.handle(ev.data.id, ev.data.req));
    }
  };
  scope.addEventListener("message", onRole);
}
