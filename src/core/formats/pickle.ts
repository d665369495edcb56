import { Reader } from "../bytes.js";
import { FormatError } from "../errors.js";

/**
 * A safe pickle interpreter for `torch.save` state dicts. It builds plain values and never calls
 * anything: the only globals it accepts are a fixed allow-list of torch/collections names whose
 * effect it reproduces itself. Any other global (`os.system`, `builtins.eval`...) is refused as
 * soon as the GLOBAL/STACK_GLOBAL opcode names it, before any REDUCE could use it.
 */

/** Python tuple (kept apart from lists, which are plain arrays). */
export class PyTuple {
  constructor(readonly items: readonly PickleValue[]) {}
}

/** Python dict / OrderedDict with str or int keys, in insertion order. */
export class PyDict {
  readonly map = new Map<string | number | bigint, PickleValue>();
}

/** One of the allow-listed globals; a marker, never something callable. */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get qualified(): string { return `${this.module}.${this.name}`; }
}

export type StorageDType = "f32" | "f16" | "bf16" | "f64";

/** Persistent id ('storage', cls, key, location, numel): the bytes live in `<stem>/data/<key>`. */
export class TorchStorage {
  constructor(
    readonly storageClass: string,
    /** null for storages of types this project cannot use (ints, bools...). */
    readonly dtype: StorageDType | null,
    readonly key: string,
    readonly location: string,
    readonly numel: number,
  ) {}
}

/** The arguments of torch._utils._rebuild_tensor_v2: a strided view into a storage. */
export class TorchTensor {
  constructor(
    readonly storage: TorchStorage,
    readonly storageOffset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {}
}

export type PickleValue =
  | null | boolean | number | bigint | string | Uint8Array
  | PickleValue[] | PyTuple | PyDict | PyGlobal | TorchStorage | TorchTensor;

/** Storage classes torch pickles by name; the value is the element type, or null when unsupported. */
const STORAGE_CLASSES: Record<string, StorageDType | null> = {
  FloatStorage: "f32", HalfStorage: "f16", BFloat16Storage: "bf16", DoubleStorage: "f64",
  // Allowed as names only so that an integer tensor gets a clear "unsupported dtype" error.
  LongStorage: null, IntStorage: null, ShortStorage: null, CharStorage: null, ByteStorage: null, BoolStorage: null,
};

const ALLOWED_GLOBALS = new Set([
  "collections.OrderedDict",
  "torch._utils._rebuild_tensor",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_parameter",
  "torch._utils._rebuild_parameter_with_state",
  "torch.Size",
  ...Object.keys(STORAGE_CLASSES).map((c) => `torch.${c}`),
]);

// Bounds: every structure grows by at most one item per opcode byte, so these only cap
// pathological inputs; real state dicts stay far below them.
const MAX_STACK = 1_000_000;
const MAX_MEMO = 10_000_000;
const MAX_LONG_BYTES = 64;
const MAX_MARK_DEPTH = 10_000;
const HIGHEST_PROTOCOL = 5;

const OPCODE_NAMES: Record<number, string> = {
  0x80: "PROTO", 0x95: "FRAME", 0x2e: "STOP", 0x28: "MARK", 0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP",
  0x4e: "NONE", 0x88: "NEWTRUE", 0x89: "NEWFALSE", 0x4a: "BININT", 0x4b: "BININT1", 0x4d: "BININT2",
  0x8a: "LONG1", 0x8b: "LONG4", 0x49: "INT", 0x4c: "LONG", 0x47: "BINFLOAT", 0x46: "FLOAT",
  0x58: "BINUNICODE", 0x8c: "SHORT_BINUNICODE", 0x8d: "BINUNICODE8", 0x55: "SHORT_BINSTRING", 0x54: "BINSTRING",
  0x42: "BINBYTES", 0x43: "SHORT_BINBYTES", 0x8e: "BINBYTES8", 0x96: "BYTEARRAY8", 0x56: "UNICODE", 0x53: "STRING",
  0x7d: "EMPTY_DICT", 0x5d: "EMPTY_LIST", 0x29: "EMPTY_TUPLE", 0x74: "TUPLE", 0x85: "TUPLE1", 0x86: "TUPLE2",
  0x87: "TUPLE3", 0x6c: "LIST", 0x64: "DICT", 0x61: "APPEND", 0x65: "APPENDS", 0x73: "SETITEM", 0x75: "SETITEMS",
  0x71: "BINPUT", 0x72: "LONG_BINPUT", 0x68: "BINGET", 0x6a: "LONG_BINGET", 0x94: "MEMOIZE", 0x70: "PUT", 0x67: "GET",
  0x63: "GLOBAL", 0x93: "STACK_GLOBAL", 0x52: "REDUCE", 0x62: "BUILD", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX",
  0x51: "BINPERSID", 0x50: "PERSID", 0x69: "INST", 0x6f: "OBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4",
  0x8f: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
};

/** Human-readable type of a value, for error messages. */
export function describe(v: PickleValue): string {
  if (v === null) return "None";
  if (Array.isArray(v)) return "list";
  if (v instanceof Uint8Array) return "bytes";
  if (v instanceof PyTuple) return "tuple";
  if (v instanceof PyDict) return "dict";
  if (v instanceof PyGlobal) return v.qualified;
  if (v instanceof TorchStorage) return `storage ${v.storageClass}`;
  if (v instanceof TorchTensor) return "tensor";
  if (typeof v === "bigint") return "int";
  if (typeof v === "number") return Number.isInteger(v) ? "int" : "float";
  return typeof v === "boolean" ? "bool" : "str";
}

/**
 * Runs a pickle and returns its root value. `where` names the pickle inside its file
 * (e.g. "archive/data.pkl") in error messages, which all start with `file`.
 */
export function unpickle(bytes: Uint8Array, file: string, where = "pickle"): PickleValue {
  return new Unpickler(bytes, file, where).run();
}

class Unpickler {
  private readonly r: Reader;
  private stack: PickleValue[] = [];
  private readonly marks: PickleValue[][] = [];
  private readonly memo = new Map<number, PickleValue>();

