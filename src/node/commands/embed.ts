import { DEFAULT_EMBED_CHUNK, DEFAULT_POOLING, embedTokens, type Pooling, POOLINGS } from "../../core/embedding.js";
import { type CliIO, modelLoadOptions, MODEL_OPTIONS, parse, positiveInt, str, UsageError } from "../cli-util.js";
import { loadModel } from "../load.js";
import { type CliConfig, modelPathFor } from "../model-arg.js";
import { readUtf8, tokenizerFor } from "./generate.js";

export const EMBED_USAGE = `embed [MODEL] (--text TEXT ... | --input-file F)   text embeddings, one JSON line per input to stdout
      the mean of the final hidden state (after ln_out) over the tokens, unit length; dimension = model width
      --text TEXT (may repeat)  --input-file F (one input per non-empty line)  --pooling mean|last (${DEFAULT_POOLING})
      --unnormalized (keep the pooled length)  --chunk-len N (${DEFAULT_EMBED_CHUNK})
      --tokenizer PATH  --tokenizer-kind world|20b|bytes  --backend NAME  --threads N  --int8`;

export async function embedCommand(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parse(args, {
    text: { type: "string", multiple: true }, "input-file": { type: "string" }, pooling: { type: "string" }, unnormalized: { type: "boolean" },
    "chunk-len": { type: "string" }, tokenizer: { type: "string" }, "tokenizer-kind": { type: "string" }, ...MODEL_OPTIONS,
  }, ["[MODEL]"]);
  const texts = (values.text as string[] | undefined) ?? [];
  const file = str(values, "input-file");
  if (texts.length > 0 && file !== undefined) throw new UsageError("give --text or --input-file, not both");
  const inputs = file !== undefined ? readUtf8(file).split(/\r?\n/).filter((l) => l.trim() !== "") : texts;
  if (inputs.length === 0) throw new UsageError(file !== undefined ? `--input-file ${file} has no non-empty lines` : "--text TEXT (or --input-file F) is required");
  const pooling = str(values, "pooling") ?? DEFAULT_POOLING;
  if (!(POOLINGS as readonly string[]).includes(pooling)) throw new UsageError(`--pooling must be ${POOLINGS.join(" or ")}, got "${pooling}"`);
  const chunkLen = positiveInt(values, "chunk-len", DEFAULT_EMBED_CHUNK);

  const modelPath = modelPathFor(positionals[0], config);
  const model = await loadModel(modelPath, modelLoadOptions(values));
  const tokenizer = tokenizerFor(values, model.config.vocabSize, modelPath);
  // Every input is checked before the first is embedded: a bad line fails fast, with nothing printed.
  const encoded = inputs.map((text, i) => {
    const tokens = tokenizer.encode(text);
    if (tokens.length === 0) throw new UsageError(`${file !== undefined ? `${file} line ${i + 1}` : `--text #${i + 1}`} encodes to no tokens`);
    return tokens;
  });
  for (const [index, tokens] of encoded.entries()) {
    const v = await embedTokens(model, tokens, { pooling: pooling as Pooling, normalize: values.unnormalized !== true, chunkLen });
    io.stdout(JSON.stringify({ index, tokens: tokens.length, dimension: v.length, embedding: Array.from(v) }) + "\n");
  }
  return 0;
}
