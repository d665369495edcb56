import { BLOCK_TYPES, type Matrix, type WeightType } from "../backend.js";
import { matrixBytes, requireHostData, rowBytes } from "../weight-rows.js";

/*
 * WGSL matrix kernels for the WebGPU backend: y (R, O) = x (R, I) Wᵀ for every weight type WebGPU
 * is given, with W kept on the GPU in its compact type and dequantized in registers.
 *
 * Letters: R rows of x (tokens), O rows of W in the chunk (outputs), I columns (inputs),
 * nb = I / 32 ggml blocks per row.
 *
 * GPU layout (packForGpu), u32 words, row r of a chunk at word r · gpuRowWords, each row
 * 4-byte aligned and as compact as the checkpoint's own bytes (padding below 4 bytes a row):
 *   f32   I words of f32 bits.
 *   f16   ceil(I/2) words: columns 2j (low half) and 2j+1 (high half); an odd I leaves a zero half.
 *   bf16  as f16, with bf16 bits.
 *   i8    1 word f32 scale, then ceil(I/4) words of 4 signed bytes (column 4j in the low byte).
 *   q8_0  ceil(nb/2) words of f16 scales d (block 2j low, 2j+1 high), then 8·nb words of
 *         the blocks' 32 signed quants (block b at word 8b).
 *   q4_0  ceil(nb/2) words of d, then 4·nb words of the blocks' 16 nibble bytes (ggml's order:
 *         byte j holds column j low, j+16 high).
 *   q4_1  nb words (d low half, m high half), then 4·nb words of nibbles.
 *   q5_0  ceil(nb/2) words of d, nb words qh (bit j: the 5th bit of column j), 4·nb of nibbles.
 *   q5_1  nb words (d, m), nb words qh, 4·nb words of nibbles.
 * The ggml blocks (2 + 32, 2 + 16, 4 + 16, 6 + 16, 8 + 16 bytes) are split into these per-row
 * regions because their sizes are not multiples of 4 and WGSL reads storage in u32 words.
 *
 * The kernels share one unit of work: a "unit" is one u32 word of quants (for f32 four words, for
 * f16/bf16 two: four columns either way) dequantized in registers to 4 columns (one vec4) or, for
 * the 4- and 5-bit types, 8 columns (two vec4: columns 4k… and 16 + 4k… of the block). A row
 * holds 8 units per 32 columns (4 for q4/q5); f32/f16/bf16/i8 rows whose I is not a multiple
 * of 4 end in a tail of 1-3 columns read one at a time.
 *
 * Two kernels (matmulKernel picks by R):
 * - decode (R ≤ DECODE_MAX_R): a workgroup of LANES threads takes ROWS output rows. Thread l
 *   reads units l, l + LANES, … of each of the ROWS rows (consecutive threads, consecutive
 *   words: each weight read once, coalesced), and dots each with the same columns of RT rows of
 *   x, loaded once for the ROWS rows (x is read from cache far more often than W from memory:
 *   4 bytes a column against 0.56 for Q4_0, so sharing it keeps the cache from becoming the
 *   limit); the partial sums are reduced in workgroup memory. RT = R rounded up to a power of
 *   two, so the weights are read once for all the x rows of a decode batch.
 * - tiled (prefill): a workgroup computes a TILE × TILE block of y (TILE outputs × TILE rows of
 *   x), stepping through I in slices of KC = 32 columns (one ggml block): the slice of W is
 *   dequantized once into workgroup memory and used by all TILE rows of x.
 * Sums are in f32 (the reference sums in f64).
 *
 * f16 weights have two readers: unpack2x16float on the u32 words (every device), and, where the
 * device has the `shader-f16` feature (matmulKernel's features.shaderF16), a variant with
 * `enable f16;` that binds the same buffer as array<vec2<f16>> (one element a word, column 2j in
 * .x) and converts each half to f32. Either way the weights reach the sums as the same f32 values
 * (f16 -> f32 is exact) and the arithmetic after that is the same code, so both variants give the
 * same y bit for bit (test/webgpu-matmul.test.ts checks it wherever the adapter has the feature).
 * The sums stay in f32: f16 products or sums would round far more than the reference's.
 */