  constructor(bytes: Uint8Array, private readonly file: string, private readonly where: string) {
    // Reader errors then read "file: where: problem", like this.fail's.
    this.r = new Reader(`${file}: ${where}`, bytes);
  }

  private fail(problem: string): never {
    throw new FormatError(this.file, `${this.where}: ${problem}`);
  }

  private push(v: PickleValue): void {
    if (this.stack.length >= MAX_STACK) this.fail(`stack exceeds ${MAX_STACK} items`);
    this.stack.push(v);
  }

  private pop(op: string): PickleValue {
    if (this.stack.length === 0) this.fail(`${op} on an empty stack`);
    return this.stack.pop() as PickleValue;
  }

  private top(op: string): PickleValue {
    if (this.stack.length === 0) this.fail(`${op} on an empty stack`);
    return this.stack[this.stack.length - 1];
  }

  /** Items pushed since the last MARK; restores the stack below it. */
  private popMark(op: string): PickleValue[] {
    const items = this.stack;
    const below = this.marks.pop();
    if (below === undefined) this.fail(`${op} without a MARK`);
    this.stack = below;
    return items;
  }

  private memoPut(index: number): void {
    if (this.memo.size >= MAX_MEMO && !this.memo.has(index)) this.fail(`memo exceeds ${MAX_MEMO} entries`);
    this.memo.set(index, this.top("PUT"));
  }

  private memoGet(index: number): void {
    if (!this.memo.has(index)) this.fail(`memo key ${index} was never stored`);
    this.push(this.memo.get(index) as PickleValue);
  }

  private str(n: number, what: string): string {
    const raw = this.bytes(n, what);
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(raw);
    } catch {
      return this.fail(`${what} is not valid UTF-8`);
    }
  }

  private bytes(n: number, what: string): Uint8Array {
    if (n > this.r.bytes.length - this.r.pos) this.fail(`truncated ${what} (${n} bytes announced, ${this.r.bytes.length - this.r.pos} left)`);
    return this.r.take(n, what).slice(); // a copy: values must not pin the whole pickle buffer
  }

  /** A newline-terminated text argument (protocol 0 opcodes). */
  private line(what: string): string {
    const start = this.r.pos;
    const end = this.r.bytes.indexOf(0x0a, start);
    if (end < 0) this.fail(`truncated ${what} (no newline)`);
    this.r.pos = end + 1;
    return new TextDecoder().decode(this.r.bytes.subarray(start, end));
  }

