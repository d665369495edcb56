import { parseArgs, type ParseArgsConfig } from "node:util";
import { RwkvInputError } from "../core/errors.js";
import { argmax } from "../core/generate.js";
import { StreamDecoder } from "../core/tokenizer/stream.js";
import { describeCheckpoint } from "./inspect.js";
import { loadCheckpoint, loadModel } from "./load.js";
import { loadTokenizer, type TokenizerKind } from "./tokenizer.js";

const USAGE = `usage: rwkv <command> [options]

commands:
  info MODEL [--json]                  format, version, sizes, parameter count, tensor dtypes
  generate MODEL --prompt TEXT         greedy continuation of TEXT, streamed to stdout
      --max-tokens N                   tokens to generate (default 100)
      --tokenizer PATH                 World vocab (rwkv_vocab_v20230424.txt) or 20B_tokenizer.json
      --tokenizer-kind world|20b|bytes override the choice made from the vocabulary size
      --backend NAME                   kernel backend (default: best available)

MODEL is a .pth, .safetensors or rwkv.cpp .bin file (the format is read from its content).`;

/** Where the CLI writes: the process's streams, or a buffer in tests. */
export interface CliIO {
  stdout(text: string): void;
  stderr(text: string): void;
}

const processIO: CliIO = { stdout: (t) => process.stdout.write(t), stderr: (t) => process.stderr.write(t) };

/** A mistake in how the CLI was called: printed with the usage hint. */
class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig["options"]>;

function parse(args: string[], options: Options, positionals: string[]) {
  let parsed;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (parsed.positionals.length !== positionals.length) {
    throw new UsageError(`expected ${positionals.join(" ")}, got ${parsed.positionals.length ? parsed.positionals.join(" ") : "nothing"}`);
  }
  return { values: parsed.values as Record<string, string | boolean | undefined>, positionals: parsed.positionals };
}

function positiveInt(name: string, v: string | boolean | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (typeof v !== "string" || !/^\d+$/.test(v) || !Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`--${name} must be a positive integer, got "${String(v)}"`);
  }
  return n;
}

function info(args: string[], io: CliIO): void {
  const { values, positionals } = parse(args, { json: { type: "boolean" } }, ["MODEL"]);
  const { checkpoint, close } = loadCheckpoint(positionals[0]);
  try {
    const d = describeCheckpoint(checkpoint);
    if (values.json) {
      io.stdout(JSON.stringify(d, null, 2) + "\n");
      return;
    }
    const c = d.config;
    const lines = [
      `file        ${positionals[0]}`,
      `format      ${d.format}`,
      `version     RWKV-${c.version}`,
      `layers      ${c.nLayer}`,
      `width       ${c.nEmbd} (attention ${c.dimAtt}, ffn ${c.dimFfn})`,
      `heads       ${c.nHead} x ${c.headSize}`,
      `vocab       ${c.vocabSize}`,
      `parameters  ${d.parameters.toLocaleString("en-US")}`,
      `tensors     ${d.tensors} (${Object.entries(d.dtypes).map(([k, n]) => `${k}: ${n}`).join(", ")})`,
    ];
    for (const [k, v] of Object.entries(d.metadata)) lines.push(`meta        ${k} = ${v}`);
    io.stdout(lines.join("\n") + "\n");
  } finally {
    close();
  }
}

function generate(args: string[], io: CliIO): void {
  const { values, positionals } = parse(args, {
    prompt: { type: "string" }, "max-tokens": { type: "string" }, tokenizer: { type: "string" },
    "tokenizer-kind": { type: "string" }, backend: { type: "string" },
  }, ["MODEL"]);
  const prompt = values.prompt;
  if (typeof prompt !== "string") throw new UsageError("--prompt TEXT is required");
  if (prompt.length === 0) throw new UsageError("--prompt is empty");
  const maxTokens = positiveInt("max-tokens", values["max-tokens"], 100);
  const kind = values["tokenizer-kind"];
  if (kind !== undefined && kind !== "world" && kind !== "20b" && kind !== "bytes") {
    throw new UsageError(`--tokenizer-kind must be world, 20b or bytes, got "${String(kind)}"`);
  }
  const modelPath = positionals[0];
  const model = loadModel(modelPath, { backend: values.backend as string | undefined });
  const tokenizer = loadTokenizer({
    kind: kind as TokenizerKind | undefined, vocabSize: model.config.vocabSize,
    path: values.tokenizer as string | undefined, modelPath,
  });
  const ids = tokenizer.encode(prompt);
  if (ids.length === 0) throw new UsageError("--prompt encodes to no tokens");
  const state = model.initState();
  let logits = model.forward(ids, state); // the prompt in one parallel pass
  const out = new StreamDecoder(tokenizer);
  // Padded vocabularies (e.g. 50304 rows for 50277 tokens) have ids no tokenizer can decode: never pick them.
  const choosable = Math.min(tokenizer.vocabSize, model.config.vocabSize);
  for (let i = 0; i < maxTokens; i++) {
    const token = argmax(logits.subarray(0, choosable));
    io.stdout(out.push(token));
    if (i + 1 < maxTokens) logits = model.step(token, state);
  }
  io.stdout(out.flush() + "\n");
}

/** Runs one CLI command; returns the exit code (0 ok, 1 bad input, 2 bad usage). */
export function runCli(argv: string[], io: CliIO = processIO): number {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "info": info(rest, io); return 0;
      case "generate": generate(rest, io); return 0;
      case undefined: case "help": case "--help": case "-h":
        io.stdout(USAGE + "\n");
        return command === undefined ? 2 : 0;
      default: throw new UsageError(`unknown command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr(`rwkv: ${e.message}\nRun "rwkv help" for usage.\n`);
      return 2;
    }
    if (e instanceof RwkvInputError) {
      io.stderr(`rwkv: ${e.message}\n`);
      return 1;
    }
    throw e; // a bug: let Node print the stack trace
  }
}
