import { RwkvInputError } from "./errors.js";

/*
 * Sampling and repetition penalties, numerically as the official ChatRWKV code does them
 * (rwkv_pip_package/src/rwkv/utils.py: PIPELINE.sample_logits, CPU/numpy branch, and
 * PIPELINE.generate). SPEC §10.1–10.2.
 *
 * The official sampler works on fp32 torch/numpy arrays, and some of its decisions hinge on
 * the last bit of an fp32 sum (top_p = 1.0 keeps only the top token when the fp32 cumulative
 * sum ends at 0.99999994), so every step that numpy or torch does in fp32 is done here with
 * Math.fround, in the same order of operations:
 *   - softmax as ATen's vectorized CPU kernel (AVX2, 8 lanes): max, exp(x - max) in fp32, a
 *     lane-wise fp32 sum folded by a shuffle tree, then multiplication by the fp32 reciprocal;
 *   - the cumulative sum as numpy's cumsum (sequential fp32 adds), compared with fp32(top_p);
 *   - probs ** fp32(1/T) (numpy casts the Python float exponent to the array's fp32);
 *   - np.sum as numpy's pairwise fp32 summation, then an fp32 division.
 * On the golden vectors this reproduces 18 of 24 cases bit for bit and the rest within 2.3e-8
 * (exp and pow differ from Sleef/glibc in the last bit), and the generate trace bit for bit.
 */

/* ------------------------------------------------------------------------------------------ */
/* Rng                                                                                          */
/* ------------------------------------------------------------------------------------------ */

const MASK64 = (1n << 64n) - 1n;
const SPLITMIX_GAMMA = 0x9e3779b97f4a7c15n;
const SPLITMIX_MUL1 = 0xbf58476d1ce4e5b9n;
const SPLITMIX_MUL2 = 0x94d049bb133111ebn;
const UINT32_MASK = 0xffffffffn;
/** next() takes 53 random bits (a double's mantissa): 27 from one output, 26 from the next. */
const TWO_POW_26 = 2 ** 26;
const TWO_POW_53 = 2 ** 53;

/**
 * Seeded PRNG: xoshiro128** (Blackman & Vigna), its 128-bit state filled from the seed with
 * splitmix64 (the seeding the xoshiro authors recommend: nearby seeds give unrelated streams).
 * Only 32-bit integer arithmetic (Math.imul, shifts) after seeding, so every platform produces
 * the same sequence.
 */
