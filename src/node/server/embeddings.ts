import { DEFAULT_EMBED_CHUNK, hiddenOf, HiddenPool } from "../../core/embedding.js";
import type { Model } from "../../core/model/model.js";
import type { Tokenizer } from "../../core/tokenizer/types.js";
import { invalidParam } from "./errors.js";
import { yieldToEventLoop } from "../../core/yield.js";
import type { Json, JsonObject } from "./params.js";

/*
 * POST /v1/embeddings in OpenAI's shape. `input`: a string, an array of strings, an array of token
 * ids, or an array of such arrays; `encoding_format`: "float" (default) or "base64" (the little-endian
 * float32 bytes, which the official clients ask for and decode). The vector is the mean of the
 * model's final hidden state (after ln_out) over the input's tokens, scaled to unit length
 * (core/embedding.ts); its dimension is the model's width. Inputs are embedded one by one, chunk by
 * chunk, yielding to the event loop between chunks so that decoding requests keep flowing.
 */

/** OpenAI's limit on inputs per request. */
export const MAX_EMBEDDING_INPUTS = 2048;

export interface EmbeddingRequest {
  readonly model: string;
  /** Token ids of each input. */
  readonly inputs: readonly (readonly number[])[];
  readonly encoding: "float" | "base64";
}

export interface EmbeddingLimits {
  readonly maxInputTokens: number;
  readonly vocabSize: number;
  /** The embedding width (model.config.nEmbd), the only `dimensions` accepted. */
  readonly dimensions: number;
}

const isTokenArray = (v: Json): v is number[] => Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "number");

function tokenIds(where: string, v: number[], vocabSize: number): number[] {
  for (const [i, id] of v.entries()) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw invalidParam("input", `${where}[${i}] = ${id} is not a token id of this model (0..${vocabSize - 1})`);
  }
  return v;
}

export function parseEmbeddingRequest(body: JsonObject, tokenizer: Tokenizer, limits: EmbeddingLimits): EmbeddingRequest {
  const model = body.model;
  if (typeof model !== "string" || model === "") throw invalidParam("model", "model is required (a string)", "invalid_type");
  const enc = body.encoding_format ?? "float";
  if (enc !== "float" && enc !== "base64") throw invalidParam("encoding_format", `encoding_format must be "float" or "base64", got ${JSON.stringify(enc)}`);
  const dims = body.dimensions;
  if (dims !== undefined && dims !== null && dims !== limits.dimensions) {
    throw invalidParam("dimensions", `this model's embeddings have ${limits.dimensions} dimensions; dimensions=${JSON.stringify(dims)} is not supported`, "unsupported_parameter");
  }
  const input = body.input;
  let items: { where: string; value: string | number[] }[];
  if (typeof input === "string") items = [{ where: "input", value: input }];
  else if (isTokenArray(input)) items = [{ where: "input", value: input }];
  else if (Array.isArray(input) && input.length > 0) {
    items = input.map((v, i) => {
      if (typeof v === "string" || isTokenArray(v)) return { where: `input[${i}]`, value: v };
      throw invalidParam("input", `input[${i}] must be a string or a non-empty array of token ids`, "invalid_type");
    });
  } else {
    throw invalidParam("input", "input must be a non-empty string, array of strings, or array of token ids", input === undefined ? "missing_required_parameter" : "invalid_type");
  }
  if (items.length > MAX_EMBEDDING_INPUTS) throw invalidParam("input", `input has ${items.length} items; at most ${MAX_EMBEDDING_INPUTS} are allowed`);
  const inputs = items.map(({ where, value }) => {
    const ids = typeof value === "string" ? tokenizer.encode(value) : tokenIds(where, value, limits.vocabSize);
    if (ids.length === 0) throw invalidParam("input", `${where} is empty (no tokens)`);
    if (ids.length > limits.maxInputTokens) {
      throw invalidParam("input", `${where} has ${ids.length} tokens; this server accepts at most ${limits.maxInputTokens}`, "context_length_exceeded");
    }
    return ids;
  });
  return { model, inputs, encoding: enc };
}

/** Runs the model over each input and builds the OpenAI response body. */
export async function embeddingsResponse(model: Model, request: EmbeddingRequest, modelName: string): Promise<object> {
  const hidden = hiddenOf(model);
  const data: object[] = [];
  let tokens = 0;
  for (const [index, ids] of request.inputs.entries()) {
    const pool = new HiddenPool(model.config.nEmbd);
    const state = model.initState();
    for (let i = 0; i < ids.length; i += DEFAULT_EMBED_CHUNK) {
      if (i > 0 || index > 0) await yieldToEventLoop();
      pool.add(await hidden(ids.slice(i, i + DEFAULT_EMBED_CHUNK), state, { allLogits: true }));
    }
    const v = pool.result();
    tokens += ids.length;
    data.push({ object: "embedding", index, embedding: request.encoding === "base64" ? base64(v) : Array.from(v) });
  }
  return { object: "list", data, model: modelName, usage: { prompt_tokens: tokens, total_tokens: tokens } };
}

/** float32 little-endian bytes, base64: what OpenAI sends for encoding_format "base64". */
function base64(v: Float32Array): string {
  const bytes = Buffer.alloc(v.length * 4);
  for (let i = 0; i < v.length; i++) bytes.writeFloatLE(v[i], i * 4);
  return bytes.toString("base64");
}
