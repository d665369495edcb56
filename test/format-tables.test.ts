import assert from "node:assert/strict";
import { test } from "node:test";
import { MemorySource } from "../src/core/bytes.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { ggufFromCheckpoint } from "../src/core/formats/gguf-rwkv.js";
import { byteVocabMetadata } from "../src/core/formats/gguf-vocab.js";
import { readGgufCheckpoint } from "../src/core/formats/gguf-rwkv.js";
import { readRwkvCpp } from "../src/core/formats/rwkvcpp.js";
import { rwkvCppChunks, rwkvCppModelFromCheckpoint } from "../src/core/formats/rwkvcpp-writer.js";
import { decodeValues, encodeValues, groupOf, isLayerGroup, rowFor, type TensorRow } from "../src/core/formats/tensor-map.js";
import type { Version } from "../src/core/model/model.js";
import { randomCheckpoint } from "../src/core/model/random.js";
import { checkpointShapes } from "../src/core/model/shapes.js";
import { VERSIONS, versionModule } from "../src/core/model/versions.js";
import type { TensorEntry } from "../src/core/tensor.js";
import { concat } from "./shared.js";

/*
 * The two-way tensor tables (formats/tensor-map.ts) as a property: for random tensors of every
 * version's real layout, every table row's forward then inverse gives the official tensor back —
 * bit for bit where the row only reshapes or transposes; within f32 rounding where it re-maps
 * values (exp(-exp(w)) and back is not exact in f32, which is why re-typing an rwkv.cpp file
 * copies its records instead) — and whole files written then read give every tensor back.
 */

/** Small sizes with two heads and every per-layer kind (layer 0 and a later layer). */
const SPEC = { nLayer: 2, nEmbd: 128, vocabSize: 64, seed: 7 };
/** Tolerance of value-mapped rows: the f32 rounding of the stored value, carried through log/exp. */
const MAPPED_ATOL = 1e-4;

/** A 5.1 model (no random layout: the ungated, per-head-decay v5) from the 5.2 random model. */
function rwkv51(): Checkpoint {
  const base = randomCheckpoint({ ...SPEC, version: "5.2" });
  const H = base.tensors.get("blocks.0.att.time_decay")!.shape[0];
  const tensors = new Map<string, TensorEntry>();
  for (const [name, t] of base.tensors) {
    if (/\.att\.(gate\.weight|time_mix_g)$/.test(name)) continue;
    if (/\.att\.(time_decay|time_faaaa)$/.test(name)) {
      const n = name.replace("time_faaaa", "time_first");
      const lo = n.endsWith("time_decay") ? -6 : -1;
      tensors.set(n, { name: n, dtype: "f32", shape: [H], toFloat32: () => Float32Array.from({ length: H }, (_, h) => lo + (h + 1) / (H + 1)) });
      continue;
    }
    tensors.set(name, t);
  }
  return { ...base, source: "random RWKV-5.1", tensors };
}

function checkpointOf(version: Version): Checkpoint {
  return version === "5.1" ? rwkv51() : randomCheckpoint({ ...SPEC, version });
}

function assertSame(got: Float32Array, want: Float32Array, exact: boolean, what: string): void {
  assert.equal(got.length, want.length, what);
  if (exact) {
    assert.deepEqual(new Uint8Array(got.buffer, got.byteOffset, got.byteLength), new Uint8Array(want.buffer, want.byteOffset, want.byteLength), what);
    return;
  }
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
  assert.ok(worst <= MAPPED_ATOL, `${what}: max |diff| ${worst}`);
}

