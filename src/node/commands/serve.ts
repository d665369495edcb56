import { basename, extname } from "node:path";
import { type CliIO, numberIn, parse, positiveInt, str, UsageError, type Values, modelLoadOptions, MODEL_OPTIONS } from "../cli-util.js";
import { loadModel } from "../load.js";
import { type CliConfig, modelPathFor } from "../model-arg.js";
import { type ChatNames, DEFAULT_CHAT_NAMES } from "../server/chat-format.js";
import { type CorsOptions, parseCorsOrigins } from "../server/cors.js";
import { RwkvServer, SERVER_DEFAULTS } from "../server/server.js";
import { STATE_STORE_OPTIONS, STATE_STORE_USAGE, stateStoreFromFlags } from "../state-store/cli.js";
import { tokenizerFor } from "./generate.js";
import { loadServedAdapters } from "../server/adapter-loading.js";

const D = SERVER_DEFAULTS;
/** Seconds in-flight requests get to finish after SIGTERM/SIGINT before they are cancelled. */
const DEFAULT_GRACE_S = 30;
const MAX_PORT = 65535;
const BYTES_PER_MB = 1024 * 1024;
const MS_PER_S = 1000;
/** Where the key may come from instead of the command line (which other users can read in `ps`). */
const API_KEY_ENV = "RWKV_API_KEY";

export const SERVE_USAGE = `serve [MODEL]                OpenAI-compatible HTTP server (/v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings)
      --host H (${D.host})  --port N (${D.port}, 0 = any free port)  --model-name NAME (file name)
      --slots N (${D.slots}) requests decoded together  --queue N (${D.queue}) waiting requests, more get 429
      --cache-mb N (${D.cacheMb}) prefix-state cache  --api-key KEY (or env ${API_KEY_ENV}): require Bearer KEY
      --max-prompt-tokens N (${D.maxPromptTokens})  --max-tokens-limit N (${D.maxTokensLimit})  --body-limit BYTES (${D.bodyLimit})
      --user-name U --assistant-name A --system-name S  chat speaker names (User, Assistant, System)
      --penalty-decay D (${D.penaltyDecay})  --prefill-chunk N (${D.prefillChunk})  --shutdown-grace S (${DEFAULT_GRACE_S})  --log-requests
      --cors ORIGIN[,ORIGIN...]  let web pages from these origins call the API ("*": any; off by default;
                            --api-key is still required from them)
      --tokenizer PATH  --tokenizer-kind world|20b|bytes  --backend NAME
      --adapter NAME=PATH[:ALPHA]  serve MODEL with an adapter too, as model "<model-name>+NAME" (repeatable;
                                   LoRA and state tuning kept unmerged in the one model, others merged)
      --pissa-adapter NAME=ADAPTER:INIT  the same for a PiSSA adapter and its init_lora file (kept unmerged)
${STATE_STORE_USAGE}`;

/** An integer in [min, max] (positiveInt refuses 0, which --port and --queue allow). */
function intIn(values: Values, name: string, dflt: number, min: number, max: number): number {
  const v = numberIn(values, name, dflt, min, max);
  if (!Number.isSafeInteger(v)) throw new UsageError(`--${name} must be an integer, got "${String(values[name])}"`);
  return v;
}

function speaker(values: Values, name: string, dflt: string): string {
  const v = str(values, name) ?? dflt;
  // A name with a newline or a colon would break the turn structure the model was trained on.
  if (v.trim() === "" || /[\n\r:]/.test(v)) throw new UsageError(`--${name} must be a non-empty name without newlines or colons, got ${JSON.stringify(v)}`);
  return v;
}