/** The dispatch limit per dimension that every WebGPU device has (maxComputeWorkgroupsPerDimension). */
const MAX_WORKGROUPS_PER_DIMENSION = 65535;
/** ggml's block size (QK). */
const QK = 32;
/** Largest R the decode kernel takes; above it the tiled kernel reuses each weight over more rows. */
export const DECODE_MAX_R = 8;
/** Decode: threads per workgroup, each on every ROWS output row of the workgroup. */
const LANES = 64, ROWS = 4;
/** Tiled: outputs and x rows per workgroup (16 × 16 threads of 4 × 4 each), columns per slice. */
const TILE = 64, KC = QK;

/** How a type's units are read in WGSL. */
interface TypeCode {
  /** WGSL type of the elements of w, one per u32 word of the layout (default u32); a type other
   *  than u32 needs `enable f16;` (the shader-f16 variant). */
  readonly word?: "u32" | "vec2<f16>";
  /** Units per 32 columns. */
  readonly upb: number;
  /** Columns per unit: 4 (one vec4) or 8 (two: lo at the unit's column, hi 16 columns on). */
  readonly wide: boolean;
  /** WGSL: rowWords(I), unitPos(u) (the unit's first column), unitW(rb, u, I) (its weights), and
   *  for the types with tails wAt(rb, i, I) (column i alone). */
  readonly fns: string;
}

/** 4 signed bytes of a word, low byte first, as f32. */
const BYTES4 = `fn bytes4(q: u32) -> vec4<f32> {
  return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(q) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}`;
/** The 8 nibbles of a word: lo = the low nibbles of its 4 bytes (columns 4k…), hi = the high ones (16 + 4k…). */
const NIBBLES = `fn nibLo(q: u32) -> vec4<u32> { return (vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u); }
fn nibHi(q: u32) -> vec4<u32> { return (vec4<u32>(q) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u); }
struct Unit8 { lo: vec4<f32>, hi: vec4<f32> }`;
/** Block b's f16 scale from a region of two per word. */
const HALF_SCALE = `fn halfAt(a: u32, b: u32) -> f32 { return unpack2x16float(w[a + (b >> 1u)])[b & 1u]; }`;
/** The 5th bits of the 8 columns of unit k of a block from its qh word, shifted into place (16). */
const FIFTH = `fn fifthLo(qh: u32, k: u32) -> vec4<u32> { return ((vec4<u32>(qh >> (4u * k)) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u); }
fn fifthHi(qh: u32, k: u32) -> vec4<u32> { return ((vec4<u32>(qh >> (16u + 4u * k)) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u); }`;

/** bf16 pair of a word as f32: the bits shifted into an f32's high half. */
const BF16 = `fn bf16x2(q: u32) -> vec2<f32> { return vec2<f32>(bitcast<f32>(q << 16u), bitcast<f32>(q & 0xffff0000u)); }`;

const LINEAR_POS = "fn unitPos(u: u32) -> u32 { return 4u * u; }";
/** q4/q5: unit u is word k = u % 4 of block u / 4, its lo columns at 32·(u/4) + 4k. */
const BLOCK8_POS = "fn unitPos(u: u32) -> u32 { return 32u * (u >> 2u) + 4u * (u & 3u); }";

