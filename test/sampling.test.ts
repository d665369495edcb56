import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test, type TestContext } from "node:test";
import { RwkvInputError } from "../src/core/errors.js";
import {
  logProb, Penalties, Rng, sampleLogits, type SamplerOptions, samplingProbs, validateSamplerOptions,
} from "../src/core/sampling.js";
import type { Tokenizer } from "../src/core/tokenizer/types.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { readJson, sharedPath } from "./shared.js";

/* Golden: ChatRWKV PIPELINE.sample_logits (numpy branch) and a PIPELINE.generate trace (SPEC §10). */

interface SampleCase {
  logits: number[];
  temperature: number;
  top_p: number;
  top_k: number;
  final_probs: number[];
}
interface TraceStep {
  penalized_logits_of_candidates: Record<string, number>;
  final_probs_of_candidates: Record<string, number>;
  token: number;
}
interface SamplingGolden {
  sample_logits_cases: SampleCase[];
  generate_trace: {
    ctx: string;
    ctx_tokens: number[];
    candidates: Record<string, string>;
    args: {
      temperature: number; top_p: number; top_k: number;
      alpha_frequency: number; alpha_presence: number; alpha_decay: number;
      token_ban: number[]; token_stop: number[]; chunk_len: number;
    };
    steps: TraceStep[];
    output_string: string;
  };
}

/** The task's tolerance on a probability. */
const PROB_TOL = 1e-6;
/** The task's tolerance on a penalized logit (fp32 values around 5). */
const LOGIT_TOL = 1e-5;
const WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt";
/** The fake model's vocabulary: the World tokenizer's 65536 ids. */
const FAKE_VOCAB = 65536;
/** Fake model: logits = FAKE_FLOOR everywhere except candidates: FAKE_MEAN + FAKE_STD · randn. */
const FAKE_FLOOR = -20;
const FAKE_MEAN = 2;
const FAKE_STD = 1.5;
const FAKE_SEED_BASE = 1000;

function goldenPath(t: TestContext): string | null {
  return sharedPath(t, "golden", "sampling", "sampling_golden.json");
}

function loadWorld(t: TestContext): Tokenizer | null {
  const path = sharedPath(t, "tokenizers", WORLD_VOCAB_FILE);
  return path === null ? null : loadTokenizer({ kind: "world", path });
}

function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

test("samplingProbs reproduces every golden sample_logits vector (|dp| <= 1e-6)", (t) => {
  const path = goldenPath(t);
  if (path === null) return;
  const golden = readJson<SamplingGolden>(path);
  assert.ok(golden.sample_logits_cases.length > 0);
  for (const [k, c] of golden.sample_logits_cases.entries()) {
    const options: SamplerOptions = { temperature: c.temperature, topP: c.top_p, topK: c.top_k };
    const p = samplingProbs(Float32Array.from(c.logits), options);
    assert.equal(p.length, c.final_probs.length);
    for (let i = 0; i < p.length; i++) {
      const d = Math.abs(p[i] - c.final_probs[i]);
      assert.ok(d <= PROB_TOL, `case ${k} (${JSON.stringify(options)}) token ${i}: ${p[i]} vs ${c.final_probs[i]}`);
      // The support must match exactly: a filtered token is exactly 0, a kept one is not.
      assert.equal(p[i] === 0, c.final_probs[i] === 0, `case ${k} token ${i}: support differs`);
    }
  }
});

/* ---- generate trace: the fake model rebuilt with torch's CPU generator ---- */

/** MT19937, as torch.Generator().manual_seed(seed) on CPU. */
class Mt19937 {
  private static readonly N = 624;
  private static readonly M = 397;
  private readonly mt = new Uint32Array(Mt19937.N);
  private index = Mt19937.N;