export async function serveCommand(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parse(args, {
    host: { type: "string" }, port: { type: "string" }, slots: { type: "string" }, queue: { type: "string" },
    "cache-mb": { type: "string" }, "api-key": { type: "string" }, "model-name": { type: "string" },
    "max-prompt-tokens": { type: "string" }, "max-tokens-limit": { type: "string" }, "body-limit": { type: "string" },
    "user-name": { type: "string" }, "assistant-name": { type: "string" }, "system-name": { type: "string" },
    "penalty-decay": { type: "string" }, "prefill-chunk": { type: "string" }, "shutdown-grace": { type: "string" },
    "log-requests": { type: "boolean" }, cors: { type: "string" }, tokenizer: { type: "string" }, "tokenizer-kind": { type: "string" }, ...MODEL_OPTIONS,
    ...STATE_STORE_OPTIONS, adapter: { type: "string", multiple: true }, "pissa-adapter": { type: "string", multiple: true },
  }, ["[MODEL]"]);
  const modelPath = modelPathFor(positionals[0], config);
  const names: ChatNames = {
    user: speaker(values, "user-name", DEFAULT_CHAT_NAMES.user),
    assistant: speaker(values, "assistant-name", DEFAULT_CHAT_NAMES.assistant),
    system: speaker(values, "system-name", DEFAULT_CHAT_NAMES.system),
  };
  const modelName = str(values, "model-name") ?? basename(modelPath, extname(modelPath));
  if (modelName === "") throw new UsageError("--model-name must not be empty");
  const apiKey = str(values, "api-key") ?? process.env[API_KEY_ENV];
  const settings = {
    host: str(values, "host") ?? D.host,
    port: intIn(values, "port", D.port, 0, MAX_PORT),
    slots: positiveInt(values, "slots", D.slots),
    queue: intIn(values, "queue", D.queue, 0, Number.MAX_SAFE_INTEGER),
    cacheBytes: Math.floor(numberIn(values, "cache-mb", D.cacheMb, 0, Number.MAX_SAFE_INTEGER / BYTES_PER_MB) * BYTES_PER_MB),
    maxPromptTokens: positiveInt(values, "max-prompt-tokens", D.maxPromptTokens),
    maxTokensLimit: positiveInt(values, "max-tokens-limit", D.maxTokensLimit),
    bodyLimit: positiveInt(values, "body-limit", D.bodyLimit),
    penaltyDecay: numberIn(values, "penalty-decay", D.penaltyDecay, 0, 1),
    prefillChunk: positiveInt(values, "prefill-chunk", D.prefillChunk),
  };
  const corsText = str(values, "cors");
  let cors: CorsOptions | undefined;
  try {
    cors = corsText === undefined ? undefined : { origins: parseCorsOrigins(corsText) };
  } catch (e) {
    throw new UsageError(`--cors ${(e as Error).message}`);
  }
  const graceMs = numberIn(values, "shutdown-grace", DEFAULT_GRACE_S, 0, Number.MAX_SAFE_INTEGER / MS_PER_S) * MS_PER_S;

  const loadOptions = { ...modelLoadOptions(values, args), onNote: (t: string) => io.stderr(`note: ${t}\n`) };
  const model = await loadModel(modelPath, loadOptions);
  const adapters = await loadServedAdapters(model, modelPath, loadOptions, (values.adapter as string[] | undefined) ?? [], loadOptions.onNote,
    (values["pissa-adapter"] as string[] | undefined) ?? []);
  const tokenizer = tokenizerFor(values, model.config.vocabSize, modelPath);
  const stateStore = await stateStoreFromFlags(values, model, { matrices: loadOptions.matrices ?? "compact" }, settings.cacheBytes, io);
  const server = new RwkvServer({
    ...settings, model, adapters, tokenizer, modelName, apiKey: apiKey || undefined, chatNames: names, cors, stateStore: stateStore ?? undefined,
    log: values["log-requests"] === true ? (line) => io.stderr(`${line}\n`) : undefined,
  });
  const { host, port } = await server.listen();
  const hostText = host.includes(":") ? `[${host}]` : host;
  io.stderr(`rwkv serve: listening on http://${hostText}:${port} (model "${modelName}", ${settings.slots} slots, queue ${settings.queue}` +
    `${apiKey ? ", API key required" : ""}${cors ? `, CORS for ${cors.origins.join(", ")}` : ""})\n`);

  // SIGTERM/SIGINT: stop accepting, let requests finish (up to the grace period), exit 0.
  // A second signal cancels whatever is still running.
  await new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        io.stderr(`rwkv serve: ${signal} again: cancelling the remaining requests\n`);
        server.scheduler.cancelAll("shutdown");
        return;
      }
      stopping = true;
      io.stderr(`rwkv serve: ${signal}: finishing ${server.scheduler.activeCount + server.scheduler.queuedCount} requests (grace ${graceMs / MS_PER_S} s)\n`);
      void server.shutdown(graceMs).then(({ cancelled }) => {
        process.off("SIGTERM", onSignal);
        process.off("SIGINT", onSignal);
        io.stderr(`rwkv serve: stopped${cancelled ? ` (${cancelled} requests cancelled after the grace period)` : ""}\n`);
        void (stateStore?.close() ?? Promise.resolve()).then(() => resolve());
      });
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
  return 0;
}