  private long(n: number): number | bigint {
    if (n > MAX_LONG_BYTES) this.fail(`integer of ${n} bytes is too long`);
    const b = this.bytes(n, "LONG");
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (n > 0 && b[n - 1] & 0x80) v -= 1n << BigInt(8 * n);
    return Number.isSafeInteger(Number(v)) && BigInt(Number(v)) === v ? Number(v) : v;
  }

  private global(module: string, name: string): PyGlobal {
    const q = `${module}.${name}`;
    if (!ALLOWED_GLOBALS.has(q)) {
      this.fail(`refusing to load global ${q}: only torch tensor/storage rebuilding and collections.OrderedDict are allowed (the file may be malicious)`);
    }
    return new PyGlobal(module, name);
  }

  run(): PickleValue {
    const r = this.r;
    for (;;) {
      if (r.pos >= r.bytes.length) this.fail("truncated: no STOP opcode");
      const at = r.pos;
      const op = r.u8();
      switch (op) {
        case 0x80: { // PROTO
          const proto = r.u8("PROTO");
          if (proto > HIGHEST_PROTOCOL) this.fail(`unsupported pickle protocol ${proto}`);
          break;
        }
        case 0x95: r.u64("FRAME"); break; // FRAME: a length hint only
        case 0x2e: { // STOP
          if (this.marks.length) this.fail("STOP inside an unclosed MARK");
          if (this.stack.length !== 1) this.fail(`STOP with ${this.stack.length} items on the stack`);
          return this.stack[0];
        }
        case 0x28: // MARK
          if (this.marks.length >= MAX_MARK_DEPTH) this.fail(`MARKs nested deeper than ${MAX_MARK_DEPTH}`);
          this.marks.push(this.stack);
          this.stack = [];
          break;
        case 0x30: this.pop("POP"); break;
        case 0x31: this.popMark("POP_MARK"); break;
        case 0x32: this.push(this.top("DUP")); break;
        case 0x4e: this.push(null); break;
        case 0x88: this.push(true); break;
        case 0x89: this.push(false); break;
        case 0x4a: this.push(r.i32("BININT")); break;
        case 0x4b: this.push(r.u8("BININT1")); break;
        case 0x4d: this.push(r.u16("BININT2")); break;
        case 0x8a: this.push(this.long(r.u8("LONG1"))); break;
        case 0x8b: this.push(this.long(r.u32("LONG4"))); break;
        case 0x49: { // INT (text; also protocol-0 booleans I00/I01)
          const s = this.line("INT");
          if (s === "00" || s === "01") { this.push(s === "01"); break; }
          const v = Number(s);
          if (!Number.isSafeInteger(v)) this.fail(`bad INT ${JSON.stringify(s.slice(0, 40))}`);
          this.push(v);
          break;
        }
        case 0x47: { // BINFLOAT: big-endian double
          const b = this.bytes(8, "BINFLOAT");
          this.push(new DataView(b.buffer, b.byteOffset, 8).getFloat64(0, false));
          break;
        }
        case 0x46: { // FLOAT (text)
          const s = this.line("FLOAT");
          const v = Number(s);
          if (Number.isNaN(v) && s.trim().toLowerCase() !== "nan") this.fail(`bad FLOAT ${JSON.stringify(s.slice(0, 40))}`);
          this.push(v);
          break;
        }
        case 0x58: this.push(this.str(r.u32("BINUNICODE"), "BINUNICODE")); break;
        case 0x8c: this.push(this.str(r.u8("SHORT_BINUNICODE"), "SHORT_BINUNICODE")); break;
        case 0x8d: this.push(this.str(r.u64("BINUNICODE8"), "BINUNICODE8")); break;
        // Python 2 str: bytes decoded as latin-1 (what torch.load's default encoding does).
        case 0x55: this.push(latin1(this.bytes(r.u8("SHORT_BINSTRING"), "SHORT_BINSTRING"))); break;
        case 0x54: {
          const n = r.i32("BINSTRING");
          if (n < 0) this.fail("BINSTRING with a negative length");
          this.push(latin1(this.bytes(n, "BINSTRING")));
          break;
        }
        case 0x42: this.push(this.bytes(r.u32("BINBYTES"), "BINBYTES")); break;
        case 0x43: this.push(this.bytes(r.u8("SHORT_BINBYTES"), "SHORT_BINBYTES")); break;
        case 0x8e: this.push(this.bytes(r.u64("BINBYTES8"), "BINBYTES8")); break;
        case 0x96: this.push(this.bytes(r.u64("BYTEARRAY8"), "BYTEARRAY8")); break;
        case 0x7d: this.push(new PyDict()); break;
        case 0x5d: this.push([]); break;
        case 0x29: this.push(new PyTuple([])); break;
        case 0x74: this.push(new PyTuple(this.popMark("TUPLE"))); break;
        case 0x85: { const a = this.pop("TUPLE1"); this.push(new PyTuple([a])); break; }
        case 0x86: { const b = this.pop("TUPLE2"); const a = this.pop("TUPLE2"); this.push(new PyTuple([a, b])); break; }
        case 0x87: {
          const c = this.pop("TUPLE3"); const b = this.pop("TUPLE3"); const a = this.pop("TUPLE3");
          this.push(new PyTuple([a, b, c]));
          break;
        }
        case 0x6c: this.push(this.popMark("LIST")); break;
        case 0x64: { const d = new PyDict(); this.setItems(d, this.popMark("DICT"), "DICT"); this.push(d); break; }
        case 0x61: { const v = this.pop("APPEND"); this.list(this.top("APPEND"), "APPEND").push(v); break; }
        case 0x65: {
          const items = this.popMark("APPENDS");
          const list = this.list(this.top("APPENDS"), "APPENDS");
          for (const v of items) list.push(v); // no spread: a long batch would overflow the call stack
          break;
        }
        case 0x73: {
          const v = this.pop("SETITEM"); const k = this.pop("SETITEM");
          this.setItems(this.top("SETITEM"), [k, v], "SETITEM");
          break;
        }
        case 0x75: { const items = this.popMark("SETITEMS"); this.setItems(this.top("SETITEMS"), items, "SETITEMS"); break; }
        case 0x71: this.memoPut(r.u8("BINPUT")); break;
        case 0x72: this.memoPut(r.u32("LONG_BINPUT")); break;
        case 0x94: this.memoPut(this.memo.size); break; // MEMOIZE
        case 0x70: this.memoPut(this.memoIndex(this.line("PUT"))); break;
        case 0x68: this.memoGet(r.u8("BINGET")); break;
        case 0x6a: this.memoGet(r.u32("LONG_BINGET")); break;
        case 0x67: this.memoGet(this.memoIndex(this.line("GET"))); break;
        case 0x63: { // GLOBAL "module\nname\n"
          const module = this.line("GLOBAL module");
          this.push(this.global(module, this.line("GLOBAL name")));
          break;
        }
        case 0x93: { // STACK_GLOBAL
          const name = this.pop("STACK_GLOBAL"); const module = this.pop("STACK_GLOBAL");
          if (typeof module !== "string" || typeof name !== "string") this.fail("STACK_GLOBAL needs two strings");
          this.push(this.global(module, name));
          break;
        }
        case 0x52: { // REDUCE: callable(*args)
          const args = this.pop("REDUCE"); const fn = this.pop("REDUCE");
          this.push(this.call(fn, args, "REDUCE"));
          break;
        }
        case 0x81: { // NEWOBJ: cls.__new__(cls, *args)
          const args = this.pop("NEWOBJ"); const cls = this.pop("NEWOBJ");
          this.push(this.call(cls, args, "NEWOBJ"));
          break;
        }
        case 0x62: { // BUILD: obj.__setstate__(state)
          const state = this.pop("BUILD");
          const obj = this.top("BUILD");
          // OrderedDict state is the state dict's `_metadata` attribute: irrelevant to the tensors.
          if (!(obj instanceof PyDict) && !(obj instanceof TorchTensor)) this.fail(`BUILD on ${describe(obj)}`);
          if (state !== null && !(state instanceof PyDict) && !(state instanceof PyTuple)) this.fail(`BUILD with ${describe(state)} state`);
          break;
        }
        case 0x51: this.push(this.persistentLoad(this.pop("BINPERSID"))); break;
        default: {
          const name = OPCODE_NAMES[op];
          this.fail(`unsupported pickle opcode ${name ?? "(unknown)"} 0x${op.toString(16).padStart(2, "0")} at byte ${at}`);
        }
      }
    }
  }

