import type { ByteSource } from "../bytes.js";
import { FormatError } from "../errors.js";
import type { Checkpoint } from "./checkpoint.js";
import { isGguf } from "./gguf.js";
import { readGgufCheckpoint } from "./gguf-rwkv.js";
import { readPth } from "./pth.js";
import { isRwkvCpp, readRwkvCpp } from "./rwkvcpp.js";
import { isSafetensors, readSafetensors } from "./safetensors.js";
import { isZip } from "./zip.js";

const PICKLE_PROTO = 0x80;
const MAX_PICKLE_PROTOCOL = 5;

export interface OpenOptions {
  /** Check checksums the format carries (the CRC-32 of .pth zip entries) as data is read; default true. */
  readonly verifyChecksums?: boolean;
}

/** Opens a checkpoint, choosing the reader from the file's first bytes, never from its extension. */
export function openCheckpoint(src: ByteSource, options: OpenOptions = {}): Checkpoint {
  if (src.size < 8) throw new FormatError(src.name, `truncated: ${src.size} bytes is too short for any model format`);
  const head = src.read(0, Math.min(16, src.size));
  if (isZip(head)) return readPth(src, { verifyCrc: options.verifyChecksums ?? true });
  if (isRwkvCpp(head)) return readRwkvCpp(src);
  if (isSafetensors(head)) return readSafetensors(src);
  if (isGguf(head)) return readGgufCheckpoint(src);
  if (head[0] === PICKLE_PROTO && head[1] <= MAX_PICKLE_PROTOCOL) {
    throw new FormatError(src.name, "a bare pickle (legacy torch.save format before PyTorch 1.6?) is not supported; re-save it with a current torch.save");
  }
  throw new FormatError(src.name, "unknown file format (not .pth zip, safetensors, rwkv.cpp .bin or GGUF)");
}
