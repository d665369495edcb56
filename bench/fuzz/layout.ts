import { MemorySource } from "../../src/core/bytes.js";
import { readGguf } from "../../src/core/formats/gguf.js";
import { readRwkvCppRecords } from "../../src/core/formats/rwkvcpp.js";

// Where the structure of an (unmutated) seed file lies: the header fields a mutation should hit
// and the byte ranges of tensor data (where a change is a change of weights, not of structure).

export type FuzzFormat = "pth" | "safetensors" | "rwkvcpp" | "gguf";
export const FUZZ_FORMATS: readonly FuzzFormat[] = ["pth", "safetensors", "rwkvcpp", "gguf"];

/** One little-endian integer field of the file's structure. */
export interface Field {
  readonly pos: number;
  readonly width: 2 | 4 | 8;
  /** Fields of one kind (all tensor offsets, all dims...) so a mutation can copy a sibling's value. */
  readonly kind: string;
}

export interface Layout {
  readonly fields: readonly Field[];
  /** [start, end) byte ranges of tensor data, sorted. */
  readonly data: ReadonlyArray<readonly [number, number]>;
  /** pth only: each zip entry's CRC fields and data range, so a mutation can fix the CRC up. */
  readonly zipEntries?: ReadonlyArray<{ readonly localCrc: number; readonly centralCrc: number; readonly start: number; readonly end: number; readonly name: string }>;
  /** safetensors only: the JSON header's byte range. */
  readonly json?: readonly [number, number];
}

export function layoutOf(format: FuzzFormat, bytes: Uint8Array): Layout {
  switch (format) {
    case "safetensors": return safetensorsLayout(bytes);
    case "gguf": return ggufLayout(bytes);
    case "rwkvcpp": return rwkvCppLayout(bytes);
    case "pth": return zipLayout(bytes);
  }
}

function dv(b: Uint8Array): DataView { return new DataView(b.buffer, b.byteOffset, b.byteLength); }

function safetensorsLayout(b: Uint8Array): Layout {
  const n = Number(dv(b).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(b.subarray(8, 8 + n))) as Record<string, { data_offsets?: [number, number] }>;
  const data = Object.entries(header).filter(([k]) => k !== "__metadata__")
    .map(([, v]) => [8 + n + v.data_offsets![0], 8 + n + v.data_offsets![1]] as const).sort((x, y) => x[0] - y[0]);
  return { fields: [{ pos: 0, width: 8, kind: "header length" }], data, json: [8, 8 + n] };
}

function ggufLayout(b: Uint8Array): Layout {
  const file = readGguf(new MemorySource("seed", b));
  const fields: Field[] = [{ pos: 4, width: 4, kind: "version" }, { pos: 8, width: 8, kind: "tensor count" }, { pos: 16, width: 8, kind: "kv count" }];
  const enc = new TextEncoder();
  const head = b.subarray(0, file.dataStart);
  for (const t of file.tensors) {
    const name = enc.encode(t.name);
    const prefix = new Uint8Array(8 + name.length);
    dv(prefix).setUint32(0, name.length, true);
    prefix.set(name, 8);
    const at = indexOf(head, prefix);
    if (at < 0) continue;
    let p = at + prefix.length;
    fields.push({ pos: at, width: 8, kind: "name length" }, { pos: p, width: 4, kind: "n_dims" });
    p += 4;
    for (let d = 0; d < t.ne.length; d++, p += 8) fields.push({ pos: p, width: 8, kind: "dim" });
    fields.push({ pos: p, width: 4, kind: "type" }, { pos: p + 4, width: 8, kind: "offset" });
  }
  const data = file.tensors.map((t) => [t.dataOffset, t.dataOffset + t.byteLength] as const).sort((x, y) => x[0] - y[0]);
  return { fields, data };
}

