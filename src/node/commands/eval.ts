import { accessSync, constants, existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { knownBackends } from "../../core/backend/registry.js";
import { RwkvInputError } from "../../core/errors.js";
import { DEFAULT_PIECE_LEN, evaluateDocuments, evaluateLambada, evaluateUncheatable, type LambadaResult, type PerplexityResult } from "../../core/eval.js";
import { type CliIO, MODEL_OPTIONS, modelLoadOptions, parse, positiveInt, str, UsageError, type Values } from "../cli-util.js";
import { type LoadOptions, loadModel } from "../load.js";
import { type CliConfig, modelPathFor } from "../model-arg.js";
import { Progress } from "../progress.js";
import { loadTokenizer, type TokenizerKind } from "../tokenizer.js";

// Usage lines: the dispatcher indents the first by 2, so its description column is 2 less.
const COLUMN = 39;
const head = (s: string, d: string) => s.padEnd(COLUMN - 2) + d;
const sub = (s: string, d: string) => ("      " + s).padEnd(COLUMN) + d;

export const EVAL_USAGE = [
  head("eval [MODEL] --text FILE", "perplexity, bits per byte/char of a UTF-8 text (JSON to stdout)"),
  sub("--json FILE", "the same over each document of a JSON list of strings"),
  sub("--uncheatable FILE", "uncheatable eval of a JSON list (pieces from a fresh state each)"),
  sub("--lambada FILE", "LAMBADA last-word accuracy and perplexity (.jsonl of {\"text\"})"),
  sub("--piece-len N", `tokens per forward / per uncheatable piece (default ${DEFAULT_PIECE_LEN})`),
  sub("--limit N", "only the first N documents or items"),
  sub("--carry-state", "--json: carry the state from one document into the next"),
  sub("--output FILE", "also write the JSON result to FILE"),
  sub("--tokenizer PATH", "World vocab or 20B_tokenizer.json (as for generate)"),
  sub("--tokenizer-kind world|20b|bytes", "override the choice made from the vocabulary size"),
  sub("--backend NAME", "kernel backend (default: best available)"),
  sub("--threads N  --int8  --no-verify", "kernel threads (all cores); quantize matrices to int8 at load; skip CRC/NaN checks"),
].join("\n");

type Method = "text" | "json" | "uncheatable" | "lambada";
const METHODS: readonly Method[] = ["text", "json", "uncheatable", "lambada"];
/** Exit status of a run cancelled with Ctrl-C (128 + SIGINT), the shell convention. */
const EXIT_INTERRUPTED = 130;
/** Progress is counted in tokens fed to the model. */
const PROGRESS_UNIT = "tok";
const MS_PER_S = 1000;

/** The input file's bytes; missing, unreadable, directory and empty files are input errors. */
function readInput(path: string): Uint8Array {
  let bytes: Uint8Array;
  try {
    if (statSync(path).isDirectory()) throw new RwkvInputError(path, "is a directory");
    bytes = readFileSync(path);
  } catch (e) {
    if (e instanceof RwkvInputError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new RwkvInputError(path, code === "ENOENT" ? "no such file" : `cannot read (${code ?? (e as Error).message})`);
  }
  if (bytes.length === 0) throw new RwkvInputError(path, "file is empty");
  return bytes;
}

/**
 * Where UTF-8 decoding first fails. A streaming decoder accepts an incomplete sequence at the end of
 * a prefix, so "this prefix fails" is monotonic in its length and a binary search finds the byte.
 */
function firstInvalidUtf8(bytes: Uint8Array): number | null {
  const fails = (n: number) => {
    try { new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, n), { stream: true }); return false; } catch { return true; }
  };
  if (!fails(bytes.length)) return null; // only the final sequence is cut short
  let lo = 0, hi = bytes.length; // fails(lo) false, fails(hi) true
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (fails(mid)) hi = mid; else lo = mid;
  }
  return hi - 1;
}

/** Strict UTF-8 (a leading BOM is dropped): a lossy decode would silently evaluate U+FFFD instead of the data. */
function decodeText(path: string, bytes: Uint8Array): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    const at = firstInvalidUtf8(bytes);
    throw new RwkvInputError(path, at === null ? "not valid UTF-8 (the file ends inside a multi-byte character)" : `not valid UTF-8 (bad byte 0x${bytes[at].toString(16).padStart(2, "0")} at offset ${at})`);
  }
}

function describe(v: unknown): string {
  return v === null ? "null" : Array.isArray(v) ? "a list" : typeof v === "object" ? "an object" : `a ${typeof v}`;
}

