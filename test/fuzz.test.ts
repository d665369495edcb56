import assert from "node:assert/strict";
import { test } from "node:test";
import { FUZZ_FORMATS } from "../bench/fuzz/layout.js";
import { CATEGORIES, FAILURES, runFuzz } from "../bench/fuzz/run.js";
import { SHARED, sharedPath } from "./shared.js";

// A small run of the fuzzing harness (bench/fuzz/README.md) per format: mutated real files must
// be refused with a typed error or load with the original's logits, except where only tensor
// data changed in a format without a checksum. The documented full run is 10,000 per format.

const MUTANTS = 200;

for (const format of FUZZ_FORMATS) {
  test(`fuzz ${format}: ${MUTANTS} mutants, no crash, hang, out-of-memory or structural change loading with other logits`, async (t) => {
    if (!sharedPath(t, "golden", "v7", "model.pth") || !sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin")) return;
    const r = await runFuzz({ format, count: MUTANTS, seed: 18, workers: 2, timeoutMs: 30_000, memoryMb: 1024, shared: SHARED });
    const total = CATEGORIES.reduce((a, c) => a + r.counts[c], 0);
    assert.equal(total, MUTANTS);
    const bad = r.findings.filter((f) => FAILURES.includes(f.category));
    assert.deepEqual(bad.map((f) => `#${f.index} ${f.category}: ${f.op}: ${f.message}`), []);
    // The mutations must reach the loaders' checks, not only produce harmless files.
    assert.ok(r.counts["typed error"] > MUTANTS / 2, `only ${r.counts["typed error"]} typed errors`);
  });
}
