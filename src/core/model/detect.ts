import { FormatError } from "../errors.js";
import type { Checkpoint } from "../formats/checkpoint.js";
import type { Architecture, Version } from "./model.js";
import { rwkv4 } from "./v4.js";
import { rwkv5 } from "./v5.js";
import { rwkv6 } from "./v6.js";
import { rwkv7 } from "./v7.js";
import { rwkv7a } from "./v7a/index.js";
import { rwkv7b } from "./v7b/index.js";
import { rwkv8 } from "./v8/index.js";
import { rwkv8Hybrid } from "./v8/hybrid.js";

/**
 * The one place that knows which tensor names mean which architecture (SPEC §2.3, shared/README):
 * `att.r_k` or `att.x_r` -> 7, and among those: `qkv.kkup.weight` -> 8-hybrid (RWKV-8 rc00 hybrid),
 * `qkv.k_emb.weight` -> 7b, `ffn.s_emb.weight` -> 7a, `ffn.enn.weight` -> 8 (rc00); `att.time_maa_x` -> 6; `att.ln_x.weight` -> 5 (5.2 with a gate, else 5.1);
 * otherwise 4.
 */
export function detectVersion(ckpt: Checkpoint): Version {
  const has = (n: string) => ckpt.tensors.has(n);
  if (!has("emb.weight")) throw new FormatError(ckpt.source, "missing tensor emb.weight: not an RWKV checkpoint");
  if (has("blocks.0.att.r_k") || has("blocks.0.att.x_r")) {
    if (has("blocks.0.qkv.kkup.weight")) return "8-hybrid";
    if (has("blocks.0.qkv.k_emb.weight")) return "7b";
    if (has("blocks.0.ffn.s_emb.weight")) return "7a";
    if (has("blocks.0.ffn.enn.weight")) return "8";
    return "7";
  }
  if (has("blocks.0.att.time_maa_x")) return "6";
  if (has("blocks.0.att.ln_x.weight")) return has("blocks.0.att.gate.weight") ? "5.2" : "5.1";
  if (has("blocks.0.att.time_decay")) return "4";
  throw new FormatError(ckpt.source, "unrecognised RWKV checkpoint: no blocks.0.att tensors of any known version");
}

const ARCHITECTURES: Partial<Record<Version, Architecture>> = { "4": rwkv4, "5.1": rwkv5, "5.2": rwkv5, "6": rwkv6, "7": rwkv7, "7a": rwkv7a, "7b": rwkv7b, "8": rwkv8, "8-hybrid": rwkv8Hybrid };

export function architectureFor(version: Version, source: string): Architecture {
  const a = ARCHITECTURES[version];
  if (!a) throw new FormatError(source, `RWKV-${version} is not supported`);
  return a;
}