  private memoIndex(s: string): number {
    const v = Number(s);
    if (!Number.isSafeInteger(v) || v < 0) this.fail(`bad memo key ${JSON.stringify(s.slice(0, 40))}`);
    return v;
  }

  private list(target: PickleValue, op: string): PickleValue[] {
    if (!Array.isArray(target)) this.fail(`${op} on ${describe(target)}`);
    return target;
  }

  private setItems(target: PickleValue, items: PickleValue[], op: string): void {
    if (!(target instanceof PyDict)) this.fail(`${op} on ${describe(target)}`);
    if (items.length % 2) this.fail(`${op} with an odd number of items`);
    for (let i = 0; i < items.length; i += 2) {
      const k = items[i];
      if (typeof k !== "string" && typeof k !== "number" && typeof k !== "bigint") this.fail(`${op}: unsupported dict key of type ${describe(k)}`);
      target.map.set(k, items[i + 1]);
    }
  }

  /** The effect of each allow-listed callable, reproduced on plain values. */
  private call(fn: PickleValue, args: PickleValue, op: string): PickleValue {
    if (!(fn instanceof PyGlobal)) this.fail(`${op} on ${describe(fn)}, which is not callable`);
    if (!(args instanceof PyTuple)) this.fail(`${op} ${fn.qualified} with ${describe(args)} arguments`);
    const a = args.items;
    switch (fn.qualified) {
      case "collections.OrderedDict": {
        const d = new PyDict();
        if (a.length === 0) return d;
        if (a.length === 1 && Array.isArray(a[0])) {
          for (const pair of a[0]) {
            if (!(pair instanceof PyTuple) || pair.items.length !== 2) this.fail("OrderedDict argument is not a list of pairs");
            this.setItems(d, [...pair.items], "OrderedDict");
          }
          return d;
        }
        return this.fail("unsupported OrderedDict arguments");
      }
      case "torch._utils._rebuild_tensor":
      case "torch._utils._rebuild_tensor_v2": {
        // (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
        const [storage, offset, size, stride] = a;
        if (a.length < 4 || !(storage instanceof TorchStorage)) this.fail(`${fn.qualified} without a storage argument`);
        return new TorchTensor(storage, this.index(offset, "storage_offset"), this.ints(size, "size"), this.ints(stride, "stride"));
      }
      case "torch._utils._rebuild_parameter":
      case "torch._utils._rebuild_parameter_with_state": {
        if (!(a[0] instanceof TorchTensor)) this.fail(`${fn.qualified} without a tensor argument`);
        return a[0];
      }
      case "torch.Size":
        if (a.length === 1 && a[0] instanceof PyTuple) return new PyTuple(this.ints(a[0], "torch.Size"));
        return this.fail("unsupported torch.Size arguments");
      default:
        return this.fail(`${op} on ${fn.qualified} is not supported`);
    }
  }