export class Rng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new RwkvInputError("seed", `must be a safe integer, got ${seed}`);
    // BigInt only here: splitmix64 needs 64-bit multiplies; negative seeds wrap modulo 2^64.
    let state = BigInt.asUintN(64, BigInt(seed));
    const words: number[] = [];
    for (let i = 0; i < 2; i++) {
      state = (state + SPLITMIX_GAMMA) & MASK64;
      let z = state;
      z = ((z ^ (z >> 30n)) * SPLITMIX_MUL1) & MASK64;
      z = ((z ^ (z >> 27n)) * SPLITMIX_MUL2) & MASK64;
      z ^= z >> 31n;
      words.push(Number(z & UINT32_MASK) | 0, Number(z >> 32n) | 0);
    }
    [this.s0, this.s1, this.s2, this.s3] = words;
    // xoshiro's one forbidden state; splitmix64 practically never yields it, but never is cheap.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** The next 32-bit output of xoshiro128**, as an unsigned integer. */
  private nextUint32(): number {
    const s1 = this.s1;
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits (so even p ≈ 1e-12 tokens get their share). */
  next(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * TWO_POW_26 + lo) / TWO_POW_53;
  }

  /** The full generator state, e.g. to save with a conversation and continue the same stream later. */
  toJSON(): { xoshiro128ss: [number, number, number, number] } {
    return { xoshiro128ss: [this.s0 >>> 0, this.s1 >>> 0, this.s2 >>> 0, this.s3 >>> 0] };
  }

  static fromJSON(json: { xoshiro128ss: readonly number[] }): Rng {
    const s = json?.xoshiro128ss;
    if (!Array.isArray(s) || s.length !== 4 || !s.every((w) => Number.isInteger(w) && w >= 0 && w <= 0xffffffff) || s.every((w) => w === 0)) {
      throw new RwkvInputError("rng state", "must be four unsigned 32-bit words, not all zero");
    }
    const r = new Rng(0);
    [r.s0, r.s1, r.s2, r.s3] = s.map((w) => w | 0);
    return r;
  }

  /** An independent copy that continues with exactly the same sequence. */
  clone(): Rng {
    const c = new Rng(0);
    c.s0 = this.s0; c.s1 = this.s1; c.s2 = this.s2; c.s3 = this.s3;
    return c;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/* ------------------------------------------------------------------------------------------ */
/* Sampler                                                                                      */
/* ------------------------------------------------------------------------------------------ */

export interface SamplerOptions {
  /** Default 1.0. 0 means what the official code does: temperature = 1 with top_p = 0 (keeps every token tied with the max). */
  temperature?: number;
  /** Default 0.85 (official PIPELINE_ARGS default). 1.0 is not a no-op: see SPEC §10.1. */
  topP?: number;
  /** Default 0 = off. */
  topK?: number;
  /**
   * Default 0 = off. Not in the official code: drops tokens with p < minP · p_max, where p are the
   * softmax probabilities BEFORE temperature (the same vector top-p and top-k look at), so the three
   * filters are all masks over one distribution and their order does not matter.
   */
  minP?: number;
}

const DEFAULT_TEMPERATURE = 1.0;
const DEFAULT_TOP_P = 0.85;
const DEFAULT_TOP_K = 0;
const DEFAULT_MIN_P = 0;

/** Validates options; throws RwkvInputError whose subject is the bad option's name. */
export function validateSamplerOptions(o: SamplerOptions): void {
  const t = o.temperature;
  // Infinite temperature would make every probability p^0 = 1, including the filtered ones.
  if (t !== undefined && !(Number.isFinite(t) && t >= 0)) throw new RwkvInputError("temperature", `must be a finite number >= 0, got ${t}`);
  checkUnitInterval("topP", o.topP);
  checkUnitInterval("minP", o.minP);
  const k = o.topK;
  if (k !== undefined && !(Number.isSafeInteger(k) && k >= 0)) throw new RwkvInputError("topK", `must be an integer >= 0 (0 = off), got ${k}`);
}

function checkUnitInterval(name: string, v: number | undefined): void {
  if (v !== undefined && !(v >= 0 && v <= 1)) throw new RwkvInputError(name, `must be in [0, 1], got ${v}`);
}

/** ATen's CPU Vectorized<float> width with AVX2, which fixes the order of the softmax sum. */
const ATEN_FLOAT_LANES = 8;

/**
 * F.softmax(logits.float()) as ATen's vectorized last-dim CPU kernel computes it in fp32. The exact
 * summation order matters: it decides whether the later fp32 cumsum reaches 1.0 (top_p = 1.0).
 * Throws when no finite distribution exists (NaN, +Infinity, or every logit -Infinity).
 */
function softmaxF32(logits: Float32Array): Float32Array {
  const n = logits.length;
  if (n === 0) throw new RwkvInputError("logits", "is empty");
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = logits[i];
    if (Number.isNaN(x)) throw new RwkvInputError("logits", `contains NaN at index ${i}`);
    if (x > max) max = x;
  }
  if (max === Infinity) throw new RwkvInputError("logits", "contains +Infinity");
  if (max === -Infinity) throw new RwkvInputError("logits", "every logit is -Infinity (all tokens banned?)");
  const e = new Float32Array(n);
  for (let i = 0; i < n; i++) e[i] = Math.exp(Math.fround(logits[i] - max)); // Float32Array stores round to fp32
  const inv = Math.fround(1 / atenSum(e));
  for (let i = 0; i < n; i++) e[i] = e[i] * inv;
  return e;
}

