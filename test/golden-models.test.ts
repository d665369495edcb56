import assert from "node:assert/strict";
import { test } from "node:test";
import { availableBackends, selectBackend } from "../src/core/backend/registry.js";
import type { Checkpoint } from "../src/core/formats/checkpoint.js";
import { architectureFor, detectVersion } from "../src/core/model/detect.js";
import { buildModel } from "../src/core/model/model.js";
import type { State } from "../src/core/model/state.js";
import { bf16ToF32, f32ToBf16 } from "../src/core/tensor.js";
import { loadCheckpoint, loadModel } from "../src/node/load.js";
import { compare, readJson, sharedPath } from "./shared.js";

// Official fp32 paths agree with each other to ~1.1e-5 (shared/README); we allow 1e-4 abs + 1e-4 rel.
const ATOL = 1e-4, RTOL = 1e-4;

// Every check runs with every available backend (loading load.js registers Node's threaded wasm).
const BACKENDS = availableBackends();

interface Golden {
  tokens: number[];
  rnn: { logits: number[][]; state_after_first_token: GoldenLayer[]; final_state: GoldenLayer[] };
  seq: { logits: number[][]; final_state: GoldenLayer[] };
  seq_chunked: { logits: number[][]; final_state: GoldenLayer[]; split: number };
}
type GoldenLayer = Record<string, unknown>;

const flat = (v: unknown): number[] => (Array.isArray(v) ? (v as unknown[]).flatMap(flat) : [v as number]);

function stateDiff(state: State, golden: GoldenLayer[]): number {
  let max = 0;
  assert.equal(state.layers.length, golden.length);
  golden.forEach((g, i) => {
    for (const [name, want] of Object.entries(g)) {
      const got = state.layers[i][name];
      assert.ok(got, `state field ${name} missing in layer ${i}`);
      const c = compare(got, flat(want), ATOL, RTOL);
      assert.ok(c.ok, `layer ${i} ${name}: max |diff| ${c.maxAbs}`);
      max = Math.max(max, c.maxAbs);
    }
  });
  return max;
}

for (const backend of BACKENDS) {
for (const ver of ["v4", "v5", "v6", "v7"]) {
  for (const file of ["model.safetensors", "model.pth"]) {
    test(`golden ${ver} ${file} [${backend}]: RNN, sequence and chunked logits and states`, async (t) => {
      const dir = sharedPath(t, "golden", ver);
      if (!dir) return;
      const g = readJson<Golden>(`${dir}/golden.json`);
      const model = await loadModel(`${dir}/${file}`, { backend });
      const toks = g.tokens;
      const report: Record<string, number> = {};

      // RNN: logits after every token, state after the first and the last token.
      const s = model.initState();
      let rnnMax = 0;
      for (const [i, tok] of toks.entries()) {
        const c = compare(await model.step(tok, s), g.rnn.logits[i], ATOL, RTOL);
        assert.ok(c.ok, `rnn logits at t=${i}: max |diff| ${c.maxAbs}`);
        rnnMax = Math.max(rnnMax, c.maxAbs);
        if (i === 0) report.state_first = stateDiff(s, g.rnn.state_after_first_token);
      }
      report.rnn = rnnMax;
      report.state_final = stateDiff(s, g.rnn.final_state);

      // Sequence: all logits in one forward.
      const s2 = model.initState();
      const all = await model.forward(toks, s2, { allLogits: true });
      const cs = compare(all, flat(g.seq.logits), ATOL, RTOL);
      assert.ok(cs.ok, `seq logits: max |diff| ${cs.maxAbs}`);
      report.seq = cs.maxAbs;
      report.seq_state = stateDiff(s2, g.seq.final_state);

      // Chunked: first 9 tokens, then the rest from the carried state.
      const s3 = model.initState();
      const split = g.seq_chunked.split;
      const first = await model.forward(toks.slice(0, split), s3, { allLogits: true });
      const rest = await model.forward(toks.slice(split), s3, { allLogits: true });
      const cc = compare([...first, ...rest], flat(g.seq_chunked.logits), ATOL, RTOL);
      assert.ok(cc.ok, `chunked logits: max |diff| ${cc.maxAbs}`);
      report.chunked = cc.maxAbs;
      report.chunked_state = stateDiff(s3, g.seq_chunked.final_state);
      t.diagnostic(`${ver} ${file} [${backend}] max|diff| ${JSON.stringify(report)}`);
    });
  }
}
}

