import { adapterKinds, DEFAULT_LORA_ALPHA } from "../../core/adapters/adapter.js";
import { AI00_METADATA, toAi00 } from "../../core/adapters/ai00.js";
import { safetensorsF16 } from "../../core/adapters/write.js";
import { openAdapter } from "../adapters.js";
import { checkWritableTarget, writeFileAtomic } from "../atomic-write.js";
import { type CliIO, parse, str, UsageError } from "../cli-util.js";

export const CONVERT_ADAPTER_USAGE = `convert-adapter IN OUT --to ai00   write a LoRA adapter (RWKV-PEFT .pth/.safetensors, peft dir) for ai00/web-rwkv
      --to ai00             f16 safetensors as ai00's convert_safetensors.py makes it (load back with --lora OUT:ALPHA)`;

/** Target formats of convert-adapter. */
const TARGETS = ["ai00"] as const;

export async function convertAdapterCommand(args: string[], io: CliIO): Promise<number> {
  const { values, positionals } = parse(args, { to: { type: "string" } }, ["IN", "OUT"]);
  if (positionals.length !== 2) throw new UsageError("expected IN OUT");
  const to = str(values, "to");
  if (to === undefined) throw new UsageError(`--to is required (one of ${TARGETS.join(", ")})`);
  if (!(TARGETS as readonly string[]).includes(to)) throw new UsageError(`--to must be one of ${TARGETS.join(", ")}, got "${to}"`);
  const [input, output] = positionals;
  checkWritableTarget(output);
  const { adapter, close } = openAdapter({ path: input });
  try {
    const tensors = toAi00(adapter);
    const r = await writeFileAtomic(output, [safetensorsF16(tensors, AI00_METADATA)]);
    const lora = tensors.filter((t) => t.name.endsWith(".lora.0"));
    io.stdout(`wrote ${output} (ai00 LoRA, f16, ${tensors.length} tensors: ${adapterKinds(adapter).join(", ")}, ${r.bytes.toLocaleString("en-US")} bytes)\n`);
    // web-rwkv scales by alpha / r like RWKV-PEFT, but the file carries no alpha: ai00's config must.
    if (lora.length > 0) {
      io.stdout(adapter.alpha !== undefined
        ? `ai00: give this file alpha = ${adapter.alpha} (from ${input}'s config)\n`
        : `ai00: give this file the alpha it was trained with (not stored in ${input}; rwkv train's default is ${DEFAULT_LORA_ALPHA})\n`);
    }
    return 0;
  } finally {
    close();
  }
}
