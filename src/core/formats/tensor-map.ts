import type { ModelConfig } from "../model/model.js";
import { numel, transposeLast2 } from "../tensor.js";
import type { CheckpointNumerics } from "./checkpoint.js";

/*
 * Two-way tensor tables: how an external format (rwkv.cpp .bin, GGUF) stores each official tensor.
 * One table per format and version, contributed by the version module (src/core/model/vN/formats.ts),
 * drives both that format's reader (stored -> official) and its writer (official -> stored), so
 * each mapping is written once. A row says, for the official names it matches:
 *   - the stored name (default: the same),
 *   - the stored shape of an official shape and back (PyTorch order: the last axis contiguous),
 *   - a reordering of the values (a transpose) and its inverse,
 *   - an element-wise value map and its inverse, computed in float64 and rounded once to f32.
 * A group stores several official vectors as one tensor (e.g. RWKV-7's six token-shift mixes).
 */

/** What a file states that a row may need to restore a shape (e.g. GGUF's wkv.head_size). */
export interface ReadContext {
  readonly headSize?: number;
}

/** A stored shape a row cannot hold: the reader reports it with the tensor's name. */
export class ShapeProblem extends Error {}

export interface TensorRow {
  /** The official names this row covers (the full name, e.g. /\.att\.time_decay$/). */
  readonly official: RegExp;
  /** Stored name of an official name this row covers; default the same. */
  storedName?(official: string): string;
  /** Official name of a stored one, or null when this row does not store that name; default the same when `official` matches. */
  officialName?(stored: string): string | null;
  /** Stored shape of an official shape (`cfg` for layouts that depend on heads). Throws ShapeProblem. */
  toStored(shape: readonly number[], cfg: ModelConfig): readonly number[];
  /** Official shape of a stored shape (`ctx`: what the file states besides shapes). Throws ShapeProblem. */
  toOfficial(stored: readonly number[], ctx?: ReadContext): readonly number[];
  /** Reorders official values (official shape) into the stored order, and back (stored shape). */
  readonly layout?: {
    toStored(values: Float32Array, shape: readonly number[]): Float32Array;
    toOfficial(values: Float32Array, stored: readonly number[]): Float32Array;
  };
  /** Element-wise map official -> stored and its inverse. */
  readonly values?: { toStored(x: number): number; toOfficial(x: number): number };
}

/** Several official vectors of C values stored as one tensor, part after part. */
export interface TensorGroup {
  /** Official name suffixes, in stored order, e.g. ["att.x_r", ...]. */
  readonly parts: readonly string[];
  /** Stored name suffix, e.g. "att.x_rwkvag". */
  readonly stored: string;
  /** Stored shape (PyTorch order) for parts of C values each. */
  storedShape(C: number): readonly number[];
}

/** One format's table for one version. */
export interface FormatTable {
  /** Rows are tried in order; the first whose name matches applies. Names no row matches are stored as is. */
  readonly rows: readonly TensorRow[];
  readonly groups?: readonly TensorGroup[];
  /** What the format's own engine computes differently for this version (set on every checkpoint read). */
  readonly numerics?: CheckpointNumerics;
}

/** The identity row: same name, shape and values. */
export const PLAIN: TensorRow = { official: /./, toStored: (s) => s, toOfficial: (s) => s };

/** The row of an official name (the writer's lookup). */
export function rowFor(table: FormatTable, official: string): TensorRow {
  return table.rows.find((r) => r.official.test(official)) ?? PLAIN;
}

/** The row and official name of a stored name (the reader's lookup). */
export function rowForStored(table: FormatTable, stored: string): { row: TensorRow; name: string } {
  for (const row of table.rows) {
    const name = row.officialName ? row.officialName(stored) : row.official.test(stored) ? stored : null;
    if (name !== null) return { row, name };
  }
  return { row: PLAIN, name: stored };
}

/** The group an official name is a part of, with the prefix before its suffix. */
export function groupOf(table: FormatTable, official: string): { group: TensorGroup; prefix: string; index: number } | null {
  for (const group of table.groups ?? []) {
    const index = group.parts.findIndex((p) => official.endsWith("." + p));
    if (index >= 0) return { group, prefix: official.slice(0, official.length - group.parts[index].length), index };
  }
  return null;
}

/** The group a stored name is, with its prefix. */
export function storedGroup(table: FormatTable, stored: string): { group: TensorGroup; prefix: string } | null {
  for (const group of table.groups ?? []) {
    if (stored.endsWith("." + group.stored)) return { group, prefix: stored.slice(0, stored.length - group.stored.length) };
  }
  return null;
}

/** Official values in stored form (values in official order and shape). */
export function encodeValues(row: TensorRow, values: Float32Array, shape: readonly number[]): Float32Array {
  const v = row.layout ? row.layout.toStored(values, shape) : values;
  if (row.values) for (let i = 0; i < v.length; i++) v[i] = row.values.toStored(v[i]);
  return v;
}

