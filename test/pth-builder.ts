import { crc32 } from "../src/core/crc32.js";
// Builders for hand-made torch.save-style files in tests: a stored zip writer (optionally ZIP64,
// with torch's 64-byte data alignment) and a pickle writer that emits the opcodes torch uses.

const enc = new TextEncoder();

function u16(v: number): number[] { return [v & 0xff, (v >>> 8) & 0xff]; }
function u32(v: number): number[] { return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff]; }
function u64(v: number): number[] { return [...u32(v % 2 ** 32), ...u32(Math.floor(v / 2 ** 32))]; }

export class PickleWriter {
  private readonly out: number[] = [];
  op(...bytes: number[]): this { this.out.push(...bytes); return this; }
  proto(n: number): this { return this.op(0x80, n); }
  /** GLOBAL "module\nname\n" (protocol 2). */
  global(module: string, name: string): this { return this.op(0x63, ...enc.encode(`${module}\n${name}\n`)); }
  /** SHORT_BINUNICODE module, name, STACK_GLOBAL (protocol 4). */
  stackGlobal(module: string, name: string): this { return this.shortStr(module).shortStr(name).op(0x93); }
  str(s: string): this { const b = enc.encode(s); return this.op(0x58, ...u32(b.length), ...b); }
  shortStr(s: string): this { const b = enc.encode(s); return this.op(0x8c, b.length, ...b); }
  int(n: number): this { return this.op(0x4a, ...u32(n >>> 0)); }
  mark(): this { return this.op(0x28); }
  tuple(): this { return this.op(0x74); }
  emptyTuple(): this { return this.op(0x29); }
  emptyDict(): this { return this.op(0x7d); }
  reduce(): this { return this.op(0x52); }
  binpersid(): this { return this.op(0x51); }
  setitems(): this { return this.op(0x75); }
  false(): this { return this.op(0x89); }
  put(i: number): this { return this.op(0x71, i); }
  get(i: number): this { return this.op(0x68, i); }
  memoize(): this { return this.op(0x94); }
  frame(n: number): this { return this.op(0x95, ...u64(n)); }
  stop(): this { return this.op(0x2e); }
  bytes(): Uint8Array { return Uint8Array.from(this.out); }
}

export interface TensorSpec {
  readonly name: string;
  readonly storageClass: string;
  readonly key: string;
  readonly storageNumel: number;
  readonly offset: number;
  readonly size: readonly number[];
  readonly stride: readonly number[];
}

export interface PickleOptions {
  /** Use protocol-4 opcodes (FRAME, STACK_GLOBAL, SHORT_BINUNICODE, MEMOIZE). */
  readonly protocol4?: boolean;
  /** Wrap each tensor in torch._utils._rebuild_parameter (an nn.Parameter). */
  readonly parameter?: boolean;
  /** Put the state dict under this key of an outer dict. */
  readonly nestUnder?: string;
  /** Add the `_metadata` attribute nn.Module.state_dict() carries (a BUILD on the OrderedDict). */
  readonly stateMetadata?: boolean;
}

/** The pickle torch.save writes for an OrderedDict of tensors. */
export function statePickle(tensors: readonly TensorSpec[], opts: PickleOptions = {}): Uint8Array {
  const p = new PickleWriter();
  const g = (m: string, n: string) => (opts.protocol4 ? p.stackGlobal(m, n).memoize() : p.global(m, n));
  const s = (v: string) => (opts.protocol4 ? p.shortStr(v).memoize() : p.str(v));
  const tuple = (items: readonly number[]) => { p.mark(); for (const v of items) p.int(v); p.tuple(); };
  p.proto(opts.protocol4 ? 4 : 2);
  if (opts.protocol4) p.frame(0);
  if (opts.nestUnder !== undefined) p.emptyDict().mark().str(opts.nestUnder);
  g("collections", "OrderedDict").emptyTuple().reduce().mark();
  for (const t of tensors) {
    s(t.name);
    if (opts.parameter) g("torch._utils", "_rebuild_parameter").mark();
    g("torch._utils", "_rebuild_tensor_v2").mark();
    p.mark().str("storage"); g("torch", t.storageClass); p.str(t.key).str("cpu").int(t.storageNumel).tuple().binpersid();
    p.int(t.offset);
    tuple(t.size);
    tuple(t.stride);
    p.false();
    g("collections", "OrderedDict").emptyTuple().reduce();
    p.tuple().reduce();
    if (opts.parameter) { p.false(); g("collections", "OrderedDict").emptyTuple().reduce(); p.tuple().reduce(); }
  }
  p.setitems();
  if (opts.stateMetadata) {
    p.emptyDict().str("_metadata");
    g("collections", "OrderedDict").emptyTuple().reduce().mark();
    p.str("").emptyDict().str("version").int(1).op(0x73); // SETITEM
    p.setitems().op(0x73).op(0x62); // SETITEM, BUILD
  }
  if (opts.nestUnder !== undefined) p.setitems();
  return p.stop().bytes();
}