// bf16 checkpoints: the 2^-9 relative rounding of every weight moves logits by up to ~0.11 on these
// models (measured: v4 0.038, v5 0.100, v6 0.107, v7 0.087). To show the loader adds nothing on top,
// the bf16 model must equal — to fp32 tolerance — the fp32 model with each weight rounded to bf16.
const BF16_VS_FP32_BOUND = 0.2;

function roundedToBf16(ckpt: Checkpoint): Checkpoint {
  const tensors = new Map([...ckpt.tensors].map(([name, e]) => [name, {
    // New values: the file's stored bytes (raw, rawInto) no longer describe the tensor.
    ...e, name, raw: undefined, rawInto: undefined, toFloat32: () => e.toFloat32().map((v) => bf16ToF32(f32ToBf16(v))),
  }]));
  return { ...ckpt, tensors };
}

for (const backend of BACKENDS) {
for (const ver of ["v4", "v5", "v6", "v7"]) {
  for (const file of ["model_bf16.safetensors", "model_bf16.pth"]) {
    test(`golden ${ver} ${file} [${backend}]: equals the fp32 model with bf16-rounded weights`, async (t) => {
      const dir = sharedPath(t, "golden", ver);
      if (!dir) return;
      const g = readJson<Golden>(`${dir}/golden.json`);
      const bf = await loadModel(`${dir}/${file}`, { backend });
      const { checkpoint, close } = loadCheckpoint(`${dir}/model.safetensors`);
      const version = detectVersion(checkpoint);
      const rounded = buildModel(roundedToBf16(checkpoint), architectureFor(version, dir), version, selectBackend(backend));
      close();
      const got = await bf.forward(g.tokens, bf.initState(), { allLogits: true });
      const want = await rounded.forward(g.tokens, rounded.initState(), { allLogits: true });
      const c = compare(got, want, ATOL, RTOL);
      assert.ok(c.ok, `bf16 file vs bf16-rounded fp32: max |diff| ${c.maxAbs}`);
      const vsGolden = compare(got, flat(g.seq.logits), BF16_VS_FP32_BOUND, 0);
      assert.ok(vsGolden.ok, `bf16 vs fp32 golden: max |diff| ${vsGolden.maxAbs}`);
      t.diagnostic(`${ver} ${file} [${backend}]: vs rounded-fp32 ${c.maxAbs}, vs fp32 golden ${vsGolden.maxAbs}`);
    });
  }
}
}

for (const backend of BACKENDS) {
test(`stepBatch over several states equals separate step() calls, for every version [${backend}]`, async (t) => {
  for (const ver of ["v4", "v5", "v6", "v7"]) {
    const dir = sharedPath(t, "golden", ver);
    if (!dir) return;
    const model = await loadModel(`${dir}/model.safetensors`, { backend });
    // Three conversations at different points: empty, after 3 tokens, after 7 tokens.
    const histories = [[], [5, 6, 7], [1, 2, 3, 4, 9, 8, 7]];
    const batch: State[] = [];
    for (const h of histories) { const s = model.initState(); if (h.length) await model.forward(h, s); batch.push(s); }
    const alone = batch.map((s) => s.clone());
    const next = [11, 22, 33];
    for (let round = 0; round < 3; round++) {
      const got = await model.stepBatch(next, batch); // (B, V)
      for (const [b, tok] of next.entries()) {
        const want = await model.step(tok, alone[b]);
        const c = compare(got.subarray(b * want.length, (b + 1) * want.length), want, 1e-5, 1e-5);
        assert.ok(c.ok, `${ver} round ${round} sequence ${b}: max |diff| ${c.maxAbs}`);
      }
      next.forEach((_, b) => { next[b] = (next[b] * 7 + round) % 512; });
    }
    await assert.rejects(() => model.stepBatch([1, 2], [batch[0], batch[0]]), /same state appears twice/);
  }
});
}