  constructor(seed: number) {
    this.mt[0] = seed >>> 0;
    for (let i = 1; i < Mt19937.N; i++) {
      const prev = this.mt[i - 1] ^ (this.mt[i - 1] >>> 30);
      this.mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
  }

  nextUint32(): number {
    const { N, M } = Mt19937;
    if (this.index >= N) {
      for (let i = 0; i < N; i++) {
        const y = (this.mt[i] & 0x80000000) | (this.mt[(i + 1) % N] & 0x7fffffff);
        this.mt[i] = this.mt[(i + M) % N] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.index = 0;
    }
    let y = this.mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }
}

/**
 * torch.randn(n, generator=g) for n < 16 (the scalar path): at::normal_distribution<double> with
 * Box–Muller on two 53-bit uniforms from random64(), caching the sine half for the next element.
 */
function torchRandnSmall(seed: number, n: number): number[] {
  const g = new Mt19937(seed);
  const uniform = (): number => {
    const hi = g.nextUint32(), lo = g.nextUint32(); // random64() = hi << 32 | lo; its low 53 bits
    return ((hi & 0x1fffff) * 2 ** 32 + lo) / 2 ** 53;
  };
  const out: number[] = [];
  let cached: number | null = null;
  while (out.length < n) {
    if (cached !== null) { out.push(cached); cached = null; continue; }
    const u1 = uniform(), u2 = uniform();
    const r = Math.sqrt(-2 * Math.log1p(-u2));
    const theta = 2 * Math.PI * u1;
    cached = r * Math.sin(theta);
    out.push(r * Math.cos(theta));
  }
  return out;
}

/**
 * The candidate ids in the file's order (the order the fake model drew randn in). JSON.parse
 * cannot give it: integer-like keys always enumerate in ascending numeric order.
 */
function candidateOrder(rawJson: string): number[] {
  const start = rawJson.indexOf("\"candidates\"");
  assert.ok(start >= 0, "no candidates in the golden");
  const open = rawJson.indexOf("{", start);
  const entry = /\s*"(\d+)"\s*:\s*"(?:[^"\\]|\\.)*"\s*,?/y;
  entry.lastIndex = open + 1;
  const ids: number[] = [];
  let end = open + 1; // a failed sticky exec resets lastIndex, so remember where the last match ended
  for (let m = entry.exec(rawJson); m !== null; m = entry.exec(rawJson)) {
    ids.push(Number(m[1]));
    end = entry.lastIndex;
  }
  assert.ok(/^\s*\}/.test(rawJson.slice(end, end + 100)), "could not parse the candidates object");
  return ids;
}

/** The golden's fake model: fp32 logits, FAKE_FLOOR except the candidates (torch fp32 ops). */
function fakeModel(lastToken: number, candidates: readonly number[]): Float32Array {
  const logits = new Float32Array(FAKE_VOCAB).fill(FAKE_FLOOR);
  const z = torchRandnSmall(FAKE_SEED_BASE + lastToken, candidates.length);
  candidates.forEach((id, i) => { logits[id] = Math.fround(FAKE_MEAN + Math.fround(FAKE_STD * Math.fround(z[i]))); });
  return logits;
}

