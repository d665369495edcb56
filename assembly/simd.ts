/*
 * The SIMD arithmetic every kernel module shares (assembly/kernels.ts, train.ts, wkv.ts): one
 * definition, so the inference and training kernels round the same way.
 *
 * exp4: e^x of four f32 (the Cephes expf polynomial, ~2 ulp), for the WKV decays and the
 * training activations, whose transcendental functions cost more than the rest of them as scalar calls.
 */

/** acc + a·b: fused (relaxed_madd) in the relaxed build, a multiply then an add in plain SIMD. */
/* @inline */ export function fma4(acc: v128, a: v128, b: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, acc);
  return f32x4.add(acc, f32x4.mul(a, b));
}

/** The fixed horizontal sum (l0 + l2) + (l1 + l3). */
/* @inline */ export function hsum(v: v128): f32 {
  return (f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 2)) + (f32x4.extract_lane(v, 1) + f32x4.extract_lane(v, 3));
}

const LOG2E: f32 = 1.4426950408889634;
/** ln 2 split in two, so x - n·ln2 keeps its precision (Cephes). */
export const LN2_HI: f32 = 0.693359375;
export const LN2_LO: f32 = -2.12194440e-4;
/** Below this e^x would be an f32 subnormal (slow on x86, and 0 for our purposes is as good). */
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.3;

/** e^x of four f32 (Cephes expf polynomial, ~2 ulp), clamped to [EXP_MIN, EXP_MAX]. */
export function exp4(x0: v128): v128 {
  const x1 = f32x4.max(f32x4.min(x0, f32x4.splat(EXP_MAX)), f32x4.splat(EXP_MIN));
  const fx = f32x4.floor(fma4(f32x4.splat(0.5), x1, f32x4.splat(LOG2E)));
  let x = fma4(x1, fx, f32x4.splat(-LN2_HI));
  x = fma4(x, fx, f32x4.splat(-LN2_LO));
  let p = f32x4.splat(1.9875691500e-4);
  p = fma4(f32x4.splat(1.3981999507e-3), p, x);
  p = fma4(f32x4.splat(8.3334519073e-3), p, x);
  p = fma4(f32x4.splat(4.1665795894e-2), p, x);
  p = fma4(f32x4.splat(1.6666665459e-1), p, x);
  p = fma4(f32x4.splat(5.0000001201e-1), p, x);
  const y = fma4(f32x4.add(x, f32x4.splat(1)), p, f32x4.mul(x, x));
  const pow2 = i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(fx), i32x4.splat(127)), 23);
  return f32x4.mul(y, pow2);
}
