import { crc32 } from "../../src/core/crc32.js";
import type { FuzzFormat, Layout } from "./layout.js";

// Mutations of a seed file, chosen by a seeded generator: byte and bit flips, truncations,
// header fields set to extremes or to a sibling's value (offsets, dims, counts, types), bytes
// inserted or deleted in the structure, safetensors JSON header damage, zip directory damage,
// and, for .pth, changes whose CRC-32 is recomputed (what a deliberate attacker would do).

/** Where a mutation changed things, which decides how a "loaded with different logits" counts. */
export type Region = "structure" | "tensor data" | "tensor data, CRC recomputed" | "pickle, CRC recomputed" | "same-size dtype relabel";

export interface Mutant {
  readonly bytes: Uint8Array;
  readonly op: string;
  readonly region: Region;
}

/** mulberry32: deterministic per seed, uniform in [0, 1). */
export class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0; }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number { return Math.floor(this.next() * n); }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]; }
}

type Op = (b: Uint8Array, l: Layout, r: Rng) => { bytes: Uint8Array; op: string; region: Region } | null;

function inData(l: Layout, pos: number): boolean {
  return l.data.some(([s, e]) => pos >= s && pos < e);
}

/** A random position outside tensor data (headers, names, directories, padding). */
function structurePos(b: Uint8Array, l: Layout, r: Rng): number {
  for (let tries = 0; tries < 64; tries++) {
    const p = r.int(b.length);
    if (!inData(l, p)) return p;
  }
  return r.int(Math.min(b.length, l.data.length ? l.data[0][0] : b.length));
}

function dataPos(b: Uint8Array, l: Layout, r: Rng): number {
  if (!l.data.length) return r.int(b.length);
  const [s, e] = r.pick(l.data);
  return e > s ? s + r.int(e - s) : s;
}

function readField(b: Uint8Array, pos: number, width: number): number {
  let v = 0;
  for (let i = width - 1; i >= 0; i--) v = v * 256 + b[pos + i];
  return v;
}

function writeField(b: Uint8Array, pos: number, width: number, value: number): void {
  let v = Math.max(0, Math.floor(value));
  for (let i = 0; i < width; i++) { b[pos + i] = v % 256; v = Math.floor(v / 256); }
}

const bitflip: Op = (b, l, r) => {
  const out = b.slice();
  const p = r.int(b.length);
  out[p] ^= 1 << r.int(8);
  return { bytes: out, op: "bit flip", region: inData(l, p) ? "tensor data" : "structure" };
};

/** A bit flip outside tensor data. */
const structBit: Op = (b, l, r) => {
  const out = b.slice();
  const p = structurePos(b, l, r);
  out[p] ^= 1 << r.int(8);
  return { bytes: out, op: "structure bit flip", region: inData(l, p) ? "tensor data" : "structure" };
};

const structByte: Op = (b, l, r) => {
  const out = b.slice();
  const p = structurePos(b, l, r);
  out[p] = r.pick([0, 0xff, 0x7f, 0x80, r.int(256), out[p] ^ 0xff]);
  return { bytes: out, op: "structure byte", region: inData(l, p) ? "tensor data" : "structure" };
};

const dataBytes: Op = (b, l, r) => {
  const out = b.slice();
  const n = 1 + r.int(4);
  for (let i = 0; i < n; i++) out[dataPos(b, l, r)] = r.int(256);
  return { bytes: out, op: "tensor data bytes", region: "tensor data" };
};

const truncate: Op = (b, _l, r) => {
  const at = r.next() < 0.5 ? r.int(b.length) : b.length - 1 - r.int(Math.min(64, b.length - 1));
  return { bytes: b.slice(0, at), op: "truncate", region: "structure" };
};

const append: Op = (b, _l, r) => {
  const extra = Uint8Array.from({ length: 1 + r.int(64) }, () => r.int(256));
  const out = new Uint8Array(b.length + extra.length);
  out.set(b);
  out.set(extra, b.length);
  return { bytes: out, op: "append bytes", region: "structure" };
};

const splice: Op = (b, l, r) => {
  const p = structurePos(b, l, r);
  const n = 1 + r.int(8);
  if (r.next() < 0.5) {
    const out = new Uint8Array(b.length + n);
    out.set(b.subarray(0, p));
    for (let i = 0; i < n; i++) out[p + i] = r.int(256);
    out.set(b.subarray(p), p + n);
    return { bytes: out, op: "insert bytes", region: "structure" };
  }
  const out = new Uint8Array(Math.max(0, b.length - n));
  out.set(b.subarray(0, p));
  out.set(b.subarray(Math.min(b.length, p + n)), p);
  return { bytes: out, op: "delete bytes", region: "structure" };
};