const TYPES: Readonly<Partial<Record<WeightType, TypeCode>>> = {
  f32: {
    upb: 8, wide: false, fns: `fn rowWords(I: u32) -> u32 { return I; }
${LINEAR_POS}
fn unitW(rb: u32, u: u32, I: u32) -> vec4<f32> {
  let a = rb + 4u * u;
  return bitcast<vec4<f32>>(vec4<u32>(w[a], w[a + 1u], w[a + 2u], w[a + 3u]));
}
fn wAt(rb: u32, i: u32, I: u32) -> f32 { return bitcast<f32>(w[rb + i]); }`,
  },
  f16: {
    upb: 8, wide: false, fns: `fn rowWords(I: u32) -> u32 { return (I + 1u) / 2u; }
${LINEAR_POS}
fn unitW(rb: u32, u: u32, I: u32) -> vec4<f32> {
  let a = rb + 2u * u;
  return vec4<f32>(unpack2x16float(w[a]), unpack2x16float(w[a + 1u]));
}
fn wAt(rb: u32, i: u32, I: u32) -> f32 { return unpack2x16float(w[rb + (i >> 1u)])[i & 1u]; }`,
  },
  bf16: {
    upb: 8, wide: false, fns: `${BF16}
fn rowWords(I: u32) -> u32 { return (I + 1u) / 2u; }
${LINEAR_POS}
fn unitW(rb: u32, u: u32, I: u32) -> vec4<f32> {
  let a = rb + 2u * u;
  return vec4<f32>(bf16x2(w[a]), bf16x2(w[a + 1u]));
}
fn wAt(rb: u32, i: u32, I: u32) -> f32 { return bf16x2(w[rb + (i >> 1u)])[i & 1u]; }`,
  },
  i8: {
    upb: 8, wide: false, fns: `${BYTES4}
fn rowWords(I: u32) -> u32 { return 1u + (I + 3u) / 4u; }
${LINEAR_POS}
fn unitW(rb: u32, u: u32, I: u32) -> vec4<f32> { return bytes4(w[rb + 1u + u]) * bitcast<f32>(w[rb]); }
fn wAt(rb: u32, i: u32, I: u32) -> f32 { return bytes4(w[rb + 1u + (i >> 2u)])[i & 3u] * bitcast<f32>(w[rb]); }`,
  },
  q8_0: {
    upb: 8, wide: false, fns: `${BYTES4}
${HALF_SCALE}
fn rowWords(I: u32) -> u32 { let nb = I / 32u; return (nb + 1u) / 2u + 8u * nb; }
${LINEAR_POS}
fn unitW(rb: u32, u: u32, I: u32) -> vec4<f32> {
  let nb = I / 32u;
  return bytes4(w[rb + (nb + 1u) / 2u + u]) * halfAt(rb, u >> 3u);
}`,
  },
  q4_0: {
    upb: 4, wide: true, fns: `${NIBBLES}
${HALF_SCALE}
fn rowWords(I: u32) -> u32 { let nb = I / 32u; return (nb + 1u) / 2u + 4u * nb; }
${BLOCK8_POS}
fn unitW(rb: u32, u: u32, I: u32) -> Unit8 {
  let nb = I / 32u;
  let q = w[rb + (nb + 1u) / 2u + u];
  let d = halfAt(rb, u >> 2u);
  return Unit8((vec4<f32>(nibLo(q)) - 8.0) * d, (vec4<f32>(nibHi(q)) - 8.0) * d);
}`,
  },
  q4_1: {
    upb: 4, wide: true, fns: `${NIBBLES}
fn rowWords(I: u32) -> u32 { return 5u * (I / 32u); }
${BLOCK8_POS}
fn unitW(rb: u32, u: u32, I: u32) -> Unit8 {
  let nb = I / 32u;
  let q = w[rb + nb + u];
  let dm = unpack2x16float(w[rb + (u >> 2u)]);
  return Unit8(vec4<f32>(nibLo(q)) * dm.x + dm.y, vec4<f32>(nibHi(q)) * dm.x + dm.y);
}`,
  },
  q5_0: {
    upb: 4, wide: true, fns: `${NIBBLES}
${HALF_SCALE}
${FIFTH}
fn rowWords(I: u32) -> u32 { let nb = I / 32u; return (nb + 1u) / 2u + 5u * nb; }
${BLOCK8_POS}
fn unitW(rb: u32, u: u32, I: u32) -> Unit8 {
  let nb = I / 32u;
  let s = rb + (nb + 1u) / 2u;
  let q = w[s + nb + u];
  let qh = w[s + (u >> 2u)];
  let k = u & 3u;
  let d = halfAt(rb, u >> 2u);
  return Unit8((vec4<f32>(nibLo(q) | fifthLo(qh, k)) - 16.0) * d, (vec4<f32>(nibHi(q) | fifthHi(qh, k)) - 16.0) * d);
}`,
  },
  q5_1: {
    upb: 4, wide: true, fns: `${NIBBLES}
${FIFTH}
fn rowWords(I: u32) -> u32 { return 6u * (I / 32u); }
${BLOCK8_POS}
fn unitW(rb: u32, u: u32, I: u32) -> Unit8 {
  let nb = I / 32u;
  let q = w[rb + 2u * nb + u];
  let qh = w[rb + nb + (u >> 2u)];
  let k = u & 3u;
  let dm = unpack2x16float(w[rb + (u >> 2u)]);
  return Unit8(vec4<f32>(nibLo(q) | fifthLo(qh, k)) * dm.x + dm.y, vec4<f32>(nibHi(q) | fifthHi(qh, k)) * dm.x + dm.y);
}`,
  },
};

