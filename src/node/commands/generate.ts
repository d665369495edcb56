import { readFileSync } from "node:fs";
import { RwkvInputError } from "../../core/errors.js";
import { generate, type GenerateInput } from "../../core/generate.js";
import { constraintFromFiles } from "./constraint-flags.js";
import type { State } from "../../core/model/state.js";
import { type PenaltyOptions, Penalties, Rng, type SamplerOptions } from "../../core/sampling.js";
import type { Tokenizer } from "../../core/tokenizer/types.js";
import { type CliIO, numberIn, type Options, parse, positiveInt, str, UsageError, type Values, modelLoadOptions, MODEL_OPTIONS } from "../cli-util.js";
import { DEFAULT_MODEL_NAME } from "../default-model.js";
import { type CliConfig, modelPathFor } from "../model-arg.js";
import { loadModel } from "../load.js";
import { loadStartState, saveStateFile } from "../state-io.js";
import { loadTokenizer, type TokenizerKind } from "../tokenizer.js";

export const GENERATE_USAGE = `generate [MODEL] (--prompt TEXT | --prompt-file F)   sample a continuation, streamed to stdout
      MODEL defaults to the bundled ${DEFAULT_MODEL_NAME} (trained by rwkv train, see models/README.md)
      --max-tokens N (100)  --seed N (0)  --temperature T (1.0)  --top-p P (0.85)  --top-k K (0)  --min-p P (0)
      --presence-penalty A (0.2)  --frequency-penalty A (0.2)  --penalty-decay D (0.996)
      --logit-bias ID:BIAS  --ban ID  --stop TEXT  --stop-token ID   (each may repeat)
      --greedy              argmax decoding, no penalties
      --json-schema FILE    output is compact JSON valid against the JSON Schema in FILE
      --grammar FILE        output follows the GBNF grammar in FILE (llama.cpp's format, rule root)
      --state-in FILE       start from a saved state, or a v6/v7 state-tuning checkpoint (time_state)
      --state-out FILE      save the state after the output (continue later with --state-in)
      --tokenizer PATH  --tokenizer-kind world|20b|bytes  --chunk-len N (256)
      --backend NAME  --threads N (all cores)  --int8 (quantize matrices to int8 at load)  --no-verify (skip CRC/NaN checks)
      --lora PATH[:ALPHA]  --pissa PATH:INIT  --disha PATH   merge adapters at load (repeatable, in order)`;

/** Options shared by the commands that sample (generate, chat). */
export const SAMPLING_OPTIONS: Options = {
  "max-tokens": { type: "string" }, seed: { type: "string" }, temperature: { type: "string" }, "top-p": { type: "string" },
  "top-k": { type: "string" }, "min-p": { type: "string" }, "presence-penalty": { type: "string" },
  "frequency-penalty": { type: "string" }, "penalty-decay": { type: "string" }, "logit-bias": { type: "string", multiple: true },
  ban: { type: "string", multiple: true }, stop: { type: "string", multiple: true }, "stop-token": { type: "string", multiple: true },
  greedy: { type: "boolean" }, tokenizer: { type: "string" }, "tokenizer-kind": { type: "string" }, ...MODEL_OPTIONS,
  "chunk-len": { type: "string" },
};

export interface SamplingSettings {
  maxTokens: number;
  seed: number;
  sampler: SamplerOptions;
  penalties: PenaltyOptions;
  stop: string[];
  stopTokens: number[];
  chunkLen: number;
}

const list = (v: Values, name: string): string[] => (v[name] as string[] | undefined) ?? [];

function tokenId(name: string, s: string): number {
  if (!/^\d+$/.test(s)) throw new UsageError(`--${name} needs a token id, got "${s}"`);
  return Number(s);
}

/** Reads the sampling flags into typed settings, with the official ChatRWKV defaults. */
export function samplingSettings(v: Values): SamplingSettings {
  const greedy = v.greedy === true;
  const seedText = str(v, "seed");
  if (seedText !== undefined && !/^-?\d+$/.test(seedText)) throw new UsageError(`--seed must be an integer, got "${seedText}"`);
  const bias = new Map<number, number>();
  for (const item of list(v, "logit-bias")) {
    const m = /^(\d+):(-?[\d.]+(?:e-?\d+)?)$/.exec(item);
    if (!m || !Number.isFinite(Number(m[2]))) throw new UsageError(`--logit-bias must be ID:BIAS, got "${item}"`);
    bias.set(Number(m[1]), Number(m[2]));
  }
  return {
    maxTokens: positiveInt(v, "max-tokens", 100),
    seed: seedText === undefined ? 0 : Number(seedText),
    sampler: greedy ? { temperature: 0, topK: 1 } : {
      temperature: numberIn(v, "temperature", 1.0, 0, 100), topP: numberIn(v, "top-p", 0.85, 0, 1),
      topK: numberIn(v, "top-k", 0, 0, 1e9), minP: numberIn(v, "min-p", 0, 0, 1),
    },
    penalties: {
      presencePenalty: greedy ? 0 : numberIn(v, "presence-penalty", 0.2, -100, 100),
      frequencyPenalty: greedy ? 0 : numberIn(v, "frequency-penalty", 0.2, -100, 100),
      penaltyDecay: numberIn(v, "penalty-decay", 0.996, 0, 1),
      logitBias: bias, bannedTokens: list(v, "ban").map((s) => tokenId("ban", s)),
    },
    stop: list(v, "stop"),
    stopTokens: list(v, "stop-token").map((s) => tokenId("stop-token", s)),
    chunkLen: positiveInt(v, "chunk-len", 256),
  };
}

