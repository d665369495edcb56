import assert from "node:assert/strict";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { compare, readJson, readSafetensorsF32, sharedPath } from "./shared.js";
import type { HostBytes, ModelRun } from "./webgpu-page.js";

/*
 * The whole-model checks of the WebGPU backend, shared by its two hosts so that both hold the same
 * bounds: Chromium on SwiftShader (webgpu-browser.test.ts) and Node on Dawn (webgpu-node.test.ts).
 * The golden models of every version within the goldens' 1e-4 on f32 weights, and compact weight
 * types (f16, bf16, ggml blocks) against the reference kernels on the same weights.
 */

export const ATOL = 1e-4, RTOL = 1e-4;
const FIXTURES = join(import.meta.dirname, "..", "..", "test", "fixtures", "golden");

export function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, what: string): number {
  const c = compare(got, want, ATOL, RTOL);
  assert.ok(c.ok, `${what}: max |diff| ${c.maxAbs} (first bad element ${c.worst})`);
  return c.maxAbs;
}

/**
 * A model loaded on WebGPU holds its matrices once, on the GPU: the matrices adopt() returned have
 * no CPU data. The one documented exception: DeepEmbed's fold matrices (RWKV-7a/7b), a CPU product
 * at load, which adoptForHost keeps readable (and the model drops once built).
 */
export function assertNoCpuWeights(t: TestContext, name: string, version: string, b: HostBytes): void {
  assert.ok(b.matrices > 0 && b.before > 0, `${name}: no matrix was adopted`);
  assert.equal(b.after, 0, `${name}: the adopted matrices still hold ${b.after} bytes on the CPU`);
  assert.equal(b.host > 0, version === "7a" || version === "7b", `${name}: matrices kept for the CPU (${b.host} bytes) outside DeepEmbed's fold`);
  t.diagnostic(`${name}: ${b.matrices} matrices adopted, CPU bytes they hold: ${b.before} before adopt, ${b.after} after${b.host ? `; kept for the load-time fold: ${b.host}` : ""}`);
}

const flat = (v: unknown): number[] => (Array.isArray(v) ? (v as unknown[]).flatMap(flat) : [v as number]);

/** One golden model: its file (a unique name and a path), the tokens, and the check of a run on the GPU. */
export interface GpuGolden {
  readonly name: string;
  readonly path: string;
  readonly tokens: number[];
  readonly split: number;
  readonly matrices?: "f32";
  /** Asserts the run's logits and states against the official outputs; the largest |diff| of each. */
  check(run: ModelRun): Record<string, number>;
}

/** The golden models of v4-v7 (../shared) and of the next generations (test/fixtures), or null where a fixture is missing (skipped). */
export function gpuGoldens(t: TestContext): GpuGolden[] | null {
  const goldens: GpuGolden[] = [];
  for (const ver of ["v4", "v5", "v6", "v7"]) {
    const dir = sharedPath(t, "golden", ver);
    if (!dir) return null;
    type GoldenLayer = Record<string, unknown>;
    const g = readJson<{ tokens: number[]; rnn: { logits: number[][]; state_after_first_token: GoldenLayer[]; final_state: GoldenLayer[] }; seq: { logits: number[][]; final_state: GoldenLayer[] }; seq_chunked: { logits: number[][]; final_state: GoldenLayer[]; split: number } }>(join(dir, "golden.json"));
    const states = (got: Record<string, number[]>[], want: GoldenLayer[], what: string) => {
      let m = 0;
      want.forEach((l, i) => { for (const [name, v] of Object.entries(l)) m = Math.max(m, assertClose(got[i][name], flat(v), `${what} layer ${i} ${name}`)); });
      return m;
    };
    goldens.push({
      name: `${ver}.safetensors`, path: join(dir, "model.safetensors"),
      tokens: g.tokens, split: g.seq_chunked.split,
      check: (run) => ({
        rnn: assertClose(run.rnn, flat(g.rnn.logits), "rnn logits"),
        seq: assertClose(run.seq, flat(g.seq.logits), "seq logits"),
        chunked: assertClose(run.chunked, flat(g.seq_chunked.logits), "chunked logits"),
        stateFirst: states(run.states.first, g.rnn.state_after_first_token, "state after the first token"),
        stateRnn: states(run.states.rnn, g.rnn.final_state, "rnn final state"),
        stateSeq: states(run.states.seq, g.seq.final_state, "seq final state"),
        stateChunked: states(run.states.chunked, g.seq_chunked.final_state, "chunked final state"),
      }),
    });
  }
  for (const gen of ["v7a", "v7b", "v8", "v8-hybrid"]) {
    for (const shape of ["head64", "head32"]) {
      const d = join(FIXTURES, gen, shape);
      const meta = readJson<{ tokens: number[]; split: number }>(join(d, "golden.json"));
      const golden = readSafetensorsF32(join(d, "golden.safetensors"));
      const states = (got: Record<string, number[]>[], path: string) => {
        let m = 0;
        got.forEach((l, i) => { for (const [field, v] of Object.entries(l)) { const want = golden.get(`${path}.L${i}.${field}`); if (want) m = Math.max(m, assertClose(v, want, `${path} layer ${i} ${field}`)); } });
        return m;
      };
      goldens.push({
        name: `${gen}-${shape}.safetensors`, path: join(d, "model.safetensors"),
        matrices: "f32", // f16-exact values the official code ran in f32 (next-gen.test.ts)
        tokens: meta.tokens, split: meta.split,
        check: (run) => ({
          rnn: assertClose(run.rnn, golden.get("rnn.logits")!, "rnn logits"),
          seq: assertClose(run.seq, golden.get("seq.logits")!, "seq logits"),
          chunked: assertClose(run.chunked, golden.get("chunked.logits")!, "chunked logits"),
          stateRnn: states(run.states.rnn, "rnn"), stateSeq: states(run.states.seq, "seq"), stateChunked: states(run.states.chunked, "chunked"),
        }),
      });
    }
  }
  return goldens;
}

/** Whole models in compact weight types (name, path), or null where a fixture is missing (skipped). */
export function compactModels(t: TestContext): Array<{ name: string; path: string }> | null {
  const bf16 = sharedPath(t, "golden", "v7", "model_bf16.safetensors"), cpp = sharedPath(t, "rwkv.cpp");
  if (!bf16 || !cpp) return null;
  return [
    { name: "v7-bf16.safetensors", path: bf16 },
    ...["tiny-rwkv-7v0-834K-FP16.bin", "tiny-rwkv-7v0-834K-Q5_1.bin", "tiny-rwkv-6v0-1m-Q5_0.bin", "tiny-rwkv-5v2-730K-FP32-to-Q8_0.bin",
      "tiny-rwkv-5v2-730K-FP32-to-Q4_0.bin", "tiny-rwkv-5v2-730K-FP32-to-Q4_1.bin"].map((f) => ({ name: f, path: join(cpp, f) })),
  ];
}

/** The prompt the compact models run (a sequence, then steps). */
export const COMPACT_TOKENS = [1, 20, 33, 4, 50, 6, 17, 8, 9, 100, 11];

/**
 * Compact types: the kernels' f32 sums against the reference's f64 ones on the same weights, so the
 * golden tolerance holds here too (what these types lose against f32 weights is the types' own
 * rounding, the same on every backend: quantization.md).
 */
export function assertCompact(name: string, r: { maxDiff: number; scale: number }): void {
  assert.ok(r.maxDiff <= ATOL + RTOL * r.scale, `${name}: GPU vs reference max |diff| ${r.maxDiff}`);
}