test("generate trace: Penalties + samplingProbs + argmax reproduce every step of PIPELINE.generate", (t) => {
  const path = goldenPath(t);
  if (path === null) return;
  const tokenizer = loadWorld(t);
  if (tokenizer === null) return;
  const raw = readFileSync(path, "utf8");
  const trace = (JSON.parse(raw) as SamplingGolden).generate_trace;
  const candidates = candidateOrder(raw);
  assert.deepEqual([...candidates].sort((a, b) => a - b), Object.keys(trace.candidates).map(Number).sort((a, b) => a - b));
  // The trace's candidate texts are what the World tokenizer decodes (the www rule depends on them).
  for (const id of candidates) assert.equal(tokenizer.decode([id]), trace.candidates[String(id)], `decode([${id}])`);
  assert.deepEqual(tokenizer.encode(trace.ctx), trace.ctx_tokens);

  const a = trace.args;
  assert.equal(a.token_stop.length, 0, "the trace has no stop tokens");
  const penalties = new Penalties({
    presencePenalty: a.alpha_presence, frequencyPenalty: a.alpha_frequency, penaltyDecay: a.alpha_decay, bannedTokens: a.token_ban,
  }, (ids) => tokenizer.decode(ids));
  const sampler: SamplerOptions = { temperature: a.temperature, topP: a.top_p, topK: a.top_k };

  let last = trace.ctx_tokens[trace.ctx_tokens.length - 1];
  const generated: number[] = [];
  for (const [s, step] of trace.steps.entries()) {
    const logits = fakeModel(last, candidates);
    if (s === 0) {
      // Nothing has been generated yet, so the recorded logits ARE the fake model's: this checks the rebuild.
      for (const id of candidates) {
        assert.ok(Math.abs(logits[id] - step.penalized_logits_of_candidates[String(id)]) <= LOGIT_TOL, `fake model logit ${id}`);
      }
    }
    penalties.apply(logits);
    for (const id of a.token_ban) assert.equal(logits[id], -Infinity, `step ${s}: token ${id} banned`);
    for (const id of candidates) {
      const want = step.penalized_logits_of_candidates[String(id)];
      assert.ok(Math.abs(logits[id] - want) <= LOGIT_TOL, `step ${s} token ${id}: penalized ${logits[id]} vs ${want}`);
    }
    const probs = samplingProbs(logits, sampler);
    let candidateMass = 0;
    for (const id of candidates) {
      const want = step.final_probs_of_candidates[String(id)];
      assert.ok(Math.abs(probs[id] - want) <= PROB_TOL, `step ${s} token ${id}: p ${probs[id]} vs ${want}`);
      candidateMass += probs[id];
    }
    assert.ok(Math.abs(candidateMass - 1) <= PROB_TOL, `step ${s}: top-p must cut every non-candidate`);
    const token = argmax(probs); // the trace replaced np.random.choice by argmax
    assert.equal(token, step.token, `step ${s}`);
    assert.equal(argmax(logits), token);
    penalties.record(token);
    generated.push(token);
    last = token;
  }
  assert.equal(tokenizer.decode(generated), trace.output_string);
});

test("Penalties: www substring rule, decay before adding, presence kept for weight-0 tokens", () => {
  const texts = new Map<number, string>([[1, " "], [2, "01"], [3, ""], [4, "a"], [5, " \t"], [6, "\t0"], [7, "x "]]);
  const p = new Penalties({ presencePenalty: 0.5, frequencyPenalty: 0.25, penaltyDecay: 0.5 }, (ids) => texts.get(ids[0]) ?? "?");
  for (const id of [1, 2, 3, 5]) p.record(id); // all substrings of ' \t0123456789': weight 0
  p.record(4); // 'a': weight 1
  p.record(7); // 'x ' is not a substring: weight 1
  p.record(6); // '\t0' IS a substring (index 1..2): weight 0
  // 4 was recorded then decayed twice (after 7 and after 6); 7 decayed once.
  assert.deepEqual(p.toJSON().occurrence, [[1, 0], [2, 0], [3, 0], [5, 0], [4, 0.25], [7, 0.5], [6, 0]]);
  const logits = new Float32Array(8);
  p.apply(logits);
  assert.equal(logits[0], 0, "never generated: no penalty");
  for (const id of [1, 2, 3, 5, 6]) assert.equal(logits[id], -0.5, `token ${id}: presence only`);
  assert.equal(logits[4], Math.fround(-(0.5 + 0.25 * 0.25)));
  assert.equal(logits[7], Math.fround(-(0.5 + 0.5 * 0.25)));
});

test("Penalties: defaults are the official PIPELINE_ARGS (0.2, 0.2, 0.996)", () => {
  const p = new Penalties(undefined, () => "a");
  p.record(3);
  p.record(3);
  const logits = new Float32Array(4);
  p.apply(logits);
  assert.equal(logits[3], Math.fround(-(0.2 + (1 * 0.996 + 1) * 0.2)));
  assert.deepEqual([logits[0], logits[1], logits[2]], [0, 0, 0]);
});