/**
 * f16 read as f16 (the shader-f16 variant): the same words as array<vec2<f16>>, columns 2j and
 * 2j+1 in .x and .y (WGSL stores vector components in ascending addresses, as unpack2x16float
 * takes the low half first), each converted to f32 exactly.
 */
const F16_NATIVE: TypeCode = {
  upb: 8, wide: false, word: "vec2<f16>", fns: `fn rowWords(I: u32) -> u32 { return (I + 1u) / 2u; }
${LINEAR_POS}
fn unitW(rb: u32, u: u32, I: u32) -> vec4<f32> {
  let a = rb + 2u * u;
  return vec4<f32>(vec2<f32>(w[a]), vec2<f32>(w[a + 1u]));
}
fn wAt(rb: u32, i: u32, I: u32) -> f32 { return f32(w[rb + (i >> 1u)][i & 1u]); }`,
};

/** The kernel code of `type`; `half`: f16 read as f16 (only f16 has that variant). */
function typeCode(type: WeightType, half = false): TypeCode {
  if (half && type === "f16") return F16_NATIVE;
  const c = TYPES[type];
  if (!c) throw new Error(`WebGPU matmul: weight type ${type} is not supported (f32, f16, bf16, i8 and the ggml block types are)`);
  return c;
}

/** u32 words per stored row on the GPU for a matrix of `type` with `cols` columns: row r of a chunk starts at word r·gpuRowWords. */
export function gpuRowWords(type: WeightType, cols: number): number {
  typeCode(type);
  const nb = cols / QK;
  switch (type) {
    case "f32": return cols;
    case "f16": case "bf16": return Math.ceil(cols / 2);
    case "i8": return 1 + Math.ceil(cols / 4);
    case "q8_0": return Math.ceil(nb / 2) + 8 * nb;
    case "q4_0": return Math.ceil(nb / 2) + 4 * nb;
    case "q4_1": return 5 * nb;
    case "q5_0": return Math.ceil(nb / 2) + 5 * nb;
    default: return 6 * nb; // q5_1
  }
}

/** Bytes of the ggml blocks' parts: scale d (and minimum m) f16 each, qh the 32 fifth bits. */
const F16_BYTES = 2, QH_BYTES = 4;

/**
 * Rows [row0, row0 + rows) of m in the GPU layout (rows · gpuRowWords words, the layout in the
 * header): compact, every row starting at a word.
 */
export function packForGpu(m: Matrix, row0: number, rows: number): Uint32Array {
  const { type, rows: O, cols: I } = m;
  typeCode(type);
  if (!Number.isInteger(row0) || !Number.isInteger(rows) || row0 < 0 || rows < 0 || row0 + rows > O) {
    throw new Error(`packForGpu: rows [${row0}, ${row0 + rows}) are outside the matrix's ${O} rows`);
  }
  if (BLOCK_TYPES.has(type) && I % QK !== 0) throw new Error(`packForGpu: a ${type} matrix needs a multiple of ${QK} columns, got ${I}`);
  requireHostData(m);
  const stored = matrixBytes(type, O, I);
  if (m.data.byteLength < stored) throw new Error(`packForGpu: ${type} (${O}, ${I}) data has ${m.data.byteLength} bytes, needs ${stored}`);
  const rw = gpuRowWords(type, I);
  const out = new Uint32Array(rows * rw); // (rows, rw)
  const src = new Uint8Array(m.data.buffer, m.data.byteOffset, m.data.byteLength);
  const dst = new Uint8Array(out.buffer);
  if (type === "f32" || type === "f16" || type === "bf16") {
    const n = rowBytes(type, I);
    for (let r = 0; r < rows; r++) dst.set(src.subarray((row0 + r) * n, (row0 + r + 1) * n), 4 * r * rw);
    return out;
  }
  if (type === "i8") {
    const scales = new DataView(src.buffer, src.byteOffset + O * I, 4 * O);
    for (let r = 0; r < rows; r++) {
      out[r * rw] = scales.getUint32(4 * (row0 + r), true);
      dst.set(src.subarray((row0 + r) * I, (row0 + r + 1) * I), 4 * (r * rw + 1));
    }
    return out;
  }
  const nb = I / QK, bb = rowBytes(type, QK), quantWords = (type === "q8_0" ? QK : QK / 2) / 4;
  const minimum = type === "q4_1" || type === "q5_1", fifth = type === "q5_0" || type === "q5_1";
  // Word reads through a DataView (blocks are not 4-byte aligned in the file): a few times faster
  // than copying subarrays, which matters for the billions of weights of a large model.
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const halves = new Uint16Array(out.buffer);
  for (let r = 0; r < rows; r++) {
    const s = (row0 + r) * nb * bb, rb = r * rw;
    // Region starts (words): scales (d or d,m pairs), qh, quants.
    const qhAt = rb + (minimum ? nb : Math.ceil(nb / 2)), qsAt = qhAt + (fifth ? nb : 0);
    for (let b = 0; b < nb; b++) {
      const p = s + b * bb;
      let q = p + F16_BYTES;
      if (minimum) {
        out[rb + b] = dv.getUint32(p, true); // d low, m high, as in the file
        q += F16_BYTES;
      } else {
        halves[2 * rb + b] = dv.getUint16(p, true);
      }
      if (fifth) {
        out[qhAt + b] = dv.getUint32(q, true);
        q += QH_BYTES;
      }
      const at = qsAt + b * quantWords;
      for (let j = 0; j < quantWords; j++) out[at + j] = dv.getUint32(q + 4 * j, true);
    }
  }
  return out;
}