function rwkvCppLayout(b: Uint8Array): Layout {
  const { records } = readRwkvCppRecords(new MemorySource("seed", b));
  const fields: Field[] = [];
  for (let i = 1; i < 6; i++) fields.push({ pos: 4 * i, width: 4, kind: `header ${i}` });
  for (const r of records) {
    const start = r.dataOffset - new TextEncoder().encode(r.name).length - 4 * r.ne.length - 12;
    fields.push({ pos: start, width: 4, kind: "n_dims" }, { pos: start + 4, width: 4, kind: "key length" }, { pos: start + 8, width: 4, kind: "type" });
    for (let d = 0; d < r.ne.length; d++) fields.push({ pos: start + 12 + 4 * d, width: 4, kind: "dim" });
  }
  return { fields, data: records.map((r) => [r.dataOffset, r.dataOffset + r.byteLength] as const) };
}

const LOCAL = [0x50, 0x4b, 3, 4], CENTRAL = [0x50, 0x4b, 1, 2], EOCD = [0x50, 0x4b, 5, 6];

function zipLayout(b: Uint8Array): Layout {
  const v = dv(b);
  const fields: Field[] = [];
  const entries: Array<{ localCrc: number; centralCrc: number; start: number; end: number; name: string }> = [];
  const locals = new Map<number, { crcPos: number; start: number }>();
  const eocd = lastIndexOf(b, Uint8Array.from(EOCD));
  const cdOffset = v.getUint32(eocd + 16, true);
  fields.push({ pos: eocd + 8, width: 2, kind: "eocd count" }, { pos: eocd + 10, width: 2, kind: "eocd count" },
    { pos: eocd + 12, width: 4, kind: "cd size" }, { pos: eocd + 16, width: 4, kind: "cd offset" }, { pos: eocd + 20, width: 2, kind: "comment length" });
  // Local headers: found by walking the central directory (a signature search could hit tensor data).
  for (let p = cdOffset; p + 46 <= eocd && matches(b, p, CENTRAL); ) {
    const nameLen = v.getUint16(p + 28, true), extraLen = v.getUint16(p + 30, true), commentLen = v.getUint16(p + 32, true);
    const name = new TextDecoder().decode(b.subarray(p + 46, p + 46 + nameLen));
    const local = v.getUint32(p + 42, true);
    for (const [off, width, kind] of [[8, 2, "flags"], [10, 2, "method"], [16, 4, "crc"], [20, 4, "size"], [24, 4, "size"],
      [28, 2, "name length"], [30, 2, "extra length"], [32, 2, "comment length"], [42, 4, "local offset"]] as const) {
      fields.push({ pos: p + off, width, kind: `central ${kind}` });
    }
    if (matches(b, local, LOCAL)) {
      const lName = v.getUint16(local + 26, true), lExtra = v.getUint16(local + 28, true);
      for (const [off, width, kind] of [[6, 2, "flags"], [8, 2, "method"], [14, 4, "crc"], [18, 4, "size"], [22, 4, "size"],
        [26, 2, "name length"], [28, 2, "extra length"]] as const) {
        fields.push({ pos: local + off, width, kind: `local ${kind}` });
      }
      const start = local + 30 + lName + lExtra;
      locals.set(local, { crcPos: local + 14, start });
      entries.push({ localCrc: local + 14, centralCrc: p + 16, start, end: start + v.getUint32(p + 20, true), name });
    }
    p += 46 + nameLen + extraLen + commentLen;
  }
  const data = entries.filter((e) => /\/data\/[^/]+$/.test(e.name)).map((e) => [e.start, e.end] as const).sort((x, y) => x[0] - y[0]);
  return { fields, data, zipEntries: entries };
}

function matches(b: Uint8Array, p: number, sig: readonly number[]): boolean {
  return p >= 0 && p + sig.length <= b.length && sig.every((x, i) => b[p + i] === x);
}

function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

function lastIndexOf(hay: Uint8Array, needle: Uint8Array): number {
  for (let i = hay.length - needle.length; i >= 0; i--) if (needle.every((x, j) => hay[i + j] === x)) return i;
  throw new Error("seed zip has no end-of-central-directory record");
}