/** A JSON list of non-empty strings (the uncheatable_eval data files). */
function parseDocumentList(path: string, text: string): string[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new RwkvInputError(path, `not valid JSON (${(e as Error).message.split("\n")[0]})`);
  }
  if (!Array.isArray(data)) throw new RwkvInputError(path, `expected a JSON list of strings (documents), got ${describe(data)}`);
  if (data.length === 0) throw new RwkvInputError(path, "the list of documents is empty");
  data.forEach((d: unknown, i) => {
    if (typeof d !== "string") throw new RwkvInputError(path, `expected a JSON list of strings, but item ${i} is ${describe(d)}`);
    if (d.length === 0) throw new RwkvInputError(path, `document ${i} is an empty string`);
  });
  return data as string[];
}

/** LAMBADA's .jsonl: one {"text": "..."} per line; blank lines are skipped. */
function parseLambadaLines(path: string, text: string): string[] {
  const items: string[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line === "") return;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (e) {
      throw new RwkvInputError(path, `line ${i + 1}: not valid JSON (${(e as Error).message.split("\n")[0]})`);
    }
    const t = typeof obj === "object" && obj !== null && !Array.isArray(obj) ? (obj as Record<string, unknown>).text : undefined;
    if (typeof t !== "string") throw new RwkvInputError(path, `line ${i + 1}: expected an object {"text": string}, got ${describe(obj)}${typeof obj === "object" && obj !== null && !Array.isArray(obj) ? " without a string \"text\"" : ""}`);
    if (t.trim() === "") throw new RwkvInputError(path, `line ${i + 1}: empty text`);
    items.push(t);
  });
  if (items.length === 0) throw new RwkvInputError(path, "no items (the file has only blank lines)");
  return items;
}

function chooseMethod(values: Values): { method: Method; file: string } {
  const given = METHODS.filter((m) => values[m] !== undefined);
  if (given.length !== 1) {
    throw new UsageError(`give exactly one of ${METHODS.map((m) => `--${m} FILE`).join(", ")}${given.length ? ` (got ${given.map((m) => `--${m}`).join(", ")})` : ""}`);
  }
  const method = given[0];
  return { method, file: str(values, method) as string };
}

function tokenizerKind(values: Values): TokenizerKind | undefined {
  const kind = str(values, "tokenizer-kind");
  if (kind !== undefined && kind !== "world" && kind !== "20b" && kind !== "bytes") {
    throw new UsageError(`--tokenizer-kind must be world, 20b or bytes, got "${kind}"`);
  }
  return kind;
}

function backendName(values: Values): string | undefined {
  const name = str(values, "backend");
  // Checked here: an unknown name is a usage mistake, not a bug worth a stack trace.
  if (name !== undefined && !knownBackends().includes(name)) {
    throw new UsageError(`--backend must be one of ${knownBackends().join(", ")}, got "${name}"`);
  }
  return name;
}

/** Flags that only make sense with some methods are rejected elsewhere rather than ignored. */
function checkFlagsFit(method: Method, values: Values, pieceLen: number): void {
  if (method === "text" && values.limit !== undefined) throw new UsageError("--limit applies to --json, --uncheatable and --lambada, not --text");
  if (method === "lambada" && values["piece-len"] !== undefined) throw new UsageError("--piece-len does not apply to --lambada (each item is one forward)");
  if (method !== "json" && values["carry-state"]) throw new UsageError("--carry-state applies only to --json");
  if (method === "uncheatable" && pieceLen < 2) throw new UsageError("--piece-len must be at least 2 for --uncheatable (a piece's first token is not scored)");
}

export async function evalCommand(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parse(args, {
    text: { type: "string" }, json: { type: "string" }, uncheatable: { type: "string" }, lambada: { type: "string" },
    "piece-len": { type: "string" }, limit: { type: "string" }, "carry-state": { type: "boolean" }, output: { type: "string" },
    tokenizer: { type: "string" }, "tokenizer-kind": { type: "string" }, ...MODEL_OPTIONS,
  }, ["[MODEL]"]);
  const { method, file } = chooseMethod(values);
  const pieceLen = positiveInt(values, "piece-len", DEFAULT_PIECE_LEN);
  const limit = values.limit === undefined ? null : positiveInt(values, "limit", 0);
  checkFlagsFit(method, values, pieceLen);
  const kind = tokenizerKind(values);
  const load: LoadOptions = { ...modelLoadOptions(values, args), onNote: (t) => io.stderr(`note: ${t}\n`), backend: backendName(values) };
  const output = str(values, "output");
  const carryState = values["carry-state"] === true;

  // The input is checked before the model is loaded: a bad file should fail fast.
  const text = decodeText(file, readInput(file));
  const all = method === "text" ? [text] : method === "lambada" ? parseLambadaLines(file, text) : parseDocumentList(file, text);
  const docs = limit === null ? all : all.slice(0, limit);
  // Checked now, written at the end: an unwritable --output should not be found after a long run,
  // and a failed run should leave no empty or truncated file behind.
  if (output !== undefined) checkWritable(output);
  return evaluate(io, { method, file, docs, modelPath: modelPathFor(positionals[0], config), tokenizerPath: str(values, "tokenizer"), kind, load, pieceLen, carryState, limit }, (json) => {
    if (output === undefined) return;
    try {
      writeFileSync(output, json);
    } catch (e) {
      throw cannotWrite(output, e);
    }
  });
}

