import { argmax } from "../../core/generate.js";
import { StreamDecoder } from "../../core/tokenizer/stream.js";
import { type CliIO, parse, positiveInt, str, UsageError } from "../cli-util.js";
import { loadModel } from "../load.js";
import { loadTokenizer, type TokenizerKind } from "../tokenizer.js";

export const GENERATE_USAGE = `generate MODEL --prompt TEXT         greedy continuation of TEXT, streamed to stdout
      --max-tokens N                   tokens to generate (default 100)
      --tokenizer PATH                 World vocab (rwkv_vocab_v20230424.txt) or 20B_tokenizer.json
      --tokenizer-kind world|20b|bytes override the choice made from the vocabulary size
      --backend NAME                   kernel backend (default: best available)`;

export function generateCommand(args: string[], io: CliIO): number {
  const { values, positionals } = parse(args, {
    prompt: { type: "string" }, "max-tokens": { type: "string" }, tokenizer: { type: "string" },
    "tokenizer-kind": { type: "string" }, backend: { type: "string" },
  }, ["MODEL"]);
  const prompt = str(values, "prompt");
  if (prompt === undefined) throw new UsageError("--prompt TEXT is required");
  if (prompt.length === 0) throw new UsageError("--prompt is empty");
  const maxTokens = positiveInt(values, "max-tokens", 100);
  const kind = str(values, "tokenizer-kind");
  if (kind !== undefined && kind !== "world" && kind !== "20b" && kind !== "bytes") {
    throw new UsageError(`--tokenizer-kind must be world, 20b or bytes, got "${kind}"`);
  }
  const modelPath = positionals[0];
  const model = loadModel(modelPath, { backend: str(values, "backend") });
  const tokenizer = loadTokenizer({ kind: kind as TokenizerKind | undefined, vocabSize: model.config.vocabSize, path: str(values, "tokenizer"), modelPath });
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
  return 0;
}
