import { parse, type CliIO } from "../cli-util.js";
import { describeCheckpoint } from "../inspect.js";
import { loadCheckpoint } from "../load.js";
import { type CliConfig, modelPathFor } from "../model-arg.js";

export const INFO_USAGE = "info [MODEL] [--json]                format, version, sizes, parameter count, tensor dtypes";

export function info(args: string[], io: CliIO, config: CliConfig): number {
  const { values, positionals } = parse(args, { json: { type: "boolean" } }, ["[MODEL]"]);
  const path = modelPathFor(positionals[0], config);
  const { checkpoint, close } = loadCheckpoint(path);
  try {
    const d = describeCheckpoint(checkpoint);
    if (values.json) {
      io.stdout(JSON.stringify(d, null, 2) + "\n");
      return 0;
    }
    const c = d.config;
    const lines = [
      `file        ${path}`,
      `format      ${d.format}`,
      `version     RWKV-${c.version}`,
      `layers      ${c.nLayer}`,
      `width       ${c.nEmbd} (attention ${c.dimAtt}, ffn ${c.dimFfn})`,
      `heads       ${c.nHead} x ${c.headSize}`,
      `vocab       ${c.vocabSize}`,
      `parameters  ${d.parameters.toLocaleString("en-US")}`,
      d.state.perToken
        ? `state       grows: ${(4 * d.state.fixed).toLocaleString("en-US")} bytes + ${(4 * d.state.perToken).toLocaleString("en-US")} bytes per token (KV cache and token ids)`
        : `state       ${(4 * d.state.fixed).toLocaleString("en-US")} bytes, whatever the context length`,
      `tensors     ${d.tensors} (${Object.entries(d.dtypes).map(([k, n]) => `${k}: ${n}`).join(", ")})`,
    ];
    for (const [k, v] of Object.entries(d.metadata)) lines.push(`meta        ${k} = ${v}`);
    io.stdout(lines.join("\n") + "\n");
    return 0;
  } finally {
    close();
  }
}