test("Penalties: bias, then bans, then penalties; out-of-range ids ignored", () => {
  const p = new Penalties({
    presencePenalty: 1, frequencyPenalty: 0, logitBias: new Map([[1, 2.5], [2, 100], [9, 1]]), bannedTokens: [2, 50],
  }, () => "z");
  p.record(1);
  const logits = Float32Array.from([0.5, 0.5, 0.5, 0.5]);
  p.apply(logits);
  assert.deepEqual(Array.from(logits), [0.5, 0.5 + 2.5 - 1, -Infinity, 0.5]);
});

test("Penalties: clone is independent; toJSON/fromJSON round-trips", () => {
  const decode = (ids: readonly number[]): string => `t${ids[0]}`;
  const options = { presencePenalty: 0.3, frequencyPenalty: 0.1, penaltyDecay: 0.9 };
  const p = new Penalties(options, decode);
  for (const id of [5, 7, 5, 9]) p.record(id);
  const c = p.clone();
  c.record(11);
  assert.notDeepEqual(c.toJSON(), p.toJSON());
  const json = JSON.parse(JSON.stringify(p)) as { occurrence: Array<[number, number]> };
  const back = Penalties.fromJSON(options, decode, json);
  assert.deepEqual(back.toJSON(), p.toJSON());
  const l1 = new Float32Array(12), l2 = new Float32Array(12);
  p.apply(l1);
  back.apply(l2);
  assert.deepEqual(l1, l2);
  assert.throws(() => Penalties.fromJSON(options, decode, { occurrence: [[-1, 1]] }), RwkvInputError);
  assert.throws(() => Penalties.fromJSON(options, decode, { occurrence: [[1, Number.NaN]] }), RwkvInputError);
});

test("Penalties: bad options name the option", () => {
  const decode = (): string => "";
  const cases: Array<[string, () => unknown]> = [
    ["presencePenalty", () => new Penalties({ presencePenalty: Number.NaN }, decode)],
    ["frequencyPenalty", () => new Penalties({ frequencyPenalty: Infinity }, decode)],
    ["penaltyDecay", () => new Penalties({ penaltyDecay: 1.5 }, decode)],
    ["bannedTokens", () => new Penalties({ bannedTokens: [1.5] }, decode)],
    ["logitBias", () => new Penalties({ logitBias: new Map([[1, Infinity]]) }, decode)],
  ];
  for (const [name, f] of cases) {
    assert.throws(f, (e: unknown) => e instanceof RwkvInputError && e.subject === name && e.message.startsWith(`${name}:`), name);
  }
});

/* ---- Rng ---- */

const DRAWS = 10_000;
const CHI_BINS = 10;
/** chi-square, 9 degrees of freedom, p = 0.001: a fixed seed, so this is a regression check, not a flaky one. */
const CHI2_9DOF_P001 = 27.88;

test("Rng: deterministic per seed, in [0, 1), clone continues identically", () => {
  const draw = (r: Rng, n: number): number[] => Array.from({ length: n }, () => r.next());
  assert.deepEqual(draw(new Rng(42), 100), draw(new Rng(42), 100));
  assert.notDeepEqual(draw(new Rng(42), 100), draw(new Rng(43), 100));
  assert.notDeepEqual(draw(new Rng(0), 100), draw(new Rng(-1), 100));
  assert.notDeepEqual(draw(new Rng(Number.MAX_SAFE_INTEGER), 100), draw(new Rng(Number.MIN_SAFE_INTEGER), 100));
  for (const seed of [0, 1, -7, 2 ** 32, Number.MAX_SAFE_INTEGER]) {
    for (const x of draw(new Rng(seed), 1000)) assert.ok(x >= 0 && x < 1, `seed ${seed}: ${x}`);
  }
  const r = new Rng(123);
  draw(r, 17);
  const c = r.clone();
  assert.deepEqual(draw(c, 50), draw(r, 50));
  c.next(); // advancing the clone leaves the original alone
  assert.deepEqual(draw(r.clone(), 5), draw(r, 5));
  assert.throws(() => new Rng(1.5), (e: unknown) => e instanceof RwkvInputError && e.subject === "seed");
  assert.throws(() => new Rng(2 ** 60), RwkvInputError);
});

