import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { TestContext } from "node:test";

/**
 * The one way tests find ../shared (env RWKV_SHARED, default ../shared beside the repo root).
 * Missing fixtures skip with a message outside CI and fail under CI=true, so a green CI run
 * can never hide a check that did not run.
 */
export const SHARED = resolve(process.env.RWKV_SHARED ?? join(import.meta.dirname, "..", "..", "..", "shared"));

export function sharedPath(t: TestContext, ...parts: string[]): string | null {
  const p = join(SHARED, ...parts);
  if (existsSync(p)) return p;
  if (process.env.CI === "true") throw new Error(`missing fixture ${p} (RWKV_SHARED=${SHARED})`);
  t.skip(`fixture ${p} not found; set RWKV_SHARED`);
  return null;
}

export function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, "utf8")) as T;
}

/** max |a - b| and whether every element is within atol + rtol·|b|. */
export function compare(a: ArrayLike<number>, b: ArrayLike<number>, atol: number, rtol: number): { maxAbs: number; ok: boolean; worst: number } {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let maxAbs = 0, ok = true, worst = -1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= atol + rtol * Math.abs(b[i]))) { ok = false; if (worst < 0) worst = i; }
    if (d > maxAbs || Number.isNaN(d)) maxAbs = Number.isNaN(d) ? NaN : d;
  }
  return { maxAbs, ok, worst };
}

/** Concatenates byte chunks (e.g. a writer's output) into one array. */
export function concat(chunks: Iterable<Uint8Array>): Uint8Array {
  const parts = [...chunks];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

/** Bit-for-bit equality of two f32 arrays (NaN payloads and -0 included). */
export function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length), y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** The F32 tensors of a safetensors file by name (golden outputs); a tensor of another dtype is refused by name. */
export function readSafetensorsF32(path: string): Map<string, Float32Array> {
  return readSafetensorsAs(path, "F32", (b) => new Float32Array(b));
}

/** The F64 tensors of a safetensors file at full precision (the library reader decodes to f32). */
export function readSafetensorsF64(path: string): Map<string, Float64Array> {
  return readSafetensorsAs(path, "F64", (b) => new Float64Array(b));
}

/** Every tensor of a safetensors file as `dtype` (each copied into a buffer of its own); another dtype is refused by name. */
function readSafetensorsAs<T>(path: string, dtype: string, view: (b: ArrayBuffer) => T): Map<string, T> {
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const out = new Map<string, T>();
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (e.dtype !== dtype) throw new Error(`${path}: tensor ${name} is ${e.dtype}, expected ${dtype}`);
    const [a, b] = e.data_offsets;
    out.set(name, view(bytes.buffer.slice(bytes.byteOffset + 8 + n + a, bytes.byteOffset + 8 + n + b)));
  }
  return out;
}
