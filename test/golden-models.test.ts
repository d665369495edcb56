import assert from "node:assert/strict";
import { test } from "node:test";
import { loadModel } from "../src/node/load.js";
import type { State } from "../src/core/model/state.js";
import { compare, readJson, sharedPath } from "./shared.js";

// Official fp32 paths agree with each other to ~1.1e-5 (shared/README); we allow 1e-4 abs + 1e-4 rel.
const ATOL = 1e-4, RTOL = 1e-4;

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

for (const ver of ["v4", "v5", "v6", "v7"]) {
  for (const file of ["model.safetensors", "model.pth"]) {
    test(`golden ${ver} ${file}: RNN, sequence and chunked logits and states`, (t) => {
      const dir = sharedPath(t, "golden", ver);
      if (!dir) return;
      const g = readJson<Golden>(`${dir}/golden.json`);
      const model = loadModel(`${dir}/${file}`);
      const toks = g.tokens;
      const report: Record<string, number> = {};

      // RNN: logits after every token, state after the first and the last token.
      const s = model.initState();
      let rnnMax = 0;
      toks.forEach((tok, i) => {
        const c = compare(model.step(tok, s), g.rnn.logits[i], ATOL, RTOL);
        assert.ok(c.ok, `rnn logits at t=${i}: max |diff| ${c.maxAbs}`);
        rnnMax = Math.max(rnnMax, c.maxAbs);
        if (i === 0) report.state_first = stateDiff(s, g.rnn.state_after_first_token);
      });
      report.rnn = rnnMax;
      report.state_final = stateDiff(s, g.rnn.final_state);

      // Sequence: all logits in one forward.
      const s2 = model.initState();
      const all = model.forward(toks, s2, { allLogits: true });
      const cs = compare(all, flat(g.seq.logits), ATOL, RTOL);
      assert.ok(cs.ok, `seq logits: max |diff| ${cs.maxAbs}`);
      report.seq = cs.maxAbs;
      report.seq_state = stateDiff(s2, g.seq.final_state);

      // Chunked: first 9 tokens, then the rest from the carried state.
      const s3 = model.initState();
      const split = g.seq_chunked.split;
      const first = model.forward(toks.slice(0, split), s3, { allLogits: true });
      const rest = model.forward(toks.slice(split), s3, { allLogits: true });
      const cc = compare([...first, ...rest], flat(g.seq_chunked.logits), ATOL, RTOL);
      assert.ok(cc.ok, `chunked logits: max |diff| ${cc.maxAbs}`);
      report.chunked = cc.maxAbs;
      report.chunked_state = stateDiff(s3, g.seq_chunked.final_state);
      t.diagnostic(`${ver} ${file} max|diff| ${JSON.stringify(report)}`);
    });
  }
}