/** vec::reduce_all(+) over fp32: lane-wise accumulation, then the AVX2 shuffle tree (or a plain loop below one vector). */
function atenSum(a: Float32Array): number {
  const n = a.length;
  const L = ATEN_FLOAT_LANES;
  if (n < L) {
    let s = 0;
    for (let i = 0; i < n; i++) s = Math.fround(s + a[i]);
    return s;
  }
  const acc = a.slice(0, L);
  const full = n - (n % L);
  for (let d = L; d < full; d += L) {
    for (let j = 0; j < L; j++) acc[j] += a[d + j]; // stored back as fp32
  }
  for (let j = 0; full + j < n; j++) acc[j] += a[full + j];
  // Shuffle tree: lane i += lane i + 4, then i + 2, then i + 1.
  for (let h = L >> 1; h >= 1; h >>= 1) {
    for (let j = 0; j < h; j++) acc[j] += acc[j + h];
  }
  return acc[0];
}

/** numpy's unrolled block size in pairwise summation. */
const NUMPY_PW_BLOCKSIZE = 128;
const NUMPY_PW_UNROLL = 8;

/** np.sum of a float32 array: numpy's pairwise summation with fp32 accumulators, bit for bit. */
function numpyPairwiseSum(a: Float32Array, start: number, n: number): number {
  if (n < NUMPY_PW_UNROLL) {
    let res = 0;
    for (let i = 0; i < n; i++) res = Math.fround(res + a[start + i]);
    return res;
  }
  if (n <= NUMPY_PW_BLOCKSIZE) {
    const r = a.slice(start, start + NUMPY_PW_UNROLL);
    let i = NUMPY_PW_UNROLL;
    for (; i < n - (n % NUMPY_PW_UNROLL); i += NUMPY_PW_UNROLL) {
      for (let j = 0; j < NUMPY_PW_UNROLL; j++) r[j] += a[start + i + j];
    }
    const f = Math.fround;
    let res = f(f(f(r[0] + r[1]) + f(r[2] + r[3])) + f(f(r[4] + r[5]) + f(r[6] + r[7])));
    for (; i < n; i++) res = f(res + a[start + i]);
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % NUMPY_PW_UNROLL;
  return Math.fround(numpyPairwiseSum(a, start, n2) + numpyPairwiseSum(a, start + n2, n - n2));
}

/** Each pass of the prefix search lowers tau by this factor (starting at p_max · factor). */
const PREFIX_TAU_STEP = 2 ** -10;
/** Below this tau, or once more than 1/this of the vocabulary qualifies, sort everything. */
const PREFIX_TAU_FLOOR = 1e-30;
const PREFIX_FULL_SORT_FRACTION = 4;

/** The values ≥ tau, sorted ascending. */
function valuesAtLeast(probs: Float32Array, tau: number): Float32Array {
  if (tau === 0) return sortNonNegative(probs.slice());
  let m = 0;
  for (let i = 0; i < probs.length; i++) if (probs[i] >= tau) m++;
  const top = new Float32Array(m);
  m = 0;
  for (let i = 0; i < probs.length; i++) if (probs[i] >= tau) top[m++] = probs[i];
  return sortNonNegative(top);
}

/** From this length on, a radix sort beats the built-in typed-array sort (≈ 8 ms for 65536 floats). */
const RADIX_SORT_MIN = 2048;
const RADIX_BITS = 16;
const RADIX_MASK = (1 << RADIX_BITS) - 1;

/**
 * Sorts non-negative floats ascending (in place when short). Their IEEE bit patterns order like
 * unsigned integers, so a two-pass LSD radix sort on the Uint32 view sorts the values exactly.
 */
function sortNonNegative(a: Float32Array): Float32Array {
  if (a.length < RADIX_SORT_MIN) return a.sort();
  const keys = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const tmp = new Uint32Array(a.length);
  const count = new Uint32Array(RADIX_MASK + 2);
  let src: Uint32Array = keys, dst: Uint32Array = tmp;
  for (let shift = 0; shift < 32; shift += RADIX_BITS) {
    count.fill(0);
    for (let i = 0; i < src.length; i++) count[((src[i] >>> shift) & RADIX_MASK) + 1]++;
    for (let b = 1; b < count.length; b++) count[b] += count[b - 1];
    for (let i = 0; i < src.length; i++) dst[count[(src[i] >>> shift) & RADIX_MASK]++] = src[i];
    [src, dst] = [dst, src];
  }
  return a; // an even number of passes (32 / RADIX_BITS) leaves the result in `keys`, a's own bytes
}

/**
 * The probability vector the official sample_logits hands to np.random.choice, plus min-p:
 * fp32 softmax; descending fp32 cumsum; cutoff = the first sorted prob whose cumsum reaches top_p
 * (the largest when none does); probs < cutoff zeroed (ties with the cutoff kept); top-k keeps the
 * k largest of the original probs; probs ** (1/T); divided by their sum. Zero entries are exactly 0.
 */
export function samplingProbs(logits: Float32Array, options: SamplerOptions = {}): Float32Array {
  validateSamplerOptions(options);
  let temperature = options.temperature ?? DEFAULT_TEMPERATURE;
  let topP = options.topP ?? DEFAULT_TOP_P;
  const topK = options.topK ?? DEFAULT_TOP_K;
  const minP = options.minP ?? DEFAULT_MIN_P;
  if (temperature === 0) { temperature = 1; topP = 0; } // exactly the official "greedy"

  const probs = softmaxF32(logits);
  const n = probs.length;
  let pMax = 0;
  for (let i = 0; i < n; i++) if (probs[i] > pMax) pMax = probs[i];
  const useTopK = topK > 0 && topK < n;

  // numpy sorts the whole vector, but only its descending prefix matters: the cumsum up to the
  // first entry reaching top_p, and the k-th largest value. Tied values are interchangeable in a
  // cumsum and top-k ties are resolved below without an argsort, so the sorted VALUES of every
  // prob ≥ tau are exactly that prefix whenever the prefix ends there. Start with a high tau and
  // lower it until it does (tau = 0 sorts everything, e.g. when top_p is never reached).
  const target = Math.fround(topP); // numpy compares the fp32 cumsum with top_p cast to fp32
  let tau = pMax * PREFIX_TAU_STEP;
  let top: Float32Array; // ascending: every prob ≥ tau
  let cutoff: number;
  for (;;) {
    top = valuesAtLeast(probs, tau);
    const m = top.length;
    let reached = -1;
    let cum = 0;
    for (let j = m - 1; j >= 0; j--) { // np.cumsum: sequential fp32 adds, largest first
      cum = Math.fround(cum + top[j]);
      if (cum >= target) { reached = j; break; }
    }
    // argmax of an all-False mask is 0: then the largest probability is the cutoff.
    if ((reached >= 0 || tau === 0) && (!useTopK || m >= topK)) {
      cutoff = reached >= 0 ? top[reached] : pMax;
      break;
    }
    tau = m * PREFIX_FULL_SORT_FRACTION > n || tau < PREFIX_TAU_FLOOR ? 0 : tau * PREFIX_TAU_STEP;
  }

  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = probs[i] < cutoff ? 0 : probs[i];

  // probs[sorted_ids[:-top_k]] = 0 with sorted_ids = argsort(probs), on the ORIGINAL probs. Ties at
  // the k-th value: a stable ascending argsort puts higher indices later, so they are the ones kept.
  // That is what numpy does for small vectors (insertion sort, n ≤ 16) and what the golden case with
  // ties expects; for large vocabularies numpy's quicksort/SIMD sort leaves the tie order unspecified.
  if (useTopK) {
    const m = top.length;
    const kth = top[m - topK];
    let tiesKept = topK;
    for (let j = m - 1; j >= m - topK; j--) if (top[j] > kth) tiesKept--;
    for (let i = n - 1; i >= 0; i--) {
      if (probs[i] < kth) out[i] = 0;
      else if (probs[i] === kth) {
        if (tiesKept > 0) tiesKept--;
        else out[i] = 0;
      }
    }
  }

  if (minP > 0) {
    const threshold = minP * pMax; // minP ≤ 1 keeps the top token (and its ties) always
    for (let i = 0; i < n; i++) if (probs[i] < threshold) out[i] = 0;
  }

  if (temperature !== 1) {
    const filtered = out.slice();
    // numpy: float32_array ** python_float → the exponent is cast to fp32, powf per element.
    const exponent = Math.fround(1 / temperature);
    for (let i = 0; i < n; i++) if (out[i] > 0) out[i] = Math.pow(out[i], exponent);
    if (!(numpyPairwiseSum(out, 0, n) > 0)) {
      // Only a tiny temperature gets here: every p ** (1/T) underflowed in fp32, and the official
      // code would hand NaNs to np.random.choice (which raises). Redo the power relative to the
      // largest kept probability (the same distribution mathematically), so the top token gets 1.
      let keptMax = 0;
      for (let i = 0; i < n; i++) keptMax = Math.max(keptMax, filtered[i]);
      for (let i = 0; i < n; i++) out[i] = filtered[i] > 0 ? Math.pow(filtered[i] / keptMax, 1 / temperature) : 0;
    }
  }

  const sum = numpyPairwiseSum(out, 0, n);
  for (let i = 0; i < n; i++) out[i] = out[i] / sum; // fp32 division (the store rounds)
  return out;
}

/**
 * Draws a token from samplingProbs with one rng.next(): inverse CDF over the vector, as
 * np.random.choice does it (the CDF is scaled by its own total, so rounding in the probabilities
 * never shifts mass onto the last token, and a zero-probability token is never returned).
 */
export function sampleLogits(logits: Float32Array, options: SamplerOptions | undefined, rng: Rng): number {
  const probs = samplingProbs(logits, options);
  let total = 0;
  for (let i = 0; i < probs.length; i++) total += probs[i];
  const u = rng.next() * total;
  let acc = 0;
  let last = -1;
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i];
    if (p === 0) continue;
    acc += p;
    last = i;
    if (u < acc) return i; // searchsorted(cdf, u, side="right")
  }
  return last; // unreachable in exact arithmetic (u < total); kept for safety
}

