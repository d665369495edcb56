import { f32ToBf16, f32ToF16 } from "../tensor.js";
import { QK } from "./ggml-quants.js";

/*
 * Encoders for ggml's legacy block formats, reproducing ggml's reference quantizers
 * (`quantize_row_q4_0_ref` ... `quantize_row_q8_0_ref` in ggml-quants.c) bit for bit: rwkv.cpp's
 * quantizer and llama.cpp's converter both call them, so files written here can be compared byte
 * for byte with theirs.
 *
 * The C code computes in `float`. Every intermediate here is rounded with Math.fround, which gives
 * the same result as the float operation (double rounding is innocuous for + - * / from double to
 * float). Casts follow C: `(int8_t)` / `(uint8_t)` of a float truncate toward zero, `roundf` rounds
 * half away from zero. The f16 scales use ggml's FP32->FP16 conversion, round to nearest even.
 */

export type QuantDType = "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q8_0";

const HALF = QK / 2;
const F16_BYTES = 2;
const QH_BYTES = 4;

/** Bytes of one 32-element block per type (the layout ggml-quants.ts decodes). */
export const QUANT_BLOCK_BYTES: Readonly<Record<QuantDType, number>> = {
  q4_0: F16_BYTES + HALF,
  q4_1: 2 * F16_BYTES + HALF,
  q5_0: F16_BYTES + QH_BYTES + HALF,
  q5_1: 2 * F16_BYTES + QH_BYTES + HALF,
  q8_0: F16_BYTES + QK,
};

// Quantization levels: 4-bit codes 0..15, 5-bit codes 0..31, 8-bit symmetric -127..127.
const Q4_LEVELS = 15;
const Q5_LEVELS = 31;
const Q4_0_DIVISOR = -8;
const Q5_0_DIVISOR = -16;
const Q8_MAX = 127;
const Q4_OFFSET = 8.5; // code = (int8)(x/d + 8.5): rounds to the nearest of the 16 levels around 8
const Q5_OFFSET = 16.5;
const ROUND_HALF = 0.5;
const FIFTH_BIT = 0x10;
const LOW_NIBBLE = 0x0f;

const fr = Math.fround;

/** C's truncating float -> integer cast. */
const trunc = Math.trunc;

/** C `roundf`: half away from zero. */
function roundf(x: number): number {
  return x < 0 ? -Math.floor(-x + ROUND_HALF) : Math.floor(x + ROUND_HALF);
}

/** Bytes for `count` elements (a multiple of 32) of a quantized type. */
export function quantizedBytes(type: QuantDType, count: number): number {
  if (count % QK !== 0) throw new RangeError(`${type}: ${count} elements is not a multiple of the block size ${QK}`);
  return (count / QK) * QUANT_BLOCK_BYTES[type];
}

export interface QuantizeOptions {
  /**
   * Evaluate `x*id + offset` as one fused multiply-add (a single rounding), as a ggml build does
   * when the C compiler contracts it (GCC's default -ffp-contract=fast with FMA enabled, e.g.
   * -march=native). The reference C semantics (two roundings) is the default. Only the codes of
   * values that land exactly on a rounding boundary differ; Q8_0 has no such expression.
   */
  readonly fusedMultiplyAdd?: boolean;
}

/**
 * Quantizes `x` (length a multiple of 32; blocks run along the contiguous axis, so a row-major
 * matrix whose row length is a multiple of 32 is quantized row by row exactly as ggml does).
 */
export function quantize(type: QuantDType, x: Float32Array, options: QuantizeOptions = {}): Uint8Array {
  const out = new Uint8Array(quantizedBytes(type, x.length));
  const dv = new DataView(out.buffer);
  const bb = QUANT_BLOCK_BYTES[type];
  const madd = options.fusedMultiplyAdd ? fmaf : mulAdd;
  for (let b = 0, o = 0; o < x.length; b += bb, o += QK) {
    switch (type) {
      case "q4_0": blockQ4_0(x, o, out, dv, b, madd); break;
      case "q4_1": blockQ4_1(x, o, out, dv, b, madd); break;
      case "q5_0": blockQ5_0(x, o, dv, out, b, madd); break;
      case "q5_1": blockQ5_1(x, o, dv, out, b, madd); break;
      case "q8_0": blockQ8_0(x, o, dv, b); break;
    }
  }
  return out;
}

type MulAdd = (a: number, b: number, c: number) => number;

/** float `a*b + c` with the product rounded first (C without contraction). */
function mulAdd(a: number, b: number, c: number): number {
  return fr(fr(a * b) + c);
}

/**
 * C `fmaf`: a*b + c rounded once to float. The product of two floats is exact in a double; the
 * sum s = p + c is rounded to double with error e (TwoSum). Rounding s to float is then correct
 * unless s lies exactly halfway between two floats and e != 0, where e decides the direction.
 */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const bv = s - p;
  const e = (p - (s - bv)) + (c - bv);
  const r = fr(s);
  if (e === 0 || r === s) return r;
  // Is s the midpoint between r and its neighbour on s's side? Then e breaks the tie.
  const other = nextFloatToward(r, s);
  if ((r + other) / 2 !== s) return r;
  return (e > 0) === (other > r) ? other : r;
}

const f32one = new Float32Array(1);
const u32one = new Uint32Array(f32one.buffer);

/** The float adjacent to `r` in the direction of `toward` (r is a float, toward != r). */
function nextFloatToward(r: number, toward: number): number {
  f32one[0] = r;
  if (r === 0) { u32one[0] = 1; return toward > 0 ? f32one[0] : -f32one[0]; }
  u32one[0] += (toward > r) === (r > 0) ? 1 : -1;
  return f32one[0];
}

