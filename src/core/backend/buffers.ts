/*
 * The storage of training tensors, below everything else in train/: ops, WKV recurrences,
 * parameters and kernel sets all build on these and nothing here imports them back.
 *
 * f32 storage (Float32Array) is what training runs on; the same code runs on Float64Array storage,
 * which the tests use to check gradients against the fp64 goldens to ~1e-12 instead of ~1e-6.
 */

export type Buf = Float32Array | Float64Array;
export type TrainDType = "f32" | "f64";

/** A zero-filled tensor of n elements in plain JavaScript memory. */
export function alloc(dtype: TrainDType, n: number): Buf {
  return dtype === "f32" ? new Float32Array(n) : new Float64Array(n);
}

export function dtypeOf(b: Buf): TrainDType {
  return b instanceof Float32Array ? "f32" : "f64";
}
