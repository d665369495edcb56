import type { Matrix, WeightType } from "../../src/core/backend/backend.js";
import { relaxedSimdAvailable, WasmBackend, type WasmSimd } from "../../src/core/backend/wasm.js";
import { f32ToF16 } from "../../src/core/tensor.js";
import { randomMatrix, rng } from "../../test/matmul-check.js";

/*
 * Times the wasm backend's matmul kernels per weight type on one thread: y (T, O) = x (T, I) Wᵀ for
 * the 0.1B v7 shapes (768 -> 768 and 768 -> 3072, 3072 -> 768), T = 1 (decode), 64 and 512
 * (prefill, per token), in the plain-SIMD build and, where this Node validates it, the relaxed one.
 * "f16 (mul)" is an f16 matrix the backend cannot store as f16s (one weight >= 64), so it runs the
 * older conversion (widen, shift, mask, multiply every weight): the f16s kernel's baseline.
 *
 * Usage: npm run build && node --experimental-wasm-relaxed-simd dist/bench/kernels/matmul.js [ROUNDS] [TYPES] [TS] [C]
 * (TYPES, TS: comma-separated subsets, e.g. f16,q4_0 1,4096; C: the embedding width, 768 by default,
 * 2560 for the G1 2.9B shapes). Figures are the fastest of ROUNDS
 * (default 5) timings of 0.2 s of CPU time each; GFLOP/s counts 2·O·I·T; one thread, so the
 * kernels' thread split is not timed. The relaxed build runs q4/q5 at T = 1 on the i8·i7 kernels
 * (where the engine's relaxed dot passes kernels.ts relaxedDotOk: Node 20 and Chromium do).
 */

const rounds = Number(process.argv[2] ?? 5);
const C = Number(process.argv[5] ?? 768);
const SHAPES: ReadonlyArray<readonly [number, number]> = [[C, C], [4 * C, C], [C, 4 * C]]; // (O, I)
type Kind = WeightType | "f16 (mul)";
const ALL_TYPES: readonly Kind[] = ["f32", "f16 (mul)", "f16", "bf16", "i8", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"];
const TYPES = process.argv[3] ? ALL_TYPES.filter((t) => process.argv[3].split(",").includes(t)) : ALL_TYPES;
const TS = process.argv[4] ? process.argv[4].split(",").map(Number) : [1, 64, 512];
/** The weights' magnitudes: values ±0.05, block scales a tenth of the conformance suite's. */
const SCALE = { value: 0.05, block: 0.1 };

function matrix(type: Kind, O: number, I: number, r: () => number): Matrix {
  if (type !== "f16 (mul)") return randomMatrix(type, O, I, r, SCALE);
  const W = randomMatrix("f16", O, I, r, SCALE);
  (W.data as Uint16Array)[0] = f32ToF16(100); // |w| >= 64: no f16s form
  return W;
}

/** CPU microseconds of one round (user time: on a shared machine, less disturbed than wall time). */
const ROUND_US = 200_000;

/**
 * Fastest seconds of one matmul over `rounds` timings, in this thread's user CPU time (other
 * processes on the machine stretch wall time; the fastest round is the least disturbed one).
 */
function time(be: WasmBackend, W: Matrix, T: number, x: Float32Array): number {
  const info = be.adoptedInfo(W)!;
  const { rows: O, cols: I } = W;
  const xp = be.alloc(4 * T * I), yp = be.alloc(4 * T * O);
  be.f32.set(x, xp >>> 2);
  be.matmulAt(xp, yp, T, W, info); // warm-up
  let best = Infinity;
  for (let k = 0; k < rounds; k++) {
    let n = 0;
    const c0 = process.cpuUsage();
    do { be.matmulAt(xp, yp, T, W, info); n++; } while (process.cpuUsage(c0).user < ROUND_US);
    best = Math.min(best, process.cpuUsage(c0).user / 1e6 / n);
  }
  be.release(xp, 4 * T * I); be.release(yp, 4 * T * O);
  return best;
}

const builds: WasmSimd[] = ["simd", ...(relaxedSimdAvailable() ? ["relaxed-simd" as const] : [])];
const backends = builds.map((simd) => new WasmBackend({ simd }));
console.log(`# matmul kernels, 1 thread, GFLOP/s (2·O·I·T per call, CPU time), fastest of ${rounds}; builds: ${builds.join(", ")}`);
console.log(`| type | O x I | ${TS.map((T) => builds.map((simd) => `T=${T} ${simd}`).join(" | ")).join(" | ")} |`);
console.log(`|---|---|${TS.map(() => builds.map(() => "---").join("|")).join("|")}|`);
const r = rng(1);
for (const type of TYPES) {
  for (const [O, I] of SHAPES) {
    const M = matrix(type, O, I, r);
    const cells: string[] = [];
    for (const T of TS) {
      const x = Float32Array.from({ length: T * I }, () => r());
      for (const be of backends) {
        const W = be.adopt(M);
        cells.push((2 * O * I * T / time(be, W, T, x) / 1e9).toFixed(1));
      }
    }
    console.log(`| ${type} | ${O} x ${I} | ${cells.join(" | ")} |`);
  }
}
for (const be of backends) be.close();