/** Forward then inverse of one row on one tensor: the official shape and values back. */
function roundTrip(row: TensorRow, t: TensorEntry, ckpt: Checkpoint, version: Version): void {
  const cfg = versionModule(version).inferConfig(checkpointShapes(ckpt));
  const values = t.toFloat32();
  const stored = row.toStored(t.shape, cfg);
  assert.equal(stored.reduce((a, b) => a * b, 1), values.length, `${t.name}: stored shape [${stored}] holds every value`);
  const encoded = encodeValues(row, values.slice(), t.shape);
  assert.deepEqual([...row.toOfficial(stored, { headSize: cfg.headSize })], [...t.shape], `${t.name}: shape back`);
  assertSame(decodeValues(row, encoded.slice(), stored), values, !row.values, `${t.name}: values back`);
}

for (const m of VERSIONS) {
  test(`rwkv.cpp table of ${m.name}: every row, forward then inverse, gives each random tensor back`, () => {
    const ckpt = checkpointOf(m.id);
    let rows = 0, mapped = 0, transposed = 0;
    for (const t of ckpt.tensors.values()) {
      if (groupOf(m.rwkvcpp, t.name)) continue; // whole groups: the file round trip below
      const row = rowFor(m.rwkvcpp, t.name);
      roundTrip(row, t, ckpt, m.id);
      rows++;
      if (row.values) mapped++;
      if (row.layout) transposed++;
    }
    assert.ok(rows > 20, `${rows} tensors checked`);
    // Each version's table has work to do: v4/v5 re-map decays, v6/v7 transpose LoRA factors.
    assert.ok(mapped + transposed > 0, `${m.name}: ${mapped} mapped, ${transposed} transposed`);
  });

  test(`rwkv.cpp file of ${m.name}: write then read gives every tensor back (names, shapes, values)`, () => {
    const ckpt = checkpointOf(m.id);
    const bytes = concat(rwkvCppChunks(rwkvCppModelFromCheckpoint(ckpt, m.id), "f32"));
    const back = readRwkvCpp(new MemorySource(`${m.id}.bin`, bytes));
    assert.equal(back.metadata.version, m.id);
    assert.deepEqual([...back.tensors.keys()].sort(), [...ckpt.tensors.keys()].sort());
    for (const [name, t] of ckpt.tensors) {
      const b = back.tensors.get(name)!;
      assert.deepEqual([...b.shape], [...t.shape], name);
      const row = rowFor(m.rwkvcpp, name);
      assertSame(b.toFloat32(), t.toFloat32(), !row.values || groupOf(m.rwkvcpp, name) !== null, name);
    }
    assert.equal(back.numerics?.groupNormEps, m.rwkvcpp.numerics?.groupNormEps);
  });

  const gguf = m.gguf;
  if (!gguf) continue;
  test(`GGUF table of ${m.name}: every entry forward then inverse; the file written then read gives every used tensor back`, () => {
    const ckpt = checkpointOf(m.id);
    for (const e of gguf.layer) {
      if (isLayerGroup(e)) continue;
      for (const i of [0, 1]) roundTrip(e.row, ckpt.tensors.get(`blocks.${i}.${e.official}`)!, ckpt, m.id);
    }
    const plan = ggufFromCheckpoint(ckpt, m.id, { dtype: "f32", tokenizer: byteVocabMetadata(SPEC.vocabSize) });
    assert.equal(plan.architecture, gguf.arch);
    const back = readGgufCheckpoint(new MemorySource(`${m.id}.gguf`, concat(plan.chunks)));
    // Layer-0 placeholders are written from other tensors and skipped on reading.
    const placeholders = gguf.layer.filter((e) => !isLayerGroup(e) && e.layer0From).map((e) => `blocks.0.${(e as { official: string }).official}`);
    assert.deepEqual(plan.dropped, []);
    assert.deepEqual([...back.tensors.keys()].sort(), [...ckpt.tensors.keys()].filter((n) => !placeholders.includes(n)).sort());
    for (const [name, b] of back.tensors) {
      const t = ckpt.tensors.get(name)!;
      assert.deepEqual([...b.shape], [...t.shape], name);
      assertSame(b.toFloat32(), t.toFloat32(), true, name);
    }
  });
}
