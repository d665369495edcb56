import { FormatError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import type { Architecture, Version } from "./model.js";
import { rwkv4 } from "./v4.js";
import { rwkv5 } from "./v5.js";
import { rwkv6 } from "./v6.js";
import { rwkv7 } from "./v7.js";

/**
 * The one place that knows which tensor names mean which architecture (SPEC §2.3, shared/README):
 * `att.r_k` or `att.x_r` -> 7; `att.time_maa_x` -> 6; `att.ln_x.weight` -> 5 (5.2 with a gate, else 5.1);
 * otherwise 4.
 */
export function detectVersion(ckpt: Checkpoint): Version {
  const has = (n: string) => ckpt.tensors.has(n);
  if (!has("emb.weight")) throw new FormatError(ckpt.source, "missing tensor emb.weight: not an RWKV checkpoint");
  if (has("blocks.0.att.r_k") || has("blocks.0.att.x_r")) return "7";
  if (has("blocks.0.att.time_maa_x")) return "6";
  if (has("blocks.0.att.ln_x.weight")) return has("blocks.0.att.gate.weight") ? "5.2" : "5.1";
  if (has("blocks.0.att.time_decay")) return "4";
  throw new FormatError(ckpt.source, "unrecognised RWKV checkpoint: no blocks.0.att tensors of any known version");
}

const ARCHITECTURES: Partial<Record<Version, Architecture>> = { "4": rwkv4, "5.1": rwkv5, "5.2": rwkv5, "6": rwkv6, "7": rwkv7 };

export function architectureFor(version: Version, source: string): Architecture {
  const a = ARCHITECTURES[version];
  if (!a) throw new FormatError(source, `RWKV-${version} is not supported`);
  return a;
}