export interface MatmulKernel {
  readonly code: string; // WGSL source, one compute entry point
  readonly entryPoint: string;
  /** dispatchWorkgroups counts for R input rows and O weight rows in this chunk (each ≤ the device's 65535 limit per dimension). */
  workgroups(R: number, O: number): [number, number, number];
}

/** The bindings and x's reader; w's elements are c.word (f16 ones need the f16 extension, enabled first as WGSL requires). */
function header(c: TypeCode): string {
  const word = c.word ?? "u32";
  return `${word === "u32" ? "" : "enable f16;\n"}struct MatmulParams { R: u32, O: u32, I: u32, yCol0: u32, yStride: u32 }
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<${word}>;
@group(0) @binding(3) var<uniform> p: MatmulParams;
fn x4(a: u32) -> vec4<f32> { return vec4<f32>(x[a], x[a + 1u], x[a + 2u], x[a + 3u]); }`;
}

/** n workgroups as (gx, gy) within the per-dimension limit; the kernels number them wg.y · gx + wg.x, which may pass n (those do nothing). */
function spread(n: number): [number, number] {
  if (n <= MAX_WORKGROUPS_PER_DIMENSION) return [n, 1];
  return [MAX_WORKGROUPS_PER_DIMENSION, Math.ceil(n / MAX_WORKGROUPS_PER_DIMENSION)];
}

function zCount(n: number): number {
  if (n > MAX_WORKGROUPS_PER_DIMENSION) throw new Error(`WebGPU matmul: ${n} workgroups of x rows exceed the dispatch limit ${MAX_WORKGROUPS_PER_DIMENSION}`);
  return n;
}

const range = (n: number): number[] => Array.from({ length: n }, (_, k) => k);

