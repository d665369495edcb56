import { adapterKinds, DEFAULT_LORA_ALPHA } from "../../core/adapters/adapter.js";
import { mergeAdapters } from "../../core/adapters/merge.js";
import { type AdapterSpec, openAdapter, parsePissaFlag } from "../adapters.js";
import { type CliIO, numberIn, parse, str, UsageError } from "../cli-util.js";
import { CONVERT_DTYPES, type ConvertDType, convertModel, outputFormat } from "./convert.js";


export const MERGE_USAGE = `merge BASE ADAPTER... OUT [--dtype T]   write BASE with adapters merged in (RWKV-PEFT LoRA/DiSHA/state/full tensors, peft dirs)
      --alpha A             LoRA alpha of the ADAPTER files (${DEFAULT_LORA_ALPHA}; a peft directory's own config wins)
      --pissa PATH:INIT     a PiSSA adapter and its init_lora file (repeatable, merged after the ADAPTERs)
      --dtype f32|f16|bf16|q8_0|q5_1|q5_0|q4_1|q4_0 (f32)  --format pth|safetensors|rwkv.cpp|gguf (from OUT)`;

/** Adapters a command line may name: enough for any real stack, bounded so parse() can list them. */
const MAX_ADAPTERS = 32;

export async function mergeCommand(args: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(args, {
    dtype: { type: "string" }, format: { type: "string" }, alpha: { type: "string" }, pissa: { type: "string", multiple: true },
  }, ["BASE", ...Array.from({ length: MAX_ADAPTERS }, () => "[ADAPTER]"), "OUT"]); // BASE OUT alone with --pissa
  const pissa = ((values.pissa as string[] | undefined) ?? []).map((p) => parsePissaFlag(p));
  if (positionals.length < 3 && pissa.length === 0) throw new UsageError("expected BASE ADAPTER... OUT");
  const base = positionals[0], output = positionals[positionals.length - 1];
  const alpha = values.alpha === undefined ? undefined : numberIn(values, "alpha", DEFAULT_LORA_ALPHA, Number.MIN_VALUE, 1e6);
  const specs: AdapterSpec[] = [...positionals.slice(1, -1).map((path) => ({ path, alpha })), ...pissa];
  if (specs.length === 0) throw new UsageError("expected at least one ADAPTER (or --pissa)");
  const dtypeText = str(values, "dtype") ?? "f32";
  if (!(CONVERT_DTYPES as readonly string[]).includes(dtypeText)) throw new UsageError(`--dtype must be one of ${CONVERT_DTYPES.join(", ")}, got "${dtypeText}"`);
  const format = outputFormat(output, str(values, "format"));
  const opened = specs.map((s) => openAdapter(s));
  try {
    const r = await convertModel(base, output, {
      dtype: dtypeText as ConvertDType, format, note: (t) => io.stderr(t),
      transform: (ckpt) => {
        const merged = mergeAdapters(ckpt, opened.map((o) => o.adapter));
        for (const n of merged.notes) io.stderr(`note: ${n}\n`);
        return merged.checkpoint;
      },
    });
    const kinds = opened.map((o) => `${o.adapter.source} (${adapterKinds(o.adapter).join(", ")})`).join(", ");
    io.stdout(`merged ${kinds} into ${base}\nwrote ${r.path} (${r.format}, ${r.dtype}, ${r.bytes.toLocaleString("en-US")} bytes)\n`);
    return 0;
  } finally {
    for (const o of opened) o.close();
  }
}