/** log softmax(logits)[token], in float64 with the max subtracted first. */
export function logProb(logits: Float32Array, token: number): number {
  if (!Number.isInteger(token) || token < 0 || token >= logits.length) {
    throw new RwkvInputError("token", `${token} is outside the vocabulary (0..${logits.length - 1})`);
  }
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const x = logits[i];
    if (Number.isNaN(x)) throw new RwkvInputError("logits", `contains NaN at index ${i}`);
    if (x > max) max = x;
  }
  if (max === Infinity) throw new RwkvInputError("logits", "contains +Infinity");
  if (max === -Infinity) throw new RwkvInputError("logits", "every logit is -Infinity");
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return logits[token] - max - Math.log(sum);
}

/* ------------------------------------------------------------------------------------------ */
/* Penalties                                                                                    */
/* ------------------------------------------------------------------------------------------ */

export interface PenaltyOptions {
  /** Default 0.2 (official alpha_presence). */
  presencePenalty?: number;
  /** Default 0.2 (official alpha_frequency). */
  frequencyPenalty?: number;
  /** Default 0.996 (official alpha_decay), in [0, 1]. */
  penaltyDecay?: number;
  /** Added to logits (finite, or -Infinity). Ids past the logits' length are ignored. */
  logitBias?: ReadonlyMap<number, number>;
  /** Logits set to -Infinity. Ids past the logits' length are ignored (nothing to ban). */
  bannedTokens?: readonly number[];
}

