import type { ByteSource } from "../bytes.js";
import { FormatError } from "../errors.js";
import { decodeFloats, DTYPE_BYTES, numel, type TensorEntry } from "../tensor.js";
import { type Checkpoint, MAX_TENSOR_ELEMENTS } from "./checkpoint.js";
import { describe, type PickleValue, PyDict, TorchTensor, unpickle } from "./pickle.js";
import { ZIP_METHOD_STORED, ZipArchive, type ZipEntry } from "./zip.js";

// torch.save (>= 1.6) zip layout: <stem>/data.pkl (the pickled object), <stem>/data/<key> (raw
// little-endian storages), <stem>/version, and in newer torch <stem>/byteorder.

/** data.pkl of a state dict is ~100 bytes per tensor; anything this large is not one. */
const MAX_PICKLE_BYTES = 256 * 1024 * 1024;
const MAX_SMALL_ENTRY_BYTES = 64;
/**
 * What views of shared storages may add to a load beyond the file's own size: sharing is part of
 * the format (tensors are views of storages), but a file must not make a load allocate far more
 * than it holds (thousands of tensors viewing one storage).
 */
export const PTH_SHARED_SLACK_BYTES = 1024 * 1024;
/** Keys under which training scripts commonly nest the state dict. */
const NESTED_STATE_DICT_KEYS = ["state_dict", "model", "module", "model_state_dict"];

export interface PthReadOptions {
  /** Check the CRC-32 of every zip entry as it is read (default true). */
  readonly verifyCrc?: boolean;
}

/** Reads a PyTorch zip checkpoint; tensors are decoded one at a time on toFloat32(). */
export function readPth(src: ByteSource, options: PthReadOptions = {}): Checkpoint {
  const zip = ZipArchive.open(src, { verifyCrc: options.verifyCrc ?? true });
  const pklEntry = findDataPkl(src.name, zip);
  const stem = pklEntry.name.slice(0, -"data.pkl".length);
  const metadata: Record<string, string> = { "pth.archive": stem.slice(0, -1) };
  for (const extra of ["version", "byteorder"]) {
    const e = zip.entries.get(stem + extra);
    // Informational only: skip rather than fail on an odd (e.g. compressed) small entry.
    if (e && e.method === ZIP_METHOD_STORED && e.size <= MAX_SMALL_ENTRY_BYTES) metadata[`pth.${extra}`] = new TextDecoder().decode(zip.read(e)).trim();
  }
  if (metadata["pth.byteorder"] !== undefined && metadata["pth.byteorder"] !== "little") {
    throw new FormatError(src.name, `${stem}byteorder is ${JSON.stringify(metadata["pth.byteorder"])}; only little-endian checkpoints are supported`);
  }
  if (pklEntry.size > MAX_PICKLE_BYTES) throw new FormatError(src.name, `${pklEntry.name} is ${pklEntry.size} bytes: too large for a state dict pickle`);
  const root = unpickle(zip.read(pklEntry), src.name, pklEntry.name);
  const dict = stateDict(src.name, pklEntry.name, root);

  const tensors = new Map<string, TensorEntry>();
  for (const [name, t] of dict) tensors.set(name, tensorEntry(src.name, zip, stem, name, t));
  checkSharing(src, dict);
  return { format: "pth", source: src.name, tensors, metadata };
}

/** `<stem>/data.pkl` at the top level of the archive, whatever the stem ("archive", "model"...). */
function findDataPkl(file: string, zip: ZipArchive): ZipEntry {
  const found = [...zip.entries.values()].filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (found.length === 0) {
    throw new FormatError(file, "zip archive without <name>/data.pkl: not a PyTorch checkpoint saved by torch.save");
  }
  if (found.length > 1) throw new FormatError(file, `zip archive has several pickles (${found.map((e) => e.name).join(", ")})`);
  return found[0];
}

/** The root must be a dict of tensors, or hold one under a conventional key (and nothing weirder). */
function stateDict(file: string, where: string, root: PickleValue): Map<string, TorchTensor> {
  if (!(root instanceof PyDict)) throw new FormatError(file, `${where}: root object is ${describe(root)}, not a dict of tensors`);
  const direct = tensorsOf(root);
  if (direct.ok) return direct.tensors;
  for (const key of NESTED_STATE_DICT_KEYS) {
    const inner = root.map.get(key);
    if (inner instanceof PyDict) {
      const nested = tensorsOf(inner);
      if (nested.ok) return nested.tensors;
      throw new FormatError(file, `${where}: "${key}" is not a dict of tensors (${nested.problem})`);
    }
  }
  throw new FormatError(file, `${where}: root is not a dict of tensors (${direct.problem})`);
}

