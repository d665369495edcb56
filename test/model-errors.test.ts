import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { FormatError, RwkvInputError } from "../src/core/errors.js";
import { type TensorToWrite, writeSafetensors } from "../src/core/formats/safetensors.js";
import { State } from "../src/core/model/state.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { sharedPath } from "./shared.js";

const tmp = mkdtempSync(join(tmpdir(), "rwkv-model-errors-"));

/** Rewrites a checkpoint through writeSafetensors with `edit` applied to its tensor list. */
function rewrite(src: string, name: string, edit: (ts: TensorToWrite[]) => TensorToWrite[]): string {
  const { checkpoint, close } = loadCheckpoint(src);
  const ts: TensorToWrite[] = [...checkpoint.tensors.values()].map((e) => {
    const f = e.toFloat32();
    return { name: e.name, dtype: "f32", shape: e.shape, data: new Uint8Array(f.buffer, f.byteOffset, f.byteLength) };
  });
  close();
  const out = join(tmp, name);
  writeFileSync(out, Buffer.concat(writeSafetensors(edit(ts))));
  return out;
}

test("safetensors written by us loads back with identical logits", async (t) => {
  const src = sharedPath(t, "golden", "v6", "model.pth");
  if (!src) return;
  const copy = rewrite(src, "copy.safetensors", (ts) => ts);
  const a = await loadModel(src), b = await loadModel(copy);
  assert.deepEqual(await b.forward([1, 2, 3, 4], b.initState(), { allLogits: true }), await a.forward([1, 2, 3, 4], a.initState(), { allLogits: true }));
});

test("a model whose tensors are missing or mis-shaped is refused, naming the file and the tensor", async (t) => {
  for (const ver of ["v4", "v5", "v6", "v7"]) {
    const src = sharedPath(t, "golden", ver, "model.safetensors");
    if (!src) return;
    const noKey = rewrite(src, `${ver}-nokey.safetensors`, (ts) => ts.filter((x) => x.name !== "blocks.1.att.key.weight"));
    await assert.rejects(() => loadModel(noKey), (e: Error) => e instanceof FormatError
      && e.message.includes(noKey) && /missing tensor blocks\.1\.att\.key\.weight/.test(e.message));
    const noHead = rewrite(src, `${ver}-nohead.safetensors`, (ts) => ts.filter((x) => x.name !== "head.weight"));
    await assert.rejects(() => loadModel(noHead), /missing tensor head\.weight/);
    const noEmb = rewrite(src, `${ver}-noemb.safetensors`, (ts) => ts.filter((x) => x.name !== "emb.weight"));
    await assert.rejects(() => loadModel(noEmb), /missing tensor emb\.weight: not an RWKV checkpoint/);
    const squashed = rewrite(src, `${ver}-shape.safetensors`, (ts) => ts.map((x) => x.name === "blocks.2.ffn.value.weight"
      ? { ...x, shape: [x.shape[1], x.shape[0]] } : x));
    await assert.rejects(() => loadModel(squashed), (e: Error) => e.message.includes(squashed)
      && /tensor blocks\.2\.ffn\.value\.weight has shape \[\d+,\d+\] but RWKV-\S+ needs \[\d+,\d+\]/.test(e.message));
  }
  const empty = rewrite(sharedPath(t, "golden", "v7", "model.safetensors")!, "empty.safetensors", () => []);
  await assert.rejects(() => loadModel(empty), /empty\.safetensors: missing tensor emb\.weight/);
});

test("forward refuses bad tokens and a state that belongs to another model", async (t) => {
  const a = sharedPath(t, "golden", "v7", "model.safetensors"), b = sharedPath(t, "golden", "v6", "model.safetensors");
  if (!a || !b) return;
  const m7 = await loadModel(a), m6 = await loadModel(b);
  await assert.rejects(() => m7.forward([], m7.initState()), (e: Error) => e instanceof RwkvInputError && /empty token sequence/.test(e.message));
  await assert.rejects(() => m7.step(512, m7.initState()), /token id 512 is outside the vocabulary 0\.\.511/);
  await assert.rejects(() => m7.step(-1, m7.initState()), /token id -1/);
  await assert.rejects(() => m7.step(1.5, m7.initState()), /token id 1\.5/);
  await assert.rejects(() => m7.step(1, m6.initState()), /belongs to RWKV-6/);
});

test("state clone is independent and serialize/deserialize round-trips exactly", async (t) => {
  const p = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!p) return;
  const m = await loadModel(p);
  const s = m.initState();
  await m.forward([5, 6, 7], s);
  const c = s.clone();
  const bytes = s.serialize();
  const after = await m.step(9, s); // advances s only
  const fromClone = await m.step(9, c);
  assert.deepEqual(fromClone, after);
  const restored = State.deserialize(bytes);
  assert.deepEqual(await m.step(9, restored), after);
  assert.throws(() => State.deserialize(bytes.subarray(0, bytes.length - 3)), /truncated|trailing/);
});