export function tokenizerFor(v: Values, vocabSize: number, modelPath: string): Tokenizer {
  const kind = str(v, "tokenizer-kind");
  if (kind !== undefined && kind !== "world" && kind !== "20b" && kind !== "bytes") {
    throw new UsageError(`--tokenizer-kind must be world, 20b or bytes, got "${kind}"`);
  }
  return loadTokenizer({ kind: kind as TokenizerKind | undefined, vocabSize, path: str(v, "tokenizer"), modelPath });
}

/** Reads a UTF-8 text file, refusing invalid UTF-8 rather than silently replacing bytes. */
export function readUtf8(path: string): string {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RwkvInputError(path, code === "ENOENT" ? "no such file" : code === "EISDIR" ? "is a directory" : `cannot read (${code})`);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new RwkvInputError(path, "is not valid UTF-8 text");
  }
}

/** What a state file carries besides the state, to continue exactly where it stopped. */
interface GenerationExtra { rng: ReturnType<Rng["toJSON"]>; penalties: ReturnType<Penalties["toJSON"]> }

export async function generateCommand(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parse(args, {
    ...SAMPLING_OPTIONS, prompt: { type: "string" }, "prompt-file": { type: "string" },
    "state-in": { type: "string" }, "state-out": { type: "string" }, "json-schema": { type: "string" }, grammar: { type: "string" },
  }, ["[MODEL]"]);
  const settings = samplingSettings(values);
  const promptArg = str(values, "prompt"), promptFile = str(values, "prompt-file");
  if (promptArg !== undefined && promptFile !== undefined) throw new UsageError("give --prompt or --prompt-file, not both");
  const prompt = promptFile !== undefined ? readUtf8(promptFile) : promptArg;
  const stateIn = str(values, "state-in"), stateOut = str(values, "state-out");
  if (prompt === undefined && stateIn === undefined) throw new UsageError("--prompt TEXT (or --prompt-file F, or --state-in FILE) is required");
  if (prompt === "" && stateIn === undefined) throw new UsageError(`${promptFile !== undefined ? `--prompt-file ${promptFile}` : "--prompt"} is empty`);

  const modelPath = modelPathFor(positionals[0], config);
  const model = await loadModel(modelPath, { ...modelLoadOptions(values, args), onNote: (t) => io.stderr(`note: ${t}\n`) });
  const tokenizer = tokenizerFor(values, model.config.vocabSize, modelPath);
  const grammar = constraintFromFiles(str(values, "json-schema"), str(values, "grammar"), tokenizer, Math.min(tokenizer.vocabSize, model.config.vocabSize));
  const input: { prompt: number[]; state?: State; logits?: Float32Array } = { prompt: tokenizer.encode(prompt ?? "") };
  let rng = new Rng(settings.seed);
  let penaltyState: Penalties | undefined;
  let seen = 0;
  if (stateIn !== undefined) {
    const start = loadStartState(stateIn, model);
    if (start.kind === "state") {
      input.state = start.file.state;
      input.logits = start.file.logits ?? undefined;
      seen = start.file.tokens;
      const extra = start.file.extra as Partial<GenerationExtra> | null;
      // Continue the saved random stream and penalty counts unless a new seed was asked for.
      if (extra?.rng && values.seed === undefined) rng = Rng.fromJSON(extra.rng);
      if (extra?.penalties) penaltyState = Penalties.fromJSON(settings.penalties, (ids) => tokenizer.decode(ids), extra.penalties);
    }
  }
  if (input.prompt.length === 0 && !input.logits) {
    throw new UsageError(prompt ? "--prompt encodes to no tokens" : `${stateIn} has no next-token logits: give a --prompt`);
  }
  // World and 20B vocabularies end a document with token 0; byte-level models have no such token.
  const stopTokens = tokenizer.name === "bytes" ? settings.stopTokens : [0, ...settings.stopTokens];
  const it = generate(model, tokenizer, input as GenerateInput, {
    maxTokens: settings.maxTokens, sampler: settings.sampler, penalties: settings.penalties, rng, penaltyState,
    stop: settings.stop, stopTokens, chunkLen: settings.chunkLen, grammar,
  });
  for (;;) {
    const r = await it.next();
    if (!r.done) { io.stdout(r.value.text); continue; }
    io.stdout("\n");
    if (stateOut !== undefined) {
      const res = r.value;
      // Feed the last sampled token too, so the saved state covers all the output.
      const state = res.state;
      const logits = res.unfed.length ? await model.forward(res.unfed, state) : res.logits;
      const extra: GenerationExtra = { rng: res.rng.toJSON(), penalties: res.penalties.toJSON() };
      await saveStateFile(stateOut, model, state, logits, seen + res.promptTokens + res.tokens.length, extra);
    }
    return 0;
  }
}