const field: Op = (b, l, r) => {
  if (!l.fields.length) return null;
  const f = r.pick(l.fields);
  if (f.pos + f.width > b.length) return null;
  const out = b.slice();
  const v = readField(b, f.pos, f.width);
  const max = 2 ** (8 * f.width) - 1;
  const siblings = l.fields.filter((g) => g.kind === f.kind && g.pos !== f.pos);
  const choices: Array<[string, () => number]> = [
    ["0", () => 0], ["1", () => 1], ["max", () => max], ["max-1", () => max - 1], ["2^31", () => Math.min(max, 2 ** 31)],
    ["2^32", () => Math.min(max, 2 ** 32)], ["+1", () => Math.min(max, v + 1)], ["-1", () => Math.max(0, v - 1)],
    ["x2", () => Math.min(max, v * 2)], ["/2", () => Math.floor(v / 2)], ["+4", () => Math.min(max, v + 4)],
    ["random", () => Math.floor(r.next() * Math.min(max, 2 ** 40))],
  ];
  if (siblings.length) choices.push(["sibling's", () => readField(b, r.pick(siblings).pos, f.width)]);
  const [how, value] = r.pick(choices);
  writeField(out, f.pos, f.width, value());
  return { bytes: out, op: `${f.kind} = ${how}`, region: "structure" };
};

/** safetensors: damage the JSON header and re-serialize it (a consistent header length, or not). */
const jsonHeader: Op = (b, l, r) => {
  if (!l.json) return null;
  const [s, e] = l.json;
  let header: Record<string, Record<string, unknown>>;
  try {
    header = JSON.parse(new TextDecoder().decode(b.subarray(s, e))) as Record<string, Record<string, unknown>>;
  } catch {
    return null; // an earlier stacked mutation already broke the JSON
  }
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  const name = r.pick(names);
  const t = header[name];
  const offs = t.data_offsets as number[];
  const shape = t.shape as number[];
  const other = header[r.pick(names)];
  const edits: Array<[string, () => void]> = [
    ["begin +-k", () => { offs[0] += r.pick([-8, -4, -2, -1, 1, 2, 4, 8]); }],
    ["end +-k", () => { offs[1] += r.pick([-8, -4, -2, -1, 1, 2, 4, 8]); }],
    ["both offsets +k", () => { const k = r.pick([-4, -2, 2, 4]); offs[0] += k; offs[1] += k; }],
    ["offsets of another tensor", () => { t.data_offsets = [...(other.data_offsets as number[])]; }],
    ["offsets swapped", () => { t.data_offsets = [offs[1], offs[0]]; }],
    ["dtype", () => {
      const before = String(t.dtype);
      t.dtype = r.pick(["F16", "BF16", "F64", "F32", "I32", "U8", "F8_E4M3", "f32", ""]);
      // F16 <-> BF16 keeps every size and offset valid: only the values change, as with a data edit.
      if (before !== t.dtype && ["F16", "BF16"].includes(before) && ["F16", "BF16"].includes(String(t.dtype))) relabel = true;
    }],
    ["dtype and end adjusted", () => {
      const bytes = offs[1] - offs[0];
      t.dtype = t.dtype === "F32" ? "F16" : "F32";
      offs[1] = offs[0] + (t.dtype === "F16" ? bytes / 2 : bytes * 2);
    }],
    ["dim +-1", () => { const i = r.int(shape.length || 1); shape[i] = (shape[i] ?? 1) + r.pick([-1, 1]); }],
    ["dims swapped", () => { shape.reverse(); }],
    ["dim huge", () => { shape[r.int(shape.length || 1)] = r.pick([2 ** 31, 2 ** 32, 2 ** 53, -1, 1.5]); }],
    ["extra dim", () => { shape.push(r.pick([1, 2, 0])); }],
    ["tensor removed", () => { delete header[name]; }],
    ["unknown tensor added over it", () => { header[r.pick(["blocks.0.ffn.s0", "blocks.0.qkv.k1", "optimizer.state"])] = { ...t }; }],
    ["renamed", () => { header[`${name}.x`] = t; delete header[name]; }],
    ["metadata non-string", () => { header.__metadata__ = { format: r.pick([1, null, [], {}]) } as unknown as Record<string, unknown>; }],
    ["offsets non-integer", () => { t.data_offsets = [offs[0] + 0.5, offs[1]]; }],
  ];
  let relabel = false;
  const [how, edit] = r.pick(edits);
  edit();
  let json = JSON.stringify(header);
  const keepLength = r.next() < 0.5 && json.length <= e - s;
  if (keepLength) json = json.padEnd(e - s, " ");
  else json += " ".repeat((8 - ((8 + json.length) % 8)) % 8);
  const hb = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hb.length + (b.length - e));
  new DataView(out.buffer).setUint32(0, hb.length, true);
  out.set(hb, 8);
  out.set(b.subarray(e), 8 + hb.length);
  return { bytes: out, op: `json: ${how}`, region: relabel ? "same-size dtype relabel" : "structure" };
};

