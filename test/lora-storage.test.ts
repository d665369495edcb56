import assert from "node:assert/strict";
import { test } from "node:test";
import type { Backend } from "../src/core/backend/backend.js";
import { referenceBackend } from "../src/core/backend/reference.js";
import { WasmBackend } from "../src/core/backend/wasm.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { architectureFor } from "../src/core/model/detect.js";
import { buildModel, type Version } from "../src/core/model/model.js";
import { randomCheckpoint } from "../src/core/model/random.js";
import { Weights } from "../src/core/model/weights.js";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, type TensorEntry } from "../src/core/tensor.js";

/*
 * LoRA factors (v6/v7 projections, stored (in, out)) stay in a file's 16-bit type: transposed as
 * 16-bit values, they cost half the memory of f32 and a token streams half the bytes. The model
 * must compute exactly what it computes with the same values held as f32.
 */

const LORA = /\.(att\.[wavg][12]|att\.time_maa_w1|att\.time_decay_w[12])$/;
type Half = "f16" | "bf16";
const CODEC = { f16: [f32ToF16, f16ToF32], bf16: [f32ToBf16, bf16ToF32] } as const;

/**
 * The random checkpoint with every 2-D tensor's values rounded to `half`; the LoRA factors typed
 * as `loraType` (the rounded values are exact in both), the other matrices as `half`.
 */
function rounded(base: Checkpoint, half: Half, loraType: Half | "f32"): Checkpoint {
  const [enc, dec] = CODEC[half];
  const tensors = new Map<string, TensorEntry>();
  for (const [name, t] of base.tensors) {
    if (t.shape.length !== 2 || name === "emb.weight") { tensors.set(name, t); continue; }
    const dtype = LORA.test(name) ? loraType : half;
    tensors.set(name, { name, dtype, shape: t.shape, toFloat32: () => t.toFloat32().map((v) => dec(enc(v))) });
  }
  return { ...base, tensors };
}

async function logits(ckpt: Checkpoint, version: Version, backend: Backend): Promise<Float32Array[]> {
  const m = buildModel(ckpt, architectureFor(version, ckpt.source), version, backend);
  const s = m.initState();
  const prompt = await m.forward([3, 1, 4, 1, 5, 9, 2, 6], s);
  return [prompt, await m.step(7, s), await m.step(200, s)];
}

for (const version of ["7", "6"] as const) {
  for (const half of ["f16", "bf16"] as const) {
    test(`v${version} ${half} LoRA factors are kept ${half} and give the f32 factors' logits bit for bit`, async () => {
      const base = randomCheckpoint({ version, nLayer: 2, nEmbd: 128, vocabSize: 256, seed: 3 });
      const kept = rounded(base, half, half), wide = rounded(base, half, "f32");
      const loraNames = [...kept.tensors.keys()].filter((n) => LORA.test(n));
      assert.ok(loraNames.length >= 4, `the random v${version} model has LoRA factors (${loraNames.join(", ")})`);

      const name = loraNames[0], [inp, out] = kept.tensors.get(name)!.shape;
      const m = new Weights(kept, `v${version}`).projection(name, inp, out);
      assert.equal(m.type, half);
      assert.deepEqual([m.rows, m.cols], [out, inp]);
      const dense = kept.tensors.get(name)!.toFloat32(); // (in, out)
      const [, dec] = CODEC[half];
      for (const [o, i] of [[0, 0], [out - 1, 0], [1, inp - 1], [out - 1, inp - 1]]) {
        assert.equal(dec((m.data as Uint16Array)[o * inp + i]), dense[i * out + o], `element (${o}, ${i})`);
      }

      for (const backend of [referenceBackend, new WasmBackend({ threads: 1 })]) {
        const [a, b] = [await logits(kept, version, backend), await logits(wide, version, backend)];
        for (let k = 0; k < a.length; k++) assert.deepEqual(a[k], b[k], `${backend.name}: logits ${k}`);
      }
    });
  }
}