/** The element of largest magnitude (the first one on ties), signed: ggml's `max` in the _0 types. */
function signedAbsMax(x: Float32Array, o: number): number {
  let amax = 0, max = 0;
  for (let j = 0; j < QK; j++) {
    const v = x[o + j];
    if (amax < Math.abs(v)) { amax = Math.abs(v); max = v; }
  }
  return max;
}

function minMax(x: Float32Array, o: number): [number, number] {
  let min = Infinity, max = -Infinity; // FLT_MAX / -FLT_MAX in C: identical for finite inputs
  for (let j = 0; j < QK; j++) {
    const v = x[o + j];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return [min, max];
}

function blockQ4_0(x: Float32Array, o: number, out: Uint8Array, dv: DataView, b: number, madd: MulAdd): void {
  const d = fr(signedAbsMax(x, o) / Q4_0_DIVISOR);
  const id = d ? fr(1 / d) : 0;
  dv.setUint16(b, f32ToF16(d), true);
  for (let j = 0; j < HALF; j++) {
    const q0 = Math.min(Q4_LEVELS, trunc(madd(x[o + j], id, Q4_OFFSET)));
    const q1 = Math.min(Q4_LEVELS, trunc(madd(x[o + HALF + j], id, Q4_OFFSET)));
    out[b + F16_BYTES + j] = q0 | (q1 << 4);
  }
}

function blockQ4_1(x: Float32Array, o: number, out: Uint8Array, dv: DataView, b: number, madd: MulAdd): void {
  const [min, max] = minMax(x, o);
  const d = fr(fr(max - min) / Q4_LEVELS);
  const id = d ? fr(1 / d) : 0;
  dv.setUint16(b, f32ToF16(d), true);
  dv.setUint16(b + F16_BYTES, f32ToF16(min), true);
  for (let j = 0; j < HALF; j++) {
    const q0 = Math.min(Q4_LEVELS, trunc(madd(fr(x[o + j] - min), id, ROUND_HALF)));
    const q1 = Math.min(Q4_LEVELS, trunc(madd(fr(x[o + HALF + j] - min), id, ROUND_HALF)));
    out[b + 2 * F16_BYTES + j] = q0 | (q1 << 4);
  }
}

/** Packs 5-bit codes: low nibbles as in Q4, the fifth bits into the 32-bit `qh`. */
function pack5(codes: Int32Array, dv: DataView, out: Uint8Array, qhAt: number): void {
  let qh = 0;
  for (let j = 0; j < HALF; j++) {
    const c0 = codes[j], c1 = codes[j + HALF];
    out[qhAt + QH_BYTES + j] = (c0 & LOW_NIBBLE) | ((c1 & LOW_NIBBLE) << 4);
    qh |= ((c0 & FIFTH_BIT) >> 4) << j;
    qh |= ((c1 & FIFTH_BIT) >> 4) << (j + HALF);
  }
  dv.setUint32(qhAt, qh >>> 0, true);
}

const codes5 = new Int32Array(QK);

function blockQ5_0(x: Float32Array, o: number, dv: DataView, out: Uint8Array, b: number, madd: MulAdd): void {
  const d = fr(signedAbsMax(x, o) / Q5_0_DIVISOR);
  const id = d ? fr(1 / d) : 0;
  dv.setUint16(b, f32ToF16(d), true);
  for (let j = 0; j < QK; j++) codes5[j] = Math.min(Q5_LEVELS, trunc(madd(x[o + j], id, Q5_OFFSET)));
  pack5(codes5, dv, out, b + F16_BYTES);
}

function blockQ5_1(x: Float32Array, o: number, dv: DataView, out: Uint8Array, b: number, madd: MulAdd): void {
  const [min, max] = minMax(x, o);
  const d = fr(fr(max - min) / Q5_LEVELS);
  const id = d ? fr(1 / d) : 0;
  dv.setUint16(b, f32ToF16(d), true);
  dv.setUint16(b + F16_BYTES, f32ToF16(min), true);
  // ggml casts to uint8_t without clamping here; (x - min)/d never exceeds 31.5 for finite input.
  for (let j = 0; j < QK; j++) codes5[j] = trunc(madd(fr(x[o + j] - min), id, ROUND_HALF)) & 0xff;
  pack5(codes5, dv, out, b + 2 * F16_BYTES);
}

function blockQ8_0(x: Float32Array, o: number, dv: DataView, b: number): void {
  let amax = 0;
  for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[o + j]));
  const d = fr(amax / Q8_MAX);
  const id = d ? fr(1 / d) : 0;
  dv.setUint16(b, f32ToF16(d), true);
  for (let j = 0; j < QK; j++) dv.setInt8(b + F16_BYTES + j, roundf(fr(x[o + j] * id)));
}

/** f32 -> IEEE half bytes (little-endian), round to nearest even as ggml and torch do. */
export function toF16Bytes(x: Float32Array): Uint8Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = f32ToF16(x[i]);
  return new Uint8Array(out.buffer);
}

/** f32 -> bfloat16 bytes (little-endian), round to nearest even as torch's `.bfloat16()`. */
export function toBf16Bytes(x: Float32Array): Uint8Array {
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = f32ToBf16(x[i]);
  return new Uint8Array(out.buffer);
}

/** f32 little-endian bytes (a view when possible: the caller must not reuse `x`). */
export function toF32Bytes(x: Float32Array): Uint8Array {
  return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
}