test("Rng: 10k draws pass a chi-square uniformity check; mean ≈ 1/2", () => {
  for (const seed of [0, 1, 2024]) {
    const r = new Rng(seed);
    const bins = new Array<number>(CHI_BINS).fill(0);
    let sum = 0;
    for (let i = 0; i < DRAWS; i++) {
      const x = r.next();
      bins[Math.floor(x * CHI_BINS)]++;
      sum += x;
    }
    const expected = DRAWS / CHI_BINS;
    const chi2 = bins.reduce((acc, o) => acc + (o - expected) ** 2 / expected, 0);
    assert.ok(chi2 < CHI2_9DOF_P001, `seed ${seed}: chi2 ${chi2} bins ${bins.join(",")}`);
    // The mean of 10k uniforms has sd 1/sqrt(12·10k) ≈ 0.0029: 5 sd.
    assert.ok(Math.abs(sum / DRAWS - 0.5) < 0.015, `seed ${seed}: mean ${sum / DRAWS}`);
  }
});

/* ---- sampleLogits ---- */

/** A smooth 64-token distribution with a unique maximum at MAX_AT. */
const MAX_AT = 17;
function testLogits(): Float32Array {
  const l = new Float32Array(64);
  for (let i = 0; i < l.length; i++) l[i] = Math.sin(i * 1.3) * 2;
  l[MAX_AT] = 5;
  return l;
}

test("sampleLogits: same seed → same tokens; different seeds differ; draws stay in the support", () => {
  const logits = testLogits();
  const options: SamplerOptions = { temperature: 1.2, topP: 0.95 };
  const run = (seed: number): number[] => {
    const rng = new Rng(seed);
    return Array.from({ length: 200 }, () => sampleLogits(logits, options, rng));
  };
  const a = run(7);
  assert.deepEqual(run(7), a);
  assert.deepEqual(run(7), a);
  assert.notDeepEqual(run(8), a);
  const probs = samplingProbs(logits, options);
  for (const tok of a) assert.ok(probs[tok] > 0, `token ${tok} has p 0`);
  assert.ok(new Set(a).size > 3, "a real distribution should yield several tokens");
});

test("sampleLogits: temperature 0 and topK 1 pick the argmax; temperature 0 keeps ties", () => {
  const logits = testLogits();
  const rng = new Rng(1);
  for (let i = 0; i < 50; i++) {
    assert.equal(sampleLogits(logits, { temperature: 0 }, rng), MAX_AT);
    assert.equal(sampleLogits(logits, { topK: 1, topP: 1 }, rng), MAX_AT);
  }
  const tied = Float32Array.from([1, 3, 0, 3, 2]);
  const p = samplingProbs(tied, { temperature: 0 });
  assert.deepEqual(Array.from(p), [0, 0.5, 0, 0.5, 0]);
  const seen = new Set<number>();
  for (let i = 0; i < 100; i++) seen.add(sampleLogits(tied, { temperature: 0 }, rng));
  assert.deepEqual([...seen].sort(), [1, 3]);
});

test("samplingProbs: top_p = 1.0 collapses when the fp32 cumsum ends below 1 (official quirk)", () => {
  // softmax([0,0,0,2.25]) in fp32 sums to 0.99999994 in the cumsum, so no index reaches 1.0 and
  // argmax(all False) = 0 makes the top token the cutoff.
  assert.deepEqual(Array.from(samplingProbs(Float32Array.from([0, 0, 0, 2.25]), { topP: 1 })), [0, 0, 0, 1]);
});