function tensorsOf(d: PyDict): { ok: true; tensors: Map<string, TorchTensor> } | { ok: false; problem: string } {
  const tensors = new Map<string, TorchTensor>();
  for (const [k, v] of d.map) {
    if (typeof k !== "string") return { ok: false, problem: `key ${String(k)} is not a string` };
    if (!(v instanceof TorchTensor)) return { ok: false, problem: `${JSON.stringify(k)} is ${describe(v)}` };
    tensors.set(k, v);
  }
  return { ok: true, tensors };
}

function tensorEntry(file: string, zip: ZipArchive, stem: string, name: string, t: TorchTensor): TensorEntry {
  const bad = (problem: string): never => { throw new FormatError(file, `tensor ${name}: ${problem}`); };
  const { storage, shape, stride, storageOffset } = t;
  const dtype = storage.dtype;
  if (dtype === null) return bad(`unsupported dtype (torch.${storage.storageClass}); only float32/float16/bfloat16/float64 tensors can be loaded`);
  if (shape.length !== stride.length) bad(`size [${shape}] and stride [${stride}] differ in length`);
  if (shape.some((d) => d < 0) || stride.some((s) => s < 0) || storageOffset < 0) {
    bad(`negative size, stride or offset (size [${shape}], stride [${stride}], offset ${storageOffset})`);
  }
  const count = numel(shape);
  if (count > MAX_TENSOR_ELEMENTS) bad(`absurd shape [${shape}]`);
  // A stride-0 (expanded) view could otherwise ask for far more memory than the file holds.
  if (count > storage.numel) bad(`view of ${count} elements (size [${shape}], stride [${stride}]) is larger than its storage of ${storage.numel}`);
  const item = DTYPE_BYTES[dtype];
  const entryName = `${stem}data/${storage.key}`;
  const entry = zip.entries.get(entryName);
  if (!entry) return bad(`storage ${entryName} is missing from the archive`);
  if (storage.numel * item !== entry.size) bad(`storage ${entryName} has ${entry.size} bytes but ${storage.numel} ${dtype} elements (${storage.numel * item} bytes) were announced`);
  // Highest element index the view touches; it must lie inside the storage.
  let last = storageOffset;
  for (let i = 0; i < shape.length; i++) last += (shape[i] - 1) * stride[i];
  if (count > 0 && (!Number.isSafeInteger(last) || last >= storage.numel)) {
    bad(`storage out of bounds: view (offset ${storageOffset}, size [${shape}], stride [${stride}]) reaches element ${last} of a storage of ${storage.numel}`);
  }
  zip.range(entry); // refuses a compressed storage now rather than at first use
  const contiguous = isContiguous(shape, stride);
  return {
    name, dtype, shape,
    toFloat32: () => {
      if (count === 0) return new Float32Array(0);
      // Read only the span the view covers; a contiguous view is decoded directly.
      const span = last - storageOffset + 1;
      const raw = decodeFloats(zip.readPart(entry, storageOffset * item, span * item), dtype, span);
      return contiguous ? raw : gather(raw, shape, stride);
    },
    ...(contiguous ? { raw: () => zip.readPart(entry, storageOffset * item, count * item) } : {}),
  };
}

/** Refuses files whose views would materialise more bytes than the file holds (plus a small slack). */
function checkSharing(src: ByteSource, dict: ReadonlyMap<string, TorchTensor>): void {
  let total = 0;
  const views = new Map<string, string[]>();
  for (const [name, t] of dict) {
    if (t.storage.dtype === null) continue;
    total += numel(t.shape) * DTYPE_BYTES[t.storage.dtype];
    const list = views.get(t.storage.key) ?? [];
    list.push(name);
    views.set(t.storage.key, list);
  }
  if (total <= src.size + PTH_SHARED_SLACK_BYTES) return;
  const [key, names] = [...views].reduce((a, b) => (b[1].length > a[1].length ? b : a));
  const shown = names.slice(0, 3).join(", ") + (names.length > 3 ? ` and ${names.length - 3} more` : "");
  throw new FormatError(src.name, `tensors would take ${total} bytes from a file of ${src.size}: views share storages (storage ${key} is used by ${shown}); refusing a load that large`);
}

function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expect = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expect) return false;
    expect *= shape[i];
  }
  return true;
}

/** Row-major copy of a strided view whose first element is src[0]. */
function gather(src: Float32Array, shape: readonly number[], stride: readonly number[]): Float32Array {
  const out = new Float32Array(numel(shape));
  const nd = shape.length;
  const idx = new Array<number>(nd).fill(0);
  let off = 0;
  for (let o = 0; o < out.length; o++) {
    out[o] = src[off];
    // Odometer increment over the index, keeping the storage offset in step.
    for (let d = nd - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) { off += stride[d]; break; }
      off -= (shape[d] - 1) * stride[d];
      idx[d] = 0;
    }
  }
  return out;
}