const DEFAULT_PRESENCE = 0.2;
const DEFAULT_FREQUENCY = 0.2;
const DEFAULT_DECAY = 0.996;
/**
 * PIPELINE.generate: `www = 0 if decode([token]) in ' \t0123456789' else 1` — a Python SUBSTRING
 * test, so ' ', '\t', '7', '01', ' \t' and '' count 0 (yet still get the presence penalty).
 */
const UNWEIGHTED_TEXT = " \t0123456789";

/** The official PIPELINE.generate repetition-penalty bookkeeping. */
export class Penalties {
  private readonly presence: number;
  private readonly frequency: number;
  private readonly decay: number;
  private readonly bias: ReadonlyArray<readonly [number, number]>;
  private readonly banned: readonly number[];
  /** token → decayed, www-weighted count; insertion-ordered like the official dict. */
  private occurrence = new Map<number, number>();

  constructor(private readonly options: PenaltyOptions | undefined, private readonly decode: (ids: readonly number[]) => string) {
    const o = options ?? {};
    this.presence = finiteOption("presencePenalty", o.presencePenalty, DEFAULT_PRESENCE);
    this.frequency = finiteOption("frequencyPenalty", o.frequencyPenalty, DEFAULT_FREQUENCY);
    this.decay = finiteOption("penaltyDecay", o.penaltyDecay, DEFAULT_DECAY);
    if (this.decay < 0 || this.decay > 1) throw new RwkvInputError("penaltyDecay", `must be in [0, 1], got ${this.decay}`);
    const bias: Array<[number, number]> = [];
    for (const [token, b] of o.logitBias ?? []) {
      checkTokenId("logitBias", token);
      // +Infinity would make softmax NaN; -Infinity is a ban and is fine.
      if (Number.isNaN(b) || b === Infinity) throw new RwkvInputError("logitBias", `bias for token ${token} must be finite or -Infinity, got ${b}`);
      bias.push([token, b]);
    }
    this.bias = bias;
    for (const token of o.bannedTokens ?? []) checkTokenId("bannedTokens", token);
    this.banned = [...(o.bannedTokens ?? [])];
  }