/** Stored values in official form (values in stored order and shape). */
export function decodeValues(row: TensorRow, values: Float32Array, stored: readonly number[]): Float32Array {
  if (row.values) for (let i = 0; i < values.length; i++) values[i] = row.values.toOfficial(values[i]);
  return row.layout ? row.layout.toOfficial(values, stored) : values;
}

// ---------------------------------------------------------------- row builders

const squeeze = (s: readonly number[]) => s.filter((d) => d !== 1);

/** A vector whose official shape has leading 1s (e.g. (1,1,C)) stored as (C). */
export function vectorRow(official: RegExp, lead: readonly number[] = [1, 1]): TensorRow {
  return {
    official,
    toStored: (s) => [numel(s)],
    toOfficial: (s) => {
      if (squeeze(s).length > 1) throw new ShapeProblem(`expected a vector, stored shape is [${s}]`);
      return [...lead, numel(s)];
    },
  };
}

/** Stored with its size-1 axes dropped (rwkv.cpp's converter squeezes every `.time_*`). */
export function squeezedRow(official: RegExp): TensorRow {
  return { official, toStored: squeeze, toOfficial: (s) => s };
}

/** A matrix (r, k) stored transposed (k, r). */
export function transposedRow(official: RegExp, names?: Pick<TensorRow, "storedName" | "officialName">): TensorRow {
  const check = (s: readonly number[]) => {
    if (s.length !== 2) throw new ShapeProblem(`expected a matrix, shape is [${s}]`);
    return [s[1], s[0]];
  };
  return {
    official, ...names,
    toStored: check,
    toOfficial: check,
    layout: {
      toStored: (v, s) => transposeLast2(v, 1, s[0], s[1]),
      toOfficial: (v, s) => transposeLast2(v, 1, s[0], s[1]),
    },
  };
}

/** A stack (a, r, k) stored as (a, k, r): each of its a matrices transposed. */
export function stackTransposedRow(official: RegExp, names?: Pick<TensorRow, "storedName" | "officialName">): TensorRow {
  const check = (s: readonly number[]) => {
    if (s.length !== 3) throw new ShapeProblem(`expected 3 dimensions, shape is [${s}]`);
    return [s[0], s[2], s[1]];
  };
  return {
    official, ...names,
    toStored: check,
    toOfficial: check,
    layout: {
      toStored: (v, s) => transposeLast2(v, s[0], s[1], s[2]),
      toOfficial: (v, s) => transposeLast2(v, s[0], s[1], s[2]),
    },
  };
}

/** A per-head matrix (H, N) stored as (H, N, 1). */
export function headColumnRow(official: RegExp): TensorRow {
  return {
    official,
    toStored: (s) => [...s, 1],
    toOfficial: (s) => {
      if (s.length !== 3 || s[2] !== 1) throw new ShapeProblem(`expected stored shape [H, N, 1], got [${s}]`);
      return [s[0], s[1]];
    },
  };
}

/** The row with an element-wise value map added. */
export function mapped(row: TensorRow, toStored: (x: number) => number, toOfficial: (x: number) => number): TensorRow {
  return { ...row, values: { toStored, toOfficial } };
}

// ---------------------------------------------------------------- per-layer tables (GGUF)

/** One per-layer tensor of a format that renames everything: `<stored>` of layer i <-> blocks.i.<official>. */
export interface LayerEntry {
  /** The format's per-layer name, e.g. "time_mix_w1". */
  readonly stored: string;
  /** The official suffix after "blocks.i.", e.g. "att.time_maa_w1". */
  readonly official: string;
  readonly row: TensorRow;
  /** Read from older files only; never written. */
  readonly readOnly?: boolean;
  /** The format wants a placeholder at layer 0, written from this official suffix and ignored on reading. */
  readonly layer0From?: string;
}

/** Several official per-layer vectors stored as one tensor of (parts, 1, 1, C). */
export interface LayerGroup {
  readonly stored: string;
  /** Official suffixes, in stored order. */
  readonly parts: readonly string[];
}

/** A version's per-layer table for such a format, in the order the writer emits. */
export interface LayerTable {
  /** The format's name of the architecture (e.g. GGUF general.architecture "rwkv7"). */
  readonly arch: string;
  readonly layer: ReadonlyArray<LayerEntry | LayerGroup>;
  /** The version's own u32 metadata (key without the arch prefix) of a model. */
  metadata(cfg: ModelConfig, shape: (official: string) => readonly number[]): Array<[string, number]>;
}

export function isLayerGroup(e: LayerEntry | LayerGroup): e is LayerGroup {
  return (e as LayerGroup).parts !== undefined;
}
