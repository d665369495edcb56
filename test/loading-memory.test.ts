import assert from "node:assert/strict";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import type { ByteSource } from "../src/core/bytes.js";
import { openCheckpoint } from "../src/core/formats/open.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel } from "../src/core/model/model.js";
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