function cannotWrite(path: string, e: unknown): RwkvInputError {
  return new RwkvInputError(path, `cannot write the result (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
}

/** An existing writable file, or a new name in an existing writable directory. */
function checkWritable(path: string): void {
  try {
    if (existsSync(path)) {
      if (statSync(path).isDirectory()) throw new RwkvInputError(path, "cannot write the result (is a directory)");
      accessSync(path, constants.W_OK);
    } else {
      accessSync(dirname(path), constants.W_OK);
    }
  } catch (e) {
    throw e instanceof RwkvInputError ? e : cannotWrite(path, e);
  }
}

interface EvalJob {
  readonly method: Method;
  readonly file: string;
  readonly docs: readonly string[];
  readonly modelPath: string;
  readonly tokenizerPath: string | undefined;
  readonly kind: TokenizerKind | undefined;
  readonly load: LoadOptions;
  readonly pieceLen: number;
  readonly carryState: boolean;
  readonly limit: number | null;
}

/** Loads the model, runs the method with progress and Ctrl-C handling, prints the JSON result. */
async function evaluate(io: CliIO, job: EvalJob, alsoWrite: (json: string) => void): Promise<number> {
  const { method, file, docs, modelPath, tokenizerPath, kind, load, pieceLen, carryState, limit } = job;

  const model = await loadModel(modelPath, load);
  const tokenizer = loadTokenizer({ kind, vocabSize: model.config.vocabSize, path: tokenizerPath, modelPath });

  const progress = new Progress({ label: `eval ${method}`, unit: PROGRESS_UNIT, write: (t) => io.stderr(t), tty: process.stderr.isTTY === true, columns: process.stderr.columns });
  let fed = 0;
  const onProgress = (done: number, total: number) => { fed = done; progress.update(done, total); };
  // Ctrl-C stops at the next forward boundary with a clean message instead of killing mid-write.
  const controller = new AbortController();
  const onSigint = () => controller.abort(new RwkvInputError("eval", "interrupted"));
  process.once("SIGINT", onSigint);
  const started = performance.now();
  let figures: PerplexityResult | LambadaResult;
  try {
    const callbacks = { onProgress, signal: controller.signal };
    figures = method === "lambada" ? await evaluateLambada(model, tokenizer, docs, callbacks)
      : method === "uncheatable" ? await evaluateUncheatable(model, tokenizer, docs, { ...callbacks, pieceLen })
        : await evaluateDocuments(model, tokenizer, docs, { ...callbacks, pieceLen, carryState });
  } catch (e) {
    progress.clear();
    if (controller.signal.aborted) {
      io.stderr(`rwkv: eval interrupted after ${fed} tokens\n`);
      return EXIT_INTERRUPTED;
    }
    throw e;
  } finally {
    process.removeListener("SIGINT", onSigint);
  }
  progress.finish();
  const seconds = (performance.now() - started) / MS_PER_S;
  if ("scoredTokens" in figures && figures.scoredTokens === 0) {
    throw new RwkvInputError(file, "nothing to score (every document is a single token)");
  }

  const result = {
    model: modelPath,
    modelVersion: model.config.version,
    ...(load.matrices ? { matrices: load.matrices } : {}),
    method: method === "text" || method === "json" ? "documents" : method,
    input: file,
    inputKind: method,
    tokenizer: tokenizer.name,
    ...(method === "lambada" ? {} : { pieceLen }),
    ...(method === "json" ? { carryState } : {}),
    limit,
    ...figures,
    elapsedSeconds: seconds,
    tokensPerSecond: fed / seconds,
  };
  const json = JSON.stringify(result, null, 2) + "\n";
  io.stdout(json);
  alsoWrite(json);
  return 0;
}