  private index(v: PickleValue, what: string): number {
    if (typeof v !== "number" || !Number.isSafeInteger(v)) this.fail(`tensor ${what} is ${describe(v)}, not an int`);
    return v;
  }

  private ints(v: PickleValue, what: string): number[] {
    if (!(v instanceof PyTuple)) this.fail(`tensor ${what} is ${describe(v)}, not a tuple`);
    return v.items.map((x) => this.index(x, what));
  }

  private persistentLoad(pid: PickleValue): TorchStorage {
    if (!(pid instanceof PyTuple) || pid.items[0] !== "storage" || pid.items.length !== 5) {
      this.fail(`unsupported persistent id (${describe(pid)}); expected ('storage', class, key, location, numel)`);
    }
    const [, cls, key, location, numel] = pid.items;
    if (!(cls instanceof PyGlobal) || cls.module !== "torch" || !Object.hasOwn(STORAGE_CLASSES, cls.name)) {
      this.fail(`persistent id names ${describe(cls)}, not a torch storage class`);
    }
    if (typeof key !== "string" || typeof location !== "string") this.fail("persistent id key/location are not strings");
    if (typeof numel !== "number" || !Number.isSafeInteger(numel) || numel < 0) this.fail(`storage ${key} has invalid size ${String(numel)}`);
    return new TorchStorage(cls.name, STORAGE_CLASSES[cls.name], key, location, numel);
  }
}

function latin1(b: Uint8Array): string {
  let s = "";
  for (const c of b) s += String.fromCharCode(c);
  return s;
}
