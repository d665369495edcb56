import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { END_OF_TEXT_TOKEN } from "../../core/chat.js";
import type { Model } from "../../core/model/model.js";
import type { Tokenizer } from "../../core/tokenizer/types.js";
import { type ChatNames, DEFAULT_CHAT_NAMES } from "./chat-format.js";
import { ApiError, HTTP, sendError, sendJson } from "./errors.js";
import { type CorsOptions, handleCors } from "./cors.js";
import { embeddingsResponse, parseEmbeddingRequest } from "./embeddings.js";
import { type GenerationRequest, type JsonObject, type Limits, parseChatRequest, parseCompletionRequest, parseJsonBody } from "./params.js";
import { GrammarCache, runCompletion } from "./completion.js";
import { Scheduler } from "./scheduler.js";
import { AdapterRoutes, type ServedAdapter, UNMERGED } from "./adapters.js";
import type { PrefixStore } from "../../core/prefix-cache.js";

/*
 * The OpenAI-compatible HTTP API over node:http: GET /v1/models, POST /v1/completions,
 * POST /v1/chat/completions (JSON or server-sent events), GET /health, GET /metrics. Every request
 * is validated and tokenized here; the Scheduler runs the model. See scheduler.ts for batching.
 */

export interface ServerOptions {
  readonly model: Model;
  readonly tokenizer: Tokenizer;
  /** The id clients put in `model`. */
  readonly modelName: string;
  readonly host?: string;
  /** 0 = an ephemeral port (see address()). */
  readonly port?: number;
  readonly slots?: number;
  readonly queue?: number;
  readonly cacheBytes?: number;
  /** When set, /v1/* and /metrics need `Authorization: Bearer <key>`. */
  readonly apiKey?: string;
  readonly maxPromptTokens?: number;
  /** Largest max_tokens a request may ask for; also the chat default. */
  readonly maxTokensLimit?: number;
  readonly bodyLimit?: number;
  readonly chatNames?: ChatNames;
  readonly penaltyDecay?: number;
  readonly prefillChunk?: number;
  /**
   * Adapters by name: requests select one with `model: "<modelName>+<name>"`. Each is the base with
   * it merged, or UNMERGED: loaded into `model` with Model.loadAdapter under that name.
   */
  readonly adapters?: ReadonlyMap<string, ServedAdapter>;
  /** One line per finished request, when given. */
  readonly log?: (line: string) => void;
  /** Browser origins allowed to call the API (CORS); none when absent. */
  readonly cors?: CorsOptions;
  /** A second prefix-cache level shared between replicas (rwkv serve --state-store). */
  readonly stateStore?: PrefixStore;
}

export const SERVER_DEFAULTS = {
  host: "127.0.0.1",
  port: 8000,
  slots: 4,
  queue: 64,
  cacheMb: 256,
  maxPromptTokens: 16384,
  maxTokensLimit: 4096,
  bodyLimit: 2 * 1024 * 1024,
  /** The official alpha_decay. */
  penaltyDecay: 0.996,
  /** Prompt tokens per loop turn while others decode: about the cost of one decode step of a full batch of 64. */
  prefillChunk: 64,
} as const;

const MIB = 1024 * 1024;
/** OpenAI's `created` is in whole seconds. */
const MS_PER_S = 1000;
/** How long an oversized upload may go on being discarded after its 413 before the socket is cut. */
const OVERSIZE_LINGER_MS = 1000;

const ROUTES: Readonly<Record<string, readonly string[]>> = {
  "/health": ["GET"],
  "/metrics": ["GET"],
  "/v1/models": ["GET"],
  "/v1/completions": ["POST"],
  "/v1/chat/completions": ["POST"],
  "/v1/embeddings": ["POST"],
};

export class RwkvServer {
  readonly scheduler: Scheduler;
  readonly http: Server;
  private readonly limits: Limits;
  private readonly names: ChatNames;
  private readonly bodyLimit: number;
  private readonly apiKey: Buffer | null;
  private readonly stopTokens: readonly number[];
  private readonly choosable: number;
  private readonly created = Math.floor(Date.now() / MS_PER_S);
  private draining = false;
  private readonly adapters: AdapterRoutes;
  private readonly grammars = new GrammarCache();

