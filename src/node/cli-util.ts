import { parseArgs, type ParseArgsConfig } from "node:util";
import { type AdapterSpec, parseLoraFlag, parsePissaFlag } from "./adapters.js";
import type { LoadOptions } from "./load.js";

/** Where the CLI writes: the process's streams, or a buffer in tests. */
export interface CliIO {
  stdout(text: string): void;
  stderr(text: string): void;
}

/** A mistake in how the CLI was called: printed with the usage hint, exit 2. */
export class UsageError extends Error {}

export type Options = NonNullable<ParseArgsConfig["options"]>;
export type Values = Record<string, string | boolean | string[] | boolean[] | undefined>;

/** A value that starts with a dash but is a number ("-1", "-.5"), not an option. */
const NEGATIVE_NUMBER = /^-(?:\d|\.\d)/;

/**
 * Joins `--name -1` into `--name=-1` for options that take a value: node's parseArgs refuses a
 * dash-led value as "ambiguous", which would hide the option's own range message behind its text.
 */
export function joinNegativeValues(args: readonly string[], options: Options): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") { out.push(...args.slice(i)); break; }
    const long = /^--([^=]+)$/.exec(a)?.[1];
    const name = long ?? Object.keys(options).find((k) => a.length === 2 && a[0] === "-" && options[k].short === a[1]);
    const next = args[i + 1];
    if (name !== undefined && options[name]?.type === "string" && next !== undefined && NEGATIVE_NUMBER.test(next)) {
      out.push(`--${name}=${next}`);
      i++;
    } else {
      out.push(a);
    }
  }
  return out;
}

/** Strict option parsing: unknown flags and wrong positional counts are usage errors. */
export function parse(args: string[], options: Options, positionals: string[]): { values: Values; positionals: string[] } {
  let parsed;
  try {
    parsed = parseArgs({ args: joinNegativeValues(args, options), options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  // "[NAME]" marks an optional trailing positional.
  const required = positionals.filter((p) => !p.startsWith("[")).length;
  if (parsed.positionals.length < required || parsed.positionals.length > positionals.length) {
    throw new UsageError(`expected ${positionals.join(" ")}, got ${parsed.positionals.length ? parsed.positionals.join(" ") : "nothing"}`);
  }
  return { values: parsed.values as Values, positionals: parsed.positionals };
}

export function str(values: Values, name: string): string | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw new UsageError(`--${name} needs a value`);
  return v;
}

export function positiveInt(values: Values, name: string, dflt: number): number {
  const v = values[name];
  if (v === undefined) return dflt;
  const n = Number(v);
  if (typeof v !== "string" || !/^\d+$/.test(v) || !Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`--${name} must be a positive integer, got "${String(v)}"`);
  }
  return n;
}

/** A finite number within [min, max]. */
export function numberIn(values: Values, name: string, dflt: number, min: number, max: number): number {
  const v = values[name];
  if (v === undefined) return dflt;
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
  if (!Number.isFinite(n) || n < min || n > max) {
    throw new UsageError(`--${name} must be a number in [${min}, ${max}], got "${String(v)}"`);
  }
  return n;
}

/** Options of every command that loads a model: kernels, threads, int8 matrices. */
export const MODEL_OPTIONS: Options = {
  backend: { type: "string" }, threads: { type: "string" }, int8: { type: "boolean" }, "no-verify": { type: "boolean" },
  lora: { type: "string", multiple: true }, pissa: { type: "string", multiple: true }, disha: { type: "string", multiple: true },
};

export const MODEL_OPTIONS_USAGE = "--backend NAME  --threads N (all cores)  --int8 (quantize matrices to int8 at load)  --no-verify (skip CRC/NaN checks)";
export const ADAPTER_OPTIONS_USAGE = "--lora PATH[:ALPHA]  --pissa PATH:INIT  --disha PATH   merge adapters at load (repeatable)";

/** --lora / --pissa / --disha in the order given on the command line (merge order matters). */
export function adapterSpecs(values: Values, args: readonly string[] = []): AdapterSpec[] {
  const list = (name: string): string[] => {
    const v = values[name];
    return v === undefined ? [] : (Array.isArray(v) ? v : [v]).map(String);
  };
  const specs: Array<{ at: number; spec: AdapterSpec }> = [];
  const place = (name: string, parse: (t: string) => AdapterSpec) => {
    let from = 0;
    for (const text of list(name)) {
      const at = args.indexOf(`--${name}`, from);
      from = at < 0 ? from : at + 1;
      specs.push({ at: at < 0 ? specs.length : at, spec: parse(text) });
    }
  };
  place("lora", parseLoraFlag);
  place("pissa", parsePissaFlag);
  place("disha", (path) => ({ path, kind: "disha" }));
  return specs.sort((a, b) => a.at - b.at).map((s) => s.spec);
}

export function modelLoadOptions(values: Values, args?: readonly string[]): LoadOptions {
  const adapters = adapterSpecs(values, args);
  return {
    ...(adapters.length ? { adapters } : {}),
    backend: str(values, "backend"),
    threads: values.threads === undefined ? undefined : positiveInt(values, "threads", 1),
    matrices: values.int8 === true ? "int8" : undefined,
    ...(values["no-verify"] === true ? { verify: false } : {}),
  };
}
