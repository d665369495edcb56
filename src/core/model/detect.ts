import type { Checkpoint } from "../formats/checkpoint.js";
import type { Architecture, Version } from "./model.js";
import { detectFromNames, versionModule } from "./versions.js";

/**
 * Which version a checkpoint is, from its tensor names (SPEC §2.3, shared/README): each version
 * module says whether the names are its own (versions.ts asks them newest first).
 */
export function detectVersion(ckpt: Checkpoint): Version {
  return detectFromNames((n) => ckpt.tensors.has(n), ckpt.source).id;
}

/** The inference side of a version. */
export function architectureFor(version: Version, _source?: string): Architecture {
  return versionModule(version).architecture;
}