/** The decode kernel for `RT` rows of x per pass (RT a power of two ≤ DECODE_MAX_R). */
function decodeCode(type: WeightType, RT: number, half: boolean): string {
  const c = typeCode(type, half), tail = !BLOCK_TYPES.has(type);
  const ks = range(RT), ms = range(ROWS);
  const each = (f: (k: number, m: number) => string, indent: string): string =>
    ks.flatMap((k) => ms.map((m) => indent + f(k, m))).join("\n");
  return `${header(c)}
${c.fns}
const LANES = ${LANES}u;
const ROWS = ${ROWS}u;
const RT = ${RT}u;
// Partial sums, (RT, ROWS, LANES).
var<workgroup> part: array<f32, ${RT * ROWS * LANES}>;

@compute @workgroup_size(${LANES})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lane: u32) {
  let I = p.I;
  let o0 = (wg.y * nwg.x + wg.x) * ROWS;
  let r0 = wg.z * RT;
  // Output rows past O read the last one, rows of x past R the last one; they store nothing.
${ms.map((m) => `  let rb${m} = min(o0 + ${m}u, p.O - 1u) * rowWords(I);`).join("\n")}
${ks.map((k) => `  let xb${k} = min(r0 + ${k}u, p.R - 1u) * I;`).join("\n")}
${each((k, m) => `var acc${k}_${m} = 0.0; // y[r0 + ${k}][o0 + ${m}]`, "  ")}
  let units = ${tail ? "I / 4u" : `(I / 32u) * ${c.upb}u`};
  for (var u = lane; u < units; u += LANES) {
    let i = unitPos(u);
${ks.map((k) => `    let xr${k} = x4(xb${k} + i);${c.wide ? ` let xh${k} = x4(xb${k} + i + 16u);` : ""}`).join("\n")}
${ms.map((m) => `    let w${m} = unitW(rb${m}, u, I);`).join("\n")}
${each((k, m) => c.wide ? `acc${k}_${m} += dot(w${m}.lo, xr${k}) + dot(w${m}.hi, xh${k});` : `acc${k}_${m} += dot(w${m}, xr${k});`, "    ")}
  }
${tail ? `  if (lane == 0u) {
    for (var i = 4u * (I / 4u); i < I; i++) {
${ks.map((k) => `      let xr${k} = x[xb${k} + i];`).join("\n")}
${ms.map((m) => `      let w${m} = wAt(rb${m}, i, I);`).join("\n")}
${each((k, m) => `acc${k}_${m} += w${m} * xr${k};`, "      ")}
    }
  }
` : ""}${each((k, m) => `part[${k * ROWS + m}u * LANES + lane] = acc${k}_${m};`, "  ")}
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s) {
      for (var a = 0u; a < RT * ROWS; a++) {
        part[a * LANES + lane] += part[a * LANES + lane + s];
      }
    }
    workgroupBarrier();
  }
  if (lane < RT * ROWS) {
    let r = r0 + lane / ROWS;
    let o = o0 + lane % ROWS;
    if (r < p.R && o < p.O) { y[r * p.yStride + p.yCol0 + o] = part[lane * LANES]; }
  }
}
`;
}

/**
 * The tiled kernel: a TILE × TILE block of y per workgroup of 16 × 16 threads, each 4 outputs ×
 * 4 rows of x, reading the slices from workgroup memory as vec4 (two loads for 16 multiply-adds).
 */
function tiledCode(type: WeightType, half: boolean): string {
  const c = typeCode(type, half), tail = !BLOCK_TYPES.has(type);
  const S = TILE / 4; // threads along each side, and vec4 per slice row
  // Column k of the W slice, outputs oo … oo+3 of a unit's 4 consecutive columns from k: the
  // vec4 of output group oo / 4 is stored at column (oo / 4) ^ (k / 4) (see the arrays below).
  const store = (v: string, col: string) =>
    range(4).map((j) => `ws[(${col} + ${j}u) * S + ((oo >> 2u) ^ ((${col}) >> 2u))][oo & 3u] = ${v}[${j}];`).join("\n      ");
  const loadW = c.wide
    ? `var lo = vec4<f32>(0.0);
      var hi = vec4<f32>(0.0);
      if (o < p.O) {
        let wu = unitW(o * rowWords(I), u, I);
        lo = wu.lo;
        hi = wu.hi;
      }
      ${store("lo", "kk")}
      ${store("hi", "kk + 16u")}`
    : `var v = vec4<f32>(0.0);
      if (o < p.O) {
        let rb = o * rowWords(I);
        if (${tail ? "i + 4u <= I" : "true"}) {
          v = unitW(rb, u, I);
        }${tail ? ` else {
          for (var j = 0u; j < 4u; j++) {
            if (i + j < I) { v[j] = wAt(rb, i + j, I); }
          }
        }` : ""}
      }
      ${store("v", "kk")}`;
  return `${header(c)}
${c.fns}
const TILE = ${TILE}u;
const S = ${S}u;
const KC = ${KC}u;
const UPB = ${c.upb}u;
const THREADS = ${S * S}u;
// The slices of x, (KC, TILE rows of x), and of W dequantized, (KC, TILE outputs), as vec4 of 4
// consecutive rows (outputs). Slice column k's vec4 j is stored at k·S + (j ^ (k % 8)) for x and
// k·S + (j ^ (k / 4)) for W: a permutation within the column, chosen so that the stores of a
// 32-thread subgroup (x: 8 columns × 4 rows; W: 8 units × 4 outputs, one column each) fall
// in distinct banks (the 4- and 5-bit types' 4 units × 8 outputs: two to a bank); the loads
// (16 vec4 of one column of W, and 2 of x) are a permutation either way.
var<workgroup> xs: array<vec4<f32>, ${(KC * TILE) / 4}>;
var<workgroup> ws: array<vec4<f32>, ${(KC * TILE) / 4}>;