  constructor(private readonly options: ServerOptions) {
    const d = SERVER_DEFAULTS;
    const { model, tokenizer } = options;
    // The base and its unmerged adapters share one scheduler (one batch); a merged adapter gets one
    // of its own. Every adapter and the base get an equal share of the prefix cache. The shared store
    // (--state-store) holds the base model's states only: an adapter's states would need a namespace
    // of their own, so its prefix cache stays local.
    const shares = 1 + (options.adapters?.size ?? 0);
    const unmerged = [...(options.adapters ?? new Map<string, ServedAdapter>())].filter(([, a]) => a === UNMERGED).map(([n]) => n);
    const schedulerFor = (m: Model, stateStore?: PrefixStore, adapters?: string[]) => new Scheduler(m, {
      slots: options.slots ?? d.slots, queue: options.queue ?? d.queue,
      cacheBytes: Math.floor((options.cacheBytes ?? d.cacheMb * MIB) / shares), prefillChunk: options.prefillChunk ?? d.prefillChunk,
      stateStore, adapters,
    });
    this.scheduler = schedulerFor(model, options.stateStore, unmerged);
    this.adapters = new AdapterRoutes(options.modelName, options.adapters ?? new Map(), { model, scheduler: this.scheduler }, (m) => schedulerFor(m));
    this.choosable = Math.min(tokenizer.vocabSize, model.config.vocabSize);
    this.limits = {
      maxPromptTokens: options.maxPromptTokens ?? d.maxPromptTokens, maxTokensLimit: options.maxTokensLimit ?? d.maxTokensLimit,
      vocabSize: this.choosable, penaltyDecay: options.penaltyDecay ?? d.penaltyDecay,
    };
    this.names = options.chatNames ?? DEFAULT_CHAT_NAMES;
    this.bodyLimit = options.bodyLimit ?? d.bodyLimit;
    this.apiKey = options.apiKey ? digest(options.apiKey) : null;
    // World and 20B vocabularies end a document with token 0; for the bytes vocabulary it is byte 0.
    this.stopTokens = tokenizer.name === "bytes" ? [] : [END_OF_TEXT_TOKEN];
    const dispatch = (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((e: unknown) => this.fail(req, res, e));
    };
    this.http = createServer(dispatch);
    // "Expect: 100-continue": invite the body only if it may fit, so an oversized upload is never sent.
    this.http.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => {
      if (!(Number(req.headers["content-length"]) > this.bodyLimit)) res.writeContinue();
      dispatch(req, res);
    });
  }

  /** Starts listening; resolves with the bound address (the real port when 0 was asked for). */
  async listen(): Promise<{ host: string; port: number }> {
    const host = this.options.host ?? SERVER_DEFAULTS.host;
    await new Promise<void>((resolve, reject) => {
      this.http.once("error", reject);
      this.http.listen(this.options.port ?? SERVER_DEFAULTS.port, host, () => { this.http.off("error", reject); resolve(); });
    });
    const a = this.http.address() as AddressInfo;
    return { host: a.address, port: a.port };
  }

  /**
   * Graceful stop: no new connections or requests (503), in-flight and queued requests finish
   * for up to `graceMs`, then the rest are cancelled; resolves when every connection is closed.
   */
  async shutdown(graceMs: number): Promise<{ cancelled: number }> {
    this.draining = true;
    this.scheduler.stopAccepting();
    for (const s of this.adapters.ownSchedulers()) s.stopAccepting();
    const closed = new Promise<void>((resolve) => this.http.close(() => resolve()));
    this.http.closeIdleConnections();
    const all = [this.scheduler, ...this.adapters.ownSchedulers()];
    const finished = (await Promise.all(all.map((s) => s.whenIdle(graceMs)))).every((f) => f);
    const cancelled = finished ? 0 : all.reduce((n, s) => n + s.activeCount + s.queuedCount, 0);
    if (!finished) for (const s of all) s.cancelAll("shutdown");
    // Let the handlers of the cancelled requests write their replies before connections go.
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.http.closeAllConnections();
    await closed;
    return { cancelled };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.draining) res.setHeader("Connection", "close"); // do not keep connections to a server going away
    const url = new URL(req.url ?? "/", "http://localhost");
    const path = url.pathname.replace(/\/+$/, "") || "/";
    const method = req.method ?? "GET";
    const modelPath = path.startsWith("/v1/models/") ? path : null;
    const allowed = ROUTES[path] ?? (modelPath ? ["GET"] : undefined);
    if (this.options.cors && handleCors(req, res, this.options.cors, allowed ?? null)) return; // a preflight, answered
    if (!allowed) throw new ApiError(HTTP.notFound, `Invalid URL (${method} ${path})`, "invalid_request_error", null, "unknown_url");
    if (!allowed.includes(method)) {
      throw new ApiError(HTTP.methodNotAllowed, `method ${method} is not allowed for ${path} (allowed: ${allowed.join(", ")})`,
        "invalid_request_error", null, "method_not_allowed", { Allow: allowed.join(", ") });
    }
    if (path === "/health") return this.health(res);
    this.authorize(req);
    if (path === "/metrics") return this.metrics(res, url.searchParams.get("format") === "json");
    if (path === "/v1/models") return sendJson(res, HTTP.ok, { object: "list", data: [this.modelObject(), ...this.adapters.all().map((a) => this.modelObject(a.id))] });
    if (modelPath) {
      const id = decodePathPart(modelPath.slice("/v1/models/".length));
      this.checkModel(id);
      return sendJson(res, HTTP.ok, this.modelObject(id));
    }
    const body = parseJsonBody(await readBody(req, this.bodyLimit));
    if (this.draining) throw new ApiError(HTTP.unavailable, "the server is shutting down", "server_error", null, "shutting_down");
    if (path === "/v1/embeddings") return this.embeddings(body, res);
    const request = path === "/v1/chat/completions" ? parseChatRequest(body, this.limits) : parseCompletionRequest(body, this.limits);
    await this.generate(request, req, res, this.checkModel(request.model));
  }

  private authorize(req: IncomingMessage): void {
    if (!this.apiKey) return;
    const m = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "");
    const given = m ? digest(m[1].trim()) : null;
    // Constant-time comparison of fixed-length digests: timing reveals neither how much of a
    // guessed key is right nor the key's length.
    if (!given || !timingSafeEqual(given, this.apiKey)) {
      throw new ApiError(HTTP.unauthorized, given ? "Incorrect API key provided." : "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
        "invalid_request_error", null, "invalid_api_key", { "WWW-Authenticate": "Bearer" });
    }
  }

  /** The model and scheduler serving `name`: the base, or an adapter ("base+NAME"); 404 otherwise. */
  private checkModel(name: string): { model: Model; scheduler: Scheduler; adapter?: string } {
    if (name === this.options.modelName) return { model: this.options.model, scheduler: this.scheduler };
    const adapter = this.adapters.get(name);
    if (adapter) return adapter;
    const served = [this.options.modelName, ...this.adapters.all().map((a) => a.id)].map((n) => `\`${n}\``).join(", ");
    throw new ApiError(HTTP.notFound, `The model \`${name}\` does not exist (this server serves ${served}).`,
      "invalid_request_error", "model", "model_not_found");
  }

  private modelObject(id = this.options.modelName) {
    return { id, object: "model", created: this.created, owned_by: "rwkv-ts" };
  }

  private health(res: ServerResponse): void {
    const s = this.scheduler;
    sendJson(res, this.draining ? HTTP.unavailable : HTTP.ok, {
      status: this.draining ? "draining" : "ok", model: this.options.modelName, backend: this.options.model.backend.name,
      slots: s.options.slots, active: s.activeCount, queued: s.queuedCount,
    });
  }

  /** The counters as JSON, or in the Prometheus text format (the default). */
  private metrics(res: ServerResponse, json: boolean): void {
    const s = this.scheduler;
    const m = s.metrics;
    const values = {
      slots: s.options.slots, slots_active: s.activeCount, queue_capacity: s.options.queue, queue_length: s.queuedCount,
      requests_started_total: m.requestsStarted, requests_finished_total: m.requestsFinished, requests_cancelled_total: m.requestsCancelled,
      requests_failed_total: m.requestsFailed, requests_rejected_total: m.requestsRejected,
      prompt_tokens_total: m.promptTokens, prompt_tokens_cached_total: m.promptTokensCached, prompt_tokens_processed_total: m.promptTokensProcessed,
      completion_tokens_total: m.completionTokens, decode_steps_total: m.decodeSteps, decode_tokens_total: m.decodeTokens,
      prefill_chunks_total: m.prefillChunks, decode_batch_max: m.largestBatch, prefix_cache_entries: s.cache?.size ?? 0, prefix_cache_bytes: s.cache?.bytes ?? 0,
      prefix_cache_hits_total: s.cache?.hits ?? 0, prefix_cache_misses_total: s.cache?.misses ?? 0,
      chat_continuations_cached_total: m.continuationsCached, chat_continuations_missed_total: m.continuationsMissed,
      ...s.cache?.secondLevel?.metrics(),
      ...memory(),
    };
    if (json) return sendJson(res, HTTP.ok, values);
    const text = Object.entries(values).map(([k, v]) => {
      const name = k.startsWith("process_") ? k : `rwkv_${k}`;
      return `# TYPE ${name} ${k.endsWith("_total") ? "counter" : "gauge"}\n${name} ${v}\n`;
    }).join("");
    res.writeHead(HTTP.ok, { "Content-Type": "text/plain; version=0.0.4; charset=utf-8" });
    res.end(text);
  }

  private async generate(request: GenerationRequest, req: IncomingMessage, res: ServerResponse,
    served: { model: Model; scheduler: Scheduler; adapter?: string }): Promise<void> {
    const { tokenizer, log } = this.options;
    await runCompletion({
      model: served.model, tokenizer, modelName: request.model, log, scheduler: served.scheduler, adapter: served.adapter, limits: this.limits, names: this.names,
      stopTokens: this.stopTokens, choosable: this.choosable, grammars: this.grammars,
    }, request, req, res);
  }

  private async embeddings(body: JsonObject, res: ServerResponse): Promise<void> {
    const { model, tokenizer, modelName } = this.options;
    const request = parseEmbeddingRequest(body, tokenizer, { maxInputTokens: this.limits.maxPromptTokens, vocabSize: this.choosable, dimensions: model.config.nEmbd });
    const served = this.checkModel(request.model);
    sendJson(res, HTTP.ok, await embeddingsResponse(served.model, request, request.model === modelName ? modelName : request.model));
  }

  /** Answers a failed request: its ApiError, or a 500 for anything else (a bug: logged). */
  private fail(req: IncomingMessage, res: ServerResponse, e: unknown): void {
    const error = e instanceof ApiError ? e : internalError(e);
    if (!(e instanceof ApiError)) this.options.log?.(`internal error: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
    if (res.headersSent) {
      if (!res.writableEnded) res.end();
      return;
    }
    if (error.status === HTTP.payloadTooLarge) {
      // Close the connection after the answer. Until then node discards (does not buffer) the rest
      // of the body; closing at once could reset the connection before the client reads the 413.
      res.setHeader("Connection", "close");
      res.once("finish", () => setTimeout(() => req.socket.destroy(), OVERSIZE_LINGER_MS).unref());
    }
    sendError(res, error);
  }
}

const digest = (key: string): Buffer => createHash("sha256").update(key).digest();

/** A percent-encoded path segment; malformed escapes are kept verbatim (they then match no model). */
function decodePathPart(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

/** Process memory gauges: RSS and its JS parts (heap, external and ArrayBuffer bytes, which hold states and weights). */
function memory() {
  const m = process.memoryUsage();
  return {
    process_resident_memory_bytes: m.rss, process_heap_used_bytes: m.heapUsed, process_heap_total_bytes: m.heapTotal,
    process_external_bytes: m.external, process_array_buffers_bytes: m.arrayBuffers,
  };
}

function internalError(e: unknown): ApiError {
  return new ApiError(HTTP.internal, `internal error: ${e instanceof Error ? e.message : String(e)}`, "server_error", null, "internal_error");
}

/**
 * The request body as UTF-8 text, at most `limit` bytes: a larger Content-Length is refused before
 * reading anything, and a chunked body stops being read the moment it passes the limit (413; the
 * connection is closed after the answer so the rest is never read).
 */
async function readBody(req: IncomingMessage, limit: number): Promise<string> {
  const tooLarge = () => new ApiError(HTTP.payloadTooLarge, `request body is larger than ${limit} bytes`, "invalid_request_error", null, "request_too_large");
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > limit) {
    req.pause();
    throw tooLarge();
  }
  const bytes = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (b: Buffer) => {
      size += b.length;
      if (size <= limit) { chunks.push(b); return; }
      // Stop here: no more data events, nothing buffered beyond the limit.
      req.off("data", onData);
      req.pause();
      reject(tooLarge());
    };
    req.on("data", onData);
    req.once("end", () => resolve(Buffer.concat(chunks)));
    req.once("error", reject);
  });
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ApiError(HTTP.badRequest, "request body is not valid UTF-8", "invalid_request_error", null, "invalid_json");
  }
}
