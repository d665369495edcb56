import type { ByteSource } from "../bytes.js";
import { FormatError } from "../errors.js";
import type { Checkpoint } from "./checkpoint.js";
import { isSafetensors, readSafetensors } from "./safetensors.js";

/** Opens a checkpoint, choosing the reader from the file's first bytes, never from its extension. */
export function openCheckpoint(src: ByteSource): Checkpoint {
  if (src.size < 8) throw new FormatError(src.name, `truncated: ${src.size} bytes is too short for any model format`);
  const head = src.read(0, Math.min(16, src.size));
  if (isSafetensors(head)) return readSafetensors(src);
  throw new FormatError(src.name, "unknown file format (not .pth zip, safetensors or rwkv.cpp .bin)");
}
