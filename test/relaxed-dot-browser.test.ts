import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { build } from "esbuild";
import type { WeightType } from "../src/core/backend/backend.js";
import { referenceBackend as ref } from "../src/core/backend/reference.js";
import { launchChromium } from "./chromium.js";
import { assertWithin, matmulBounds, randomMatrix, rng } from "./matmul-check.js";

/*
 * The i8·i7 kernels (q4/q5 weights through i16x8.relaxed_dot_i8x16_i7x16_s, T = 1) run only where
 * the engine computes that instruction as specified (kernels.ts relaxedDotOk). The Node conformance
 * suite runs them in its relaxed-SIMD child; this runs the wasm backend in Chromium (relaxed build,
 * one thread), a different engine build, on the conformance suite's shapes, tails and an L2-tiled
 * long product, and checks every output against the reference within the same bounds.
 */

const ORIGIN = "http://localhost/rwkv-kernels-test"; // localhost: a trustworthy origin, so COOP/COEP apply (answered by page.route)
const TYPES: WeightType[] = ["q4_0", "q4_1", "q5_0", "q5_1"];
/** (O, I, T): odd shapes, every 4-row remainder, T = 1 (row pairs), and 41 rows of 3072 (two L2 tiles). */
const CASES: ReadonlyArray<readonly [number, number, number]> = [
  [1, 32, 1], [5, 64, 1], [17, 96, 1], [40, 160, 1], [5, 64, 2], [17, 96, 3], [40, 160, 17], [33, 64, 64], [3, 3072, 41],
];

interface PageCase { type: WeightType; O: number; I: number; T: number; w: number[]; x: number[] }
interface PageKernels { WasmBackend: new (o: { simd: string }) => { i7: boolean; adopt(m: object): object; matmul(x: Float32Array, T: number, W: object): Float32Array } }

test("relaxed i8·i7 q4/q5 kernels in Chromium: within the reference's bounds on odd shapes, tails and tiled long products", async (t) => {
  const chromium = await launchChromium(t);
  if (!chromium) return;
  try {
    const bundle = await build({
      stdin: { contents: `export { WasmBackend } from ${JSON.stringify(join(import.meta.dirname, "..", "src", "core", "backend", "wasm.js"))};`, resolveDir: import.meta.dirname },
      bundle: true, format: "iife", globalName: "RwkvKernels", platform: "browser", write: false, logLevel: "silent",
    });
    const { page, errors } = await chromium.page();
    // Shared WebAssembly memory needs a cross-origin isolated page: served with COOP/COEP here.
    await page.route(ORIGIN, (route) => route.fulfill({
      contentType: "text/html", body: "<!doctype html><title>kernels</title>",
      headers: { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" },
    }));
    await page.goto(ORIGIN);
    await page.addScriptTag({ content: bundle.outputFiles[0].text });
    const r = rng(43);
    for (const type of TYPES) {
      for (const [O, I, T] of CASES) {
        const W = randomMatrix(type, O, I, r);
        const x = Float32Array.from({ length: T * I }, () => r() * (r() > 0.9 ? 8 : 1));
        const c: PageCase = { type, O, I, T, w: [...(W.data as Uint8Array)], x: [...x] };
        const got = await page.evaluate((c: PageCase) => {
          const K = (globalThis as unknown as { RwkvKernels: PageKernels }).RwkvKernels;
          const be = new K.WasmBackend({ simd: "relaxed-simd" });
          const A = be.adopt({ rows: c.O, cols: c.I, type: c.type, data: Uint8Array.from(c.w) });
          return { i7: be.i7, y: [...be.matmul(Float32Array.from(c.x), c.T, A)] };
        }, c);
        assert.equal(got.i7, true, "Chromium's relaxed dot passes the probe, so the i8·i7 kernels run");
        const bound = matmulBounds(x, T, W);
        assertWithin(Float32Array.from(got.y), ref.matmul(x, T, W), (i) => bound[i], `${type} O=${O} I=${I} T=${T}`);
      }
    }
    assert.deepEqual(errors, []);
  } finally {
    await chromium.close();
  }
});