export interface ZipOptions {
  /** Write ZIP64 extra fields and end records (as torch does for files over 4 GiB). */
  readonly zip64?: boolean;
  /** Compression method recorded for every entry (the bytes are written as given). */
  readonly method?: number;
}

const ALIGN = 64;

/** A zip of stored entries, each data start padded to 64 bytes with a local extra field as torch does. */
export function storedZip(entries: ReadonlyArray<readonly [string, Uint8Array]>, opts: ZipOptions = {}): Uint8Array {
  const out: number[] = [];
  const central: number[] = [];
  const FF32 = 0xffffffff;
  for (const [name, data] of entries) {
    const nameBytes = [...enc.encode(name)];
    const offset = out.length;
    // Local extra: an unknown id padding field so the data starts 64-byte aligned.
    const base = offset + 30 + nameBytes.length + 4;
    const pad = (ALIGN - (base % ALIGN)) % ALIGN;
    const localExtra = [...u16(0x4246), ...u16(pad), ...new Array<number>(pad).fill(0x5a)];
    const size32 = opts.zip64 ? FF32 : data.length;
    const crc = crc32(data);
    out.push(...u32(0x04034b50), ...u16(45), ...u16(0), ...u16(opts.method ?? 0), ...u16(0), ...u16(0), ...u32(crc),
      ...u32(size32), ...u32(size32), ...u16(nameBytes.length), ...u16(localExtra.length), ...nameBytes, ...localExtra);
    for (const b of data) out.push(b);
    const extra = opts.zip64 ? [...u16(1), ...u16(24), ...u64(data.length), ...u64(data.length), ...u64(offset)] : [];
    central.push(...u32(0x02014b50), ...u16(45), ...u16(45), ...u16(0), ...u16(opts.method ?? 0), ...u16(0), ...u16(0), ...u32(crc),
      ...u32(size32), ...u32(size32), ...u16(nameBytes.length), ...u16(extra.length), ...u16(0), ...u16(0), ...u16(0), ...u32(0),
      ...u32(opts.zip64 ? FF32 : offset), ...nameBytes, ...extra);
  }
  const cdOffset = out.length;
  out.push(...central);
  const n = entries.length;
  if (opts.zip64) {
    const recOffset = out.length;
    out.push(...u32(0x06064b50), ...u64(44), ...u16(45), ...u16(45), ...u32(0), ...u32(0), ...u64(n), ...u64(n),
      ...u64(central.length), ...u64(cdOffset));
    out.push(...u32(0x07064b50), ...u32(0), ...u64(recOffset), ...u32(1));
    out.push(...u32(0x06054b50), ...u16(0), ...u16(0), ...u16(0xffff), ...u16(0xffff), ...u32(FF32), ...u32(FF32), ...u16(0));
  } else {
    out.push(...u32(0x06054b50), ...u16(0), ...u16(0), ...u16(n), ...u16(n), ...u32(central.length), ...u32(cdOffset), ...u16(0));
  }
  return Uint8Array.from(out);
}

/** A torch.save-style archive: `<stem>/data.pkl`, `<stem>/data/<key>` storages, `<stem>/version`. */
export function torchZip(stem: string, pickle: Uint8Array, storages: ReadonlyMap<string, Uint8Array>, opts: ZipOptions = {}): Uint8Array {
  return storedZip([
    [`${stem}/data.pkl`, pickle],
    ...[...storages].map(([k, v]) => [`${stem}/data/${k}`, v] as const),
    [`${stem}/version`, enc.encode("3\n")],
  ], opts);
}

/** Little-endian bytes of f32 values. */
export function f32Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}