test("samplingProbs: topK ties keep the highest indices; minP filters relative to p_max", () => {
  // Stable ascending argsort: of the tied 1.0 logits (ids 1, 2, 4) the later ones survive top_k.
  const tied = Float32Array.from([3, 1, 1, 0, 1]);
  const p = samplingProbs(tied, { topP: 0.99, topK: 3 });
  assert.deepEqual(Array.from(p).map((x) => x > 0), [true, false, true, false, true]);

  // probs ∝ [8, 4, 2, 1]: p_max = 8/15; minP 0.3 keeps p ≥ 2.4/15 (ids 0, 1); minP 0.25 keeps id 2 too.
  const logits = Float32Array.from([8, 4, 2, 1].map(Math.log));
  const keep = (minP: number): boolean[] => Array.from(samplingProbs(logits, { topP: 0.9999, minP, temperature: 1 })).map((x) => x > 0);
  assert.deepEqual(keep(0), [true, true, true, true]);
  assert.deepEqual(keep(0.3), [true, true, false, false]);
  assert.deepEqual(keep(0.25), [true, true, true, false]);
  assert.deepEqual(keep(1), [true, false, false, false]);
  const q = samplingProbs(logits, { topP: 0.9999, minP: 0.3 });
  assert.ok(Math.abs(q[0] - 2 / 3) < PROB_TOL && Math.abs(q[1] - 1 / 3) < PROB_TOL);
  const rng = new Rng(5);
  for (let i = 0; i < 200; i++) assert.ok(sampleLogits(logits, { topP: 0.9999, minP: 0.3 }, rng) <= 1);
});

test("samplingProbs: a tiny temperature that underflows fp32 still gives a distribution", () => {
  const p = samplingProbs(Float32Array.from([0, 0.1, 0.2]), { topP: 1, temperature: 0.001 });
  assert.ok(p.every((x) => Number.isFinite(x)));
  assert.equal(p[2], 1);
});

test("samplingProbs and logProb: unusable logits are input errors", () => {
  assert.throws(() => samplingProbs(Float32Array.from([0, Number.NaN])), (e: unknown) => e instanceof RwkvInputError && e.subject === "logits");
  assert.throws(() => samplingProbs(Float32Array.from([-Infinity, -Infinity])), RwkvInputError);
  assert.throws(() => samplingProbs(new Float32Array(0)), RwkvInputError);
  assert.throws(() => logProb(Float32Array.from([0, 1]), 2), (e: unknown) => e instanceof RwkvInputError && e.subject === "token");
});

test("logProb: stable float64 log-softmax", () => {
  const logits = Float32Array.from([1000, 1001, 999, -Infinity]);
  const lse = 1001 + Math.log(Math.exp(-1) + 1 + Math.exp(-2));
  assert.ok(Math.abs(logProb(logits, 1) - (1001 - lse)) < 1e-12);
  assert.ok(Math.abs(logProb(logits, 2) - (999 - lse)) < 1e-12);
  assert.equal(logProb(logits, 3), -Infinity);
  const l = testLogits();
  let total = 0;
  for (let i = 0; i < l.length; i++) total += Math.exp(logProb(l, i));
  assert.ok(Math.abs(total - 1) < 1e-12);
});

test("validateSamplerOptions: errors name the parameter", () => {
  const bad: Array<[string, SamplerOptions]> = [
    ["temperature", { temperature: -0.1 }], ["temperature", { temperature: Number.NaN }], ["temperature", { temperature: Infinity }],
    ["topP", { topP: 1.5 }], ["topP", { topP: -0.01 }], ["topP", { topP: Number.NaN }],
    ["topK", { topK: -1 }], ["topK", { topK: 2.5 }], ["topK", { topK: Number.NaN }],
    ["minP", { minP: 1.01 }], ["minP", { minP: -1 }], ["minP", { minP: Number.NaN }],
  ];
  for (const [name, o] of bad) {
    assert.throws(() => validateSamplerOptions(o), (e: unknown) => e instanceof RwkvInputError && e.subject === name && e.message.startsWith(`${name}:`), JSON.stringify(o));
    // samplingProbs validates too, so no caller can skip it.
    assert.throws(() => samplingProbs(Float32Array.from([0, 1]), o), RwkvInputError);
  }
  for (const o of [{}, { temperature: 0 }, { temperature: 2, topP: 0, topK: 0, minP: 0 }, { topP: 1, topK: 50, minP: 1 }]) {
    assert.doesNotThrow(() => validateSamplerOptions(o));
  }
});
