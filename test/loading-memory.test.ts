import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import type { ByteSource } from "../src/core/bytes.js";
import { openCheckpoint } from "../src/core/formats/open.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel } from "../src/core/model/model.js";
import { randomCheckpoint } from "../src/core/model/random.js";
import { rwkvCppChunks, rwkvCppModelFromCheckpoint } from "../src/core/formats/rwkvcpp-writer.js";
import { FileSource } from "../src/node/file-source.js";
import { sharedPath } from "./shared.js";

/** Wraps a source and records every read, to show how a checkpoint is pulled into memory. */
class CountingSource implements ByteSource {
  reads: number[] = [];
  constructor(private readonly inner: ByteSource) {}
  get name() { return this.inner.name; }
  get size() { return this.inner.size; }
  read(offset: number, length: number): Uint8Array {
    this.reads.push(length);
    return this.inner.read(offset, length);
  }
}

const ZIP_TAIL_SLACK = 128 * 1024;

// A multi-GB checkpoint must never be held twice: loading reads each tensor once, in pieces no
// larger than the largest tensor, never the whole file in one buffer.
for (const [dir, file] of [["golden/v7", "model.pth"], ["golden/v6", "model.safetensors"], ["rwkv.cpp", "tiny-rwkv-5v2-730K-FP32.bin"]]) {
  test(`loading ${dir}/${file} reads each tensor once, never the whole file at once`, (t) => {
    const path = sharedPath(t, ...dir.split("/"), file);
    if (!path) return;
    const fs = new FileSource(path);
    const src = new CountingSource(fs);
    try {
      const ckpt = openCheckpoint(src);
      const indexReads = src.reads.length;
      const version = detectVersion(ckpt);
      buildModel(ckpt, architectureFor(version, path), version, referenceBackend);
      const total = src.reads.reduce((a, b) => a + b, 0);
      const largest = Math.max(...src.reads);
      let largestTensor = 0, tensorBytes = 0;
      for (const e of ckpt.tensors.values()) {
        const n = e.shape.reduce((a, b) => a * b, 1) * 4; // all these files are fp32
        largestTensor = Math.max(largestTensor, n);
        tensorBytes += n;
      }
      assert.ok(largest <= largestTensor, `largest read ${largest} > largest tensor ${largestTensor}`);
      assert.ok(largest < fs.size / 2, `a read of ${largest} bytes is half the file (${fs.size})`);
      // Everything read adds up to about the file size: no tensor is read twice. (Slack: a zip's
      // end-of-directory search reads up to 64 KiB of comment space from the end.)
      assert.ok(total <= fs.size + ZIP_TAIL_SLACK, `read ${total} bytes of a ${fs.size}-byte file`);
      assert.ok(total >= tensorBytes * 0.9, `read only ${total} of ${tensorBytes} tensor bytes`);
      t.diagnostic(`${file}: ${src.reads.length} reads (${indexReads} for the index), ${total} of ${fs.size} bytes, largest ${largest}`);
    } finally {
      fs.close();
    }
  });
}

// Peak memory of a real load, in a fresh process: an f32 rwkv.cpp file (the type whose matrices
// used to pass through two JavaScript buffers each: the read and its f32 copy) of about 100 MiB,
// most of it in the two vocabulary tables, so a second copy of either shows as tens of MiB.
const MEMORY_SPEC = { version: "7", nLayer: 2, nEmbd: 512, vocabSize: 24576, seed: 1 } as const;
/** What a load may add beyond the file (docs/bench.md): arena, scratch, code pages touched. */
const LOAD_FIXED_MIB = 64;

const CHILD = `
const [loadUrl, file] = process.argv.slice(1);
const { loadModel } = await import(loadUrl);
const base = process.resourceUsage().maxRSS; // KiB: the process with its modules, before the load
const model = await loadModel(file, { threads: 1 });
await model.step(0, model.initState());
process.stdout.write(JSON.stringify({ base, peak: process.resourceUsage().maxRSS }));
`;

test("loading an f32 model peaks at the file size plus a fixed part: no weight is held twice", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-load-memory-"));
  try {
    const file = join(dir, "model-f32.bin");
    const ckpt = randomCheckpoint(MEMORY_SPEC);
    const fd = openSync(file, "w");
    try {
      for (const chunk of rwkvCppChunks(rwkvCppModelFromCheckpoint(ckpt, MEMORY_SPEC.version), "f32")) writeSync(fd, chunk);
    } finally {
      closeSync(fd);
    }
    const size = statSync(file).size;
    const loadUrl = pathToFileURL(join(import.meta.dirname, "..", "src", "node", "load.js")).href;
    const run = spawnSync(process.execPath, ["--input-type=module", "-e", CHILD, loadUrl, file], { encoding: "utf8" });
    assert.equal(run.status, 0, `the loading process failed: ${run.stderr}`);
    const { base, peak } = JSON.parse(run.stdout) as { base: number; peak: number };
    const grew = (peak - base) * 1024; // bytes the load and one step added at their peak
    const limit = size * 1.1 + LOAD_FIXED_MIB * 2 ** 20;
    t.diagnostic(`file ${(size / 2 ** 20).toFixed(1)} MiB, the load added ${(grew / 2 ** 20).toFixed(1)} MiB at its peak (limit ${(limit / 2 ** 20).toFixed(1)})`);
    // The weights are really in memory (so the measure sees them) ...
    assert.ok(grew >= size * 0.9, `the load added only ${grew} bytes for a ${size}-byte file: the measure misses the weights`);
    // ... and only once.
    assert.ok(grew <= limit, `the load added ${(grew / 2 ** 20).toFixed(1)} MiB at its peak for a ${(size / 2 ** 20).toFixed(1)} MiB file: over file x 1.1 + ${LOAD_FIXED_MIB} MiB, so something holds weights twice`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
