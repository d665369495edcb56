import type { Matrix, WeightType } from "../backend.js";
import { decodeWeightRow } from "../weight-rows.js";

/*
 * A stand-in for matmul.ts (the per-type shaders written on another branch, same contract): every
 * weight type widened to f32 rows on upload and one plain dot product per output. Correct for all
 * types, but 4 bytes a weight: to be deleted once matmul.ts is merged.
 */

/** u32 words per stored row: one f32 per column. */
export function gpuRowWords(_type: WeightType, cols: number): number {
  return cols;
}

/** Rows [row0, row0 + rows) of m as f32 bits. */
export function packForGpu(m: Matrix, row0: number, rows: number): Uint32Array {
  const out = new Float32Array(rows * m.cols); // (rows, I)
  for (let r = 0; r < rows; r++) decodeWeightRow(m, row0 + r, out.subarray(r * m.cols, (r + 1) * m.cols));
  return new Uint32Array(out.buffer);
}

export interface MatmulKernel {
  readonly code: string;
  readonly entryPoint: string;
  workgroups(R: number, O: number): [number, number, number];
}

/** Outputs per workgroup. */
const WG = 64;

const CODE = /* wgsl */ `
struct MatmulParams { R: u32, O: u32, I: u32, yCol0: u32, yStride: u32 }
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<uniform> p: MatmulParams;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let o = g.x;
  let r = g.y;
  if (o >= p.O || r >= p.R) { return; }
  var s = 0.0;
  for (var i = 0u; i < p.I; i++) { s += bitcast<f32>(w[o * p.I + i]) * x[r * p.I + i]; }
  y[r * p.yStride + p.yCol0 + o] = s;
}`;

export function matmulKernel(_type: WeightType, _R: number, _features: { readonly shaderF16: boolean }): MatmulKernel {
  return { code: CODE, entryPoint: "main", workgroups: (R, O) => [Math.ceil(O / WG), R, 1] };
}