  /**
   * In place: logit bias, then bans (official `out[n] = -inf`), then the presence + frequency
   * penalties (official `out[n] -= alpha_presence + occurrence[n] * alpha_frequency`). The bias goes
   * first because it reshapes the model's distribution as a fixed edit, like the chat scripts'
   * `out[0] = -1e9` / newline adjustments, and because then a ban always wins (-Infinity whatever the
   * bias) and the penalties act on the biased logits. The penalty is cast to fp32 before the fp32
   * subtraction, as torch does with a Python scalar.
   */
  apply(logits: Float32Array): void {
    const n = logits.length;
    for (const [token, b] of this.bias) if (token < n) logits[token] += b;
    for (const token of this.banned) if (token < n) logits[token] = -Infinity;
    for (const [token, count] of this.occurrence) {
      if (token < n) logits[token] = logits[token] - Math.fround(this.presence + count * this.frequency);
    }
  }

  /** After sampling `token`: decay every count, then add the token with weight www (0 or 1). */
  record(token: number): void {
    checkTokenId("token", token);
    for (const [t, count] of this.occurrence) this.occurrence.set(t, count * this.decay);
    const www = UNWEIGHTED_TEXT.includes(this.decode([token])) ? 0 : 1;
    this.occurrence.set(token, (this.occurrence.get(token) ?? 0) + www);
  }

  clone(): Penalties {
    const c = new Penalties(this.options, this.decode);
    c.occurrence = new Map(this.occurrence);
    return c;
  }

  /** Serializable snapshot of the counts (options and decode are not state: pass them to fromJSON). */
  toJSON(): { occurrence: Array<[number, number]> } {
    return { occurrence: [...this.occurrence] };
  }

  static fromJSON(options: PenaltyOptions | undefined, decode: (ids: readonly number[]) => string, json: { occurrence: Array<[number, number]> }): Penalties {
    const p = new Penalties(options, decode);
    if (!json || !Array.isArray(json.occurrence)) throw new RwkvInputError("penalties", "occurrence must be an array of [token, count] pairs");
    for (const entry of json.occurrence) {
      if (!Array.isArray(entry) || entry.length !== 2) throw new RwkvInputError("penalties", "occurrence must be an array of [token, count] pairs");
      const [token, count] = entry;
      checkTokenId("penalties", token);
      if (typeof count !== "number" || !Number.isFinite(count) || count < 0) throw new RwkvInputError("penalties", `count for token ${token} must be a finite number >= 0, got ${String(count)}`);
      p.occurrence.set(token, count);
    }
    return p;
  }
}

function finiteOption(name: string, v: number | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  if (!Number.isFinite(v)) throw new RwkvInputError(name, `must be a finite number, got ${v}`);
  return v;
}

function checkTokenId(subject: string, token: unknown): asserts token is number {
  if (typeof token !== "number" || !Number.isSafeInteger(token) || token < 0) {
    throw new RwkvInputError(subject, `token ids must be integers >= 0, got ${String(token)}`);
  }
}
