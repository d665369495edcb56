import { ChatSession, type ChatSettings } from "../core/chat.js";
import { RwkvInputError } from "../core/errors.js";
import { argmax } from "../core/generate.js";
import type { Model } from "../core/model/model.js";
import { checkStateBelongs, decodeStateFile, encodeStateFile, modelIdentity } from "../core/state-file.js";
import { tokenizerKindForVocab } from "../core/tokenizer/choose.js";
import { TOKENIZER_FILES } from "../core/tokenizer/index.js";
import type { Tokenizer } from "../core/tokenizer/types.js";
import { loadModel, loadTokenizer } from "./load.js";
import { webGpuUnavailableReason } from "../core/backend/webgpu/index.js";
import type { EngineInfo, EngineLoad, EngineMessage, EngineRequest, EngineResults } from "./protocol.js";
import { maxThreads } from "./threads.js";

/*
 * The engine: runs in a dedicated Worker that the page starts (engine.ts), so the page's main
 * thread never waits on a kernel. One model, one tokenizer and one conversation (ChatSession, the
 * same as `rwkv chat`). Requests run one after another; "stop" is answered at once and aborts the
 * running turn, which sees it at its next yield (generate() yields every few milliseconds).
 */

/** The page's starting sampler: `rwkv chat`'s defaults (the official ChatRWKV ones). */
export const DEFAULT_CHAT_SETTINGS: ChatSettings = {
  maxTokens: 200, sampler: { temperature: 1.0, topP: 0.85, topK: 0, minP: 0 },
  penalties: { presencePenalty: 0.2, frequencyPenalty: 0.2, penaltyDecay: 0.996 }, stop: [], stopTokens: [], chunkLen: 256,
};

interface Loaded { model: Model; session: ChatSession | null; info: EngineInfo }

const MS_PER_S = 1000;