/** pth: change bytes inside one zip entry and write the matching CRC into both headers. */
function crcFixed(target: "pickle" | "storage"): Op {
  return (b, l, r) => {
    const entries = (l.zipEntries ?? []).filter((e) => (target === "pickle" ? e.name.endsWith("/data.pkl") : /\/data\/[^/]+$/.test(e.name)) && e.end > e.start);
    if (!entries.length) return null;
    const e = r.pick(entries);
    // An earlier stacked mutation may have cut the file short.
    if (Math.max(e.end + 24, e.centralCrc + 4, e.localCrc + 4) > b.length) return null;
    const out = b.slice();
    const n = 1 + r.int(4);
    for (let i = 0; i < n; i++) {
      const p = e.start + r.int(e.end - e.start);
      out[p] = r.next() < 0.5 ? out[p] ^ (1 << r.int(8)) : r.int(256);
    }
    const crc = crc32(out.subarray(e.start, e.end));
    const dv = new DataView(out.buffer);
    dv.setUint32(e.centralCrc, crc, true);
    if (dv.getUint32(e.localCrc, true) !== 0) dv.setUint32(e.localCrc, crc, true);
    // torch writes the CRC in a data descriptor after the data (flag bit 3): fix it there too.
    const desc = e.end + (dv.getUint32(e.end, true) === 0x08074b50 ? 4 : 0);
    if (desc + 4 <= out.length && dv.getUint32(desc, true) === crc32(b.subarray(e.start, e.end))) dv.setUint32(desc, crc, true);
    return { bytes: out, op: `${target} bytes, CRC recomputed`, region: target === "storage" ? "tensor data, CRC recomputed" : "pickle, CRC recomputed" };
  };
}

const COMMON: ReadonlyArray<[Op, number]> = [[bitflip, 3], [structByte, 3], [field, 6], [truncate, 2], [append, 1], [splice, 2], [dataBytes, 2]];
const SPECIFIC: Partial<Record<FuzzFormat, ReadonlyArray<[Op, number]>>> = {
  safetensors: [[jsonHeader, 6]],
  pth: [[crcFixed("pickle"), 5], [crcFixed("storage"), 2]],
};
/**
 * Stacked mutations only touch structure: a stack mixing a header change with a weight change
 * could not tell which of them made the logits differ.
 */
const STACKABLE: ReadonlyArray<[Op, number]> = [[structBit, 3], [structByte, 3], [field, 6], [truncate, 1], [append, 1], [splice, 2]];
const STACKABLE_SPECIFIC: Partial<Record<FuzzFormat, ReadonlyArray<[Op, number]>>> = {
  safetensors: [[jsonHeader, 6]],
};

/** One mutant: one operation, or (one time in five) two or three stacked. */
export function mutate(format: FuzzFormat, seed: Uint8Array, layout: Layout, r: Rng): Mutant {
  const stacked = r.next() < 0.2;
  const ops = stacked ? [...STACKABLE, ...(STACKABLE_SPECIFIC[format] ?? [])] : [...COMMON, ...(SPECIFIC[format] ?? [])];
  const total = ops.reduce((a, [, w]) => a + w, 0);
  const pickOp = (): Op => {
    let x = r.next() * total;
    for (const [op, w] of ops) if ((x -= w) < 0) return op;
    return ops[0][0];
  };
  const rounds = stacked ? 2 + r.int(2) : 1;
  let bytes = seed;
  const names: string[] = [];
  let region: Region | null = null;
  for (let i = 0; i < rounds; i++) {
    // Stacked ops after the first see shifted bytes; the seed layout is only approximately right then.
    const m = pickOp()(bytes, layout, r);
    if (!m) continue;
    bytes = m.bytes;
    names.push(m.op);
    region = region === null || region === m.region ? m.region : "structure";
  }
  if (region === null) return mutate(format, seed, layout, r);
  return { bytes, op: names.join(" + "), region };
}
