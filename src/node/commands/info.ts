import { backendAvailability } from "../../core/backend/registry.js";
import { parse, type CliIO, UsageError } from "../cli-util.js";
import { describeCheckpoint } from "../inspect.js";
import { loadCheckpoint } from "../load.js";
import { type CliConfig, modelPathFor } from "../model-arg.js";
import { nodeWebGpuIsSoftware, prepareNodeWebGpu } from "../webgpu.js";

export const INFO_USAGE = `info [MODEL] [--json]                format, version, sizes, parameter count, tensor dtypes
  info --backends [--json]            the kernel backends, best first: which can run here, and why not`;

export async function info(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: "boolean" }, backends: { type: "boolean" } }, ["[MODEL]"]);
  if (values.backends) return backends(positionals, values.json === true, io);
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

/** `rwkv info --backends`: every registered backend, best first, available or why not (the GPU's adapter once found). */
async function backends(positionals: string[], json: boolean, io: CliIO): Promise<number> {
  if (positionals.length) throw new UsageError("--backends takes no MODEL");
  const gpu = await prepareNodeWebGpu();
  // A software adapter (a CPU driver such as lavapipe) ranks below wasm: say so, or its place in the list looks arbitrary.
  const adapter = gpu ? { adapter: gpu.adapterName, ...(nodeWebGpuIsSoftware() ? { software: true } : {}) } : {};
  const list = backendAvailability().map((b) => ({ ...b, ...(b.name === "webgpu" ? adapter : {}) }));
  if (json) {
    io.stdout(JSON.stringify(list, null, 2) + "\n");
    return 0;
  }
  const width = Math.max(...list.map((b) => b.name.length));
  const chosen = list.find((b) => b.available)?.name;
  io.stdout(list.map((b) => `${b.name.padEnd(width)}  ${b.available ? `available${b.name === chosen ? " (the default)" : ""}${"adapter" in b ? `: ${b.adapter}${"software" in b ? " (a software adapter: slower than wasm, used only with --backend webgpu)" : ""}` : ""}` : `not available: ${b.reason}`}`).join("\n") + "\n");
  return 0;
}