export class Engine {
  private loaded: Loaded | null = null;
  private abort: AbortController | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly post: (m: EngineMessage) => void) {}

  handle(id: number, req: EngineRequest): void {
    if (req.op === "stop") {
      this.abort?.abort();
      this.post({ id, ok: true, value: null });
      return;
    }
    this.queue = this.queue.then(async () => {
      try {
        this.post({ id, ok: true, value: await this.run(id, req) });
      } catch (e) {
        const err = e instanceof Error ? e : new Error(String(e));
        this.post({ id, ok: false, error: { name: err instanceof RwkvInputError ? "RwkvInputError" : err.name, message: err.message } });
      }
    });
  }

  private need(): Loaded {
    if (!this.loaded) throw new RwkvInputError("model", "no model is loaded yet");
    return this.loaded;
  }

  /** The conversation, which needs a tokenizer. */
  private chat(): { model: Model; session: ChatSession } {
    const { model, session, info } = this.need();
    if (!session) throw new RwkvInputError(info.name, this.noTokenizer);
    return { model, session };
  }
  /** Why the loaded model has no tokenizer (when it has none). */
  private noTokenizer = "";

  /**
   * The tokenizer: the given file (its kind from the option or the vocabulary), or the byte
   * tokenizer's; null when the vocabulary size names no tokenizer and none was given (the model
   * still runs on token ids).
   */
  private async tokenizerFor(req: EngineLoad, vocabSize: number): Promise<Tokenizer | null> {
    let kind = req.tokenizerKind;
    if (kind === undefined) {
      try {
        kind = tokenizerKindForVocab(vocabSize);
      } catch (e) {
        if (req.tokenizer) throw e;
        this.noTokenizer = `its vocabulary (${vocabSize}) fits no known tokenizer: load it with a tokenizer file and kind`;
        return null;
      }
    }
    const file = TOKENIZER_FILES[kind];
    if (!req.tokenizer && file !== null) {
      this.noTokenizer = `its ${kind} tokenizer needs ${file}: load the model again with that tokenizer file`;
      return null;
    }
    return loadTokenizer(req.tokenizer ?? null, { kind, vocabSize });
  }

  private async run(id: number, req: Exclude<EngineRequest, { op: "stop" }>): Promise<EngineResults[typeof req.op]> {
    switch (req.op) {
      case "load": return this.load(req.load);
      case "logits": return this.logits(req.tokens, req.mode);
      case "send": return this.send(id, req.text, req.raw);
      case "reset": { const { session } = this.chat(); session.reset(); return session.history; }
      case "set": { const { session } = this.chat(); session.set(req.assignments); return describe(session.settings); }
      case "save": return this.save();
      case "restore": return this.restore(req.bytes, req.name);
      case "bench": return this.bench(req.prompt, req.tokens);
      case "kernelCalls": {
        const calls = (this.need().model.backend as { calls?: { parallel: number; single: number } }).calls;
        return { parallel: calls?.parallel ?? 0, single: calls?.single ?? 0 };
      }
    }
  }

  private async load(req: EngineLoad): Promise<EngineInfo> {
    const t0 = performance.now();
    const threads = req.threads ?? maxThreads();
    const model = await loadModel(req.source, { backend: req.backend, threads, matrices: req.matrices, name: req.name });
    const tokenizer = await this.tokenizerFor(req, model.config.vocabSize);
    const session = tokenizer ? await ChatSession.start(model, tokenizer, { settings: DEFAULT_CHAT_SETTINGS }) : null;
    const b = model.backend as { name: string; threads?: number; simd?: string; adapterName?: string };
    const gpuMissing = webGpuUnavailableReason();
    const info: EngineInfo = {
      name: req.name ?? (typeof req.source === "string" ? req.source : "model"), config: model.config, fingerprint: model.fingerprint,
      backend: b.name, threads: b.threads ?? 1, simd: b.simd ?? null, adapter: b.adapterName ?? null,
      backendNote: req.backend === undefined && b.name !== "webgpu" && gpuMissing ? `no WebGPU: ${gpuMissing}` : null, tokenizer: tokenizer?.name ?? null, loadMs: performance.now() - t0,
      crossOriginIsolated: (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated === true,
    };
    // Replaced only once everything loaded: a bad file leaves the previous model working.
    this.loaded = { model, session, info };
    return info;
  }

  private async logits(tokens: number[], mode: "rnn" | "seq"): Promise<Float32Array> {
    const { model } = this.need();
    const state = model.initState();
    if (mode === "seq") return await model.forward(tokens, state, { allLogits: true });
    const V = model.config.vocabSize;
    const out = new Float32Array(tokens.length * V);
    for (const [i, t] of tokens.entries()) out.set(await model.step(t, state), i * V);
    return out;
  }

  private async send(id: number, text: string, raw: boolean): Promise<EngineResults["send"]> {
    const { session } = this.chat();
    session.raw = raw;
    this.abort = new AbortController();
    let first = 0, last = 0, pieces = 0;
    try {
      const reply = await session.send(text, {
        signal: this.abort.signal,
        onText: (t) => {
          last = performance.now();
          if (pieces++ === 0) first = last;
          this.post({ id, text: t });
        },
      });
      // The first piece comes after the input's prefill: rate over the tokens after it.
      const tps = reply && reply.tokens > 1 && last > first ? ((reply.tokens - 1) * MS_PER_S) / (last - first) : null;
      return { text: reply?.text ?? "", finishReason: reply?.finishReason ?? "stop", tokens: reply?.tokens ?? 0, tokensPerSecond: tps, history: session.history };
    } finally {
      this.abort = null;
    }
  }

  private async save(): Promise<Uint8Array> {
    const { model, session } = this.chat();
    const snap = session.snapshot();
    await snap.state.sync(); // a GPU backend's values come back first
    return encodeStateFile({ model: modelIdentity(model), state: snap.state, logits: snap.logits, tokens: snap.tokens, extra: snap.extra });
  }

  private restore(bytes: Uint8Array, name: string): string {
    const { model, session } = this.chat();
    const file = decodeStateFile(bytes, name);
    checkStateBelongs(file, model, name);
    session.restore({ ...file, source: name });
    return session.history;
  }

  /** Decoding speed alone: `tokens` greedy steps after `prompt`, timed in the Worker. */
  private async bench(prompt: number[], tokens: number): Promise<EngineResults["bench"]> {
    const { model } = this.need();
    if (!Number.isSafeInteger(tokens) || tokens < 1) throw new RwkvInputError("tokens", `must be a positive integer, got ${tokens}`);
    const state = model.initState();
    let logits = await model.forward(prompt.length ? prompt : [0], state);
    const t0 = performance.now();
    for (let i = 0; i < tokens; i++) logits = await model.step(argmax(logits), state);
    const ms = performance.now() - t0;
    return { tokens, ms, tokensPerSecond: (tokens * MS_PER_S) / ms };
  }
}

function describe(s: ChatSettings): string {
  return JSON.stringify({ ...s.sampler, ...s.penalties, maxTokens: s.maxTokens });
}