@compute @workgroup_size(${S}, ${S})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let I = p.I;
  let o0 = (wg.y * nwg.x + wg.x) * TILE;
  if (o0 >= p.O) { return; } // the whole workgroup: a spread dispatch's spare groups
  let r0 = wg.z * TILE;
  // Thread (tx, ty) owns outputs o0 + 4tx … o0 + 4tx + 3 and rows r0 + 4ty … r0 + 4ty + 3.
  let tx = lid.x;
  let ty = lid.y;
${range(4).map((b) => `  var acc${b} = vec4<f32>(0.0); // row r0 + 4ty + ${b}`).join("\n")}
  for (var k0 = 0u; k0 < I; k0 += KC) {
    // x: pass j takes columns 8(j % 4) … + 7 of rows 32(j / 4) … + 31, each thread one.
    for (var j = 0u; j < (KC * TILE) / THREADS; j++) {
      let kk = 8u * (j & 3u) + (li & 7u);
      let rr = 32u * (j >> 2u) + (li >> 3u);
      let r = r0 + rr;
      let i = k0 + kk;
      var v = 0.0;
      if (r < p.R && i < I) { v = x[r * I + i]; }
      xs[kk * S + ((rr >> 2u) ^ (kk & 7u))][rr & 3u] = v;
    }
    // W: TILE rows of UPB units, consecutive threads on consecutive words of a row.
    for (var e = li; e < UPB * TILE; e += THREADS) {
      let oo = e / UPB;
      let o = o0 + oo;
      let u = (k0 / 32u) * UPB + e % UPB;
      let i = unitPos(u);
      let kk = i - k0;
      ${loadW}
    }
    workgroupBarrier();
    for (var kk = 0u; kk < KC; kk++) {
      let wv = ws[kk * S + (tx ^ (kk >> 2u))]; // outputs o0 + 4tx …
      let xv = xs[kk * S + (ty ^ (kk & 7u))]; // rows r0 + 4ty …
${range(4).map((b) => `      acc${b} += wv * xv[${b}];`).join("\n")}
    }
    workgroupBarrier();
  }
  let oc = o0 + 4u * tx;
${range(4).map((b) => `  if (r0 + 4u * ty + ${b}u < p.R) {
    let yb = (r0 + 4u * ty + ${b}u) * p.yStride + p.yCol0 + oc;
${range(4).map((a) => `    if (oc + ${a}u < p.O) { y[yb + ${a}u] = acc${b}[${a}]; }`).join("\n")}
  }`).join("\n")}
}
`;
}

const kernels = new Map<string, MatmulKernel>();

/** What the device offers the kernels. */
export interface MatmulFeatures {
  /** The device was created with the `shader-f16` feature: f16 weights are read as f16 (see the header). */
  readonly shaderF16: boolean;
}

/**
 * The kernel for `type`; R lets it choose a decode (R small) or a tiled (prefill) variant. Either
 * computes every R when dispatched with its own workgroups(R, O); the choice is only about speed.
 * With features.shaderF16, f16 gets its shader-f16 variant (the same results, bit for bit); the
 * other types have one reader on every device. The same object is returned for the same type and
 * variant (its code can key a pipeline cache).
 */
export function matmulKernel(type: WeightType, R: number, features: MatmulFeatures): MatmulKernel {
  typeCode(type);
  if (!Number.isInteger(R) || R < 1) throw new Error(`matmulKernel: R must be a positive integer, got ${R}`);
  const RT = R <= DECODE_MAX_R ? 2 ** Math.ceil(Math.log2(R)) : 0; // 0: tiled
  const half = type === "f16" && features.shaderF16;
  const key = `${type}/${RT}${half ? "/shader-f16" : ""}`;
  let k = kernels.get(key);
  if (!k) {
    const code = RT ? decodeCode(type, RT, half) : tiledCode(type, half);
    const workgroups = RT
      ? (R: number, O: number): [number, number, number] => [...spread(Math.ceil(O / ROWS)), zCount(Math.ceil(R / RT))]
      : (R: number, O: number): [number, number, number] => [...spread(Math.ceil(O / TILE)), zCount(Math.ceil(R / TILE))];
    k = { code, entryPoint: "main", workgroups };
    kernels.set(key, k);
  }
  return k;
}
