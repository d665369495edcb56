/*
 * The SIMD arithmetic every kernel module shares (assembly/kernels.ts, train.ts, wkv.ts): one
 * definition, so the inference and training kernels round the same way.
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
