import { cpus, loadavg } from "node:os";
import { parseArgs } from "node:util";
import { knownBackends, selectBackend } from "../../core/backend/registry.js";
import { prepareNodeWebGpu } from "../webgpu.js";
import { MATRIX_DTYPES } from "../../core/formats/retype.js";
import type { Version } from "../../core/model/model.js";
import { VERSIONS as VERSION_MODULES, versionModule } from "../../core/model/versions.js";
import { checkRandomSpec, RANDOM_MODEL_VERSIONS, type RandomModelSpec } from "../../core/model/random.js";
import { checkWritableTarget, writeFileAtomic } from "../atomic-write.js";
import { contextSvg, runContext } from "../bench/context.js";
import { currentSimd, type RowResult, runJob } from "../bench/jobs.js";
import { type BenchDType, benchModel, describeSource, DISTURBED_CORES, median, type ModelSource, openSource, type RateStat } from "../bench/measure.js";
import { type CliIO, joinNegativeValues, numberIn, type Options, positiveInt, str, UsageError, type Values } from "../cli-util.js";
import { type CliConfig, modelPathFor } from "../model-arg.js";
import { Progress } from "../progress.js";
import { defaultThreads } from "../threads/pool.js";

/**
 * The newest released version random models exist for: the default of --context and the example in
 * messages (research previews such as 7b grow their state and carry (V, ·) tables per layer).
 */
const RANDOM_DEFAULT = RANDOM_MODEL_VERSIONS.filter((v) => !versionModule(v).preview).at(-1)!;

export const BENCH_USAGE = `bench [MODEL] [--random ${RANDOM_DEFAULT}]   speed: decode and prefill tok/s, peak RSS, bandwidth (a table; --json)
      MODEL                 default: the bundled model (when --random is not given either)
      --random V            a random RWKV-V model built in memory instead of MODEL (V: ${RANDOM_MODEL_VERSIONS.join(", ")})
      --layers N (12)  --embd N (768)  --vocab N (65536)  --seed N (1)   its shape and weights
      --dtype LIST          f32,f16,bf16,int8,q8_0,q5_1,q5_0,q4_1,q4_0 (random: f32; MODEL: stored, its own)
      --threads LIST (1,all cores)  --backend NAME  --runs N (5, medians)  --decode-tokens N (32 a run)
      --rounds N (1)        the whole table N times, rows taking turns; medians over all N x runs
                            (a VM's speed changes within minutes: rounds spread each row over them)
      --prefill LIST (64,512)  --warmup S (2, untimed runs first)  --probe-mib N (256, bandwidth probe)
      --batch LIST          also batched decode: model.stepBatch over that many states (tok/s of all of them)
      --bandwidth GBS       the device's peak memory bandwidth in GB/s: adds decode's share of it (a GPU's:
                            the probe measures the CPU runtime)
      --no-retry            keep runs that other processes disturbed (default: pause, run again, twice at most)
      --context             linear time, constant memory: one generation of --tokens N (100000),
                            per-token time and RSS at 1k, 10k, 100k, plot to --out FILE.svg
                            (bench-context.svg; default model: --random ${RANDOM_DEFAULT} --layers 2 --embd 128 --vocab 256)`;

const OPTIONS: Options = {
  random: { type: "string" }, layers: { type: "string" }, embd: { type: "string" }, vocab: { type: "string" }, seed: { type: "string" },
  dtype: { type: "string" }, threads: { type: "string" }, backend: { type: "string" }, runs: { type: "string" }, rounds: { type: "string" },
  "decode-tokens": { type: "string" }, prefill: { type: "string" }, warmup: { type: "string" }, "probe-mib": { type: "string" }, "no-retry": { type: "boolean" },
  json: { type: "boolean" }, context: { type: "boolean" }, tokens: { type: "string" }, out: { type: "string" },
  batch: { type: "string" }, bandwidth: { type: "string" },
};

const VERSIONS: readonly Version[] = VERSION_MODULES.map((m) => m.id).reverse(); // oldest first, as users list them
const BENCH_DTYPES: readonly BenchDType[] = [...MATRIX_DTYPES, "int8", "stored"];
/** The issue's reference model (RWKV-7 0.1B shape) for speed; a tiny one for the 100k-token context run. */
const SPEED_SHAPE = { nLayer: 12, nEmbd: 768, vocabSize: 65536 };
const CONTEXT_SHAPE = { nLayer: 2, nEmbd: 128, vocabSize: 256 };
const DEFAULTS = { runs: 5, rounds: 1, warmupSeconds: 2, decodeTokens: 32, prefill: [64, 512], probeMib: 256, contextTokens: 100_000, contextOut: "bench-context.svg" };
/** Option groups that belong to one mode only: given in the other they are mistakes, not no-ops. */
const SPEED_ONLY = ["runs", "rounds", "decode-tokens", "prefill", "warmup", "probe-mib", "no-retry", "batch", "bandwidth"];
const CONTEXT_ONLY = ["tokens", "out"];
const RANDOM_ONLY = ["layers", "embd", "vocab"];

const MB = 1e6, GB = 1e9, MIB = 2 ** 20;
const MAX_WARMUP_SECONDS = 3600;

/** A comma-separated list of positive integers, without repeats. */
function intList(values: Values, name: string, dflt: number[]): number[] {
  const v = str(values, name);
  if (v === undefined) return dflt;
  const items = v.split(",").map((s) => s.trim());
  if (items.some((s) => !/^\d+$/.test(s) || Number(s) <= 0 || !Number.isSafeInteger(Number(s)))) {
    throw new UsageError(`--${name} must be a comma-separated list of positive integers, got "${v}"`);
  }
  return [...new Set(items.map(Number))];
}

function dtypeList(values: Values, random: boolean): BenchDType[] {
  const v = str(values, "dtype");
  if (v === undefined) return [random ? "f32" : "stored"];
  const items = [...new Set(v.split(",").map((s) => s.trim().toLowerCase()))];
  for (const d of items) {
    if (!(BENCH_DTYPES as readonly string[]).includes(d)) throw new UsageError(`--dtype: unknown type "${d}" (one or more of ${BENCH_DTYPES.join(", ")})`);
    if (d === "stored" && random) throw new UsageError("--dtype stored means a model file's own types; a --random model has none (use f32, f16, ...)");
  }
  return items as BenchDType[];
}

function backendName(values: Values): string | undefined {
  const name = str(values, "backend");
  if (name !== undefined && !knownBackends().includes(name)) throw new UsageError(`--backend must be one of ${knownBackends().join(", ")}, got "${name}"`);
  return name;
}

/** MODEL or --random (with its shape), never both; --context alone means its tiny random model. */
function modelSource(values: Values, positionals: string[], context: boolean, config: CliConfig): ModelSource {
  if (positionals.length > 1) throw new UsageError(`expected at most one MODEL, got ${positionals.join(" ")}`);
  const randomText = str(values, "random");
  if (positionals.length === 1) {
    if (randomText !== undefined) throw new UsageError("give MODEL or --random, not both");
    const stray = RANDOM_ONLY.find((o) => values[o] !== undefined);
    if (stray) throw new UsageError(`--${stray} sets the shape of a --random model; MODEL has its own`);
    if (!context && values.seed !== undefined) throw new UsageError("--seed sets a --random model's weights (or, with --context, the sampling); MODEL has its own");
    return { file: modelPathFor(positionals[0], config) };
  }
  if (randomText === undefined && !context) {
    const stray = RANDOM_ONLY.find((o) => values[o] !== undefined) ?? (values.seed !== undefined ? "seed" : undefined);
    if (stray) throw new UsageError(`--${stray} sets the shape of a --random model: add --random ${RANDOM_DEFAULT}`);
    return { file: modelPathFor(undefined, config) }; // the bundled model, as for generate
  }
  const version = (randomText ?? RANDOM_DEFAULT) as Version;
  if (!VERSIONS.includes(version)) throw new UsageError(`--random must be an RWKV version (${VERSIONS.join(", ")}), got "${randomText}"`);
  const shape = context ? CONTEXT_SHAPE : SPEED_SHAPE;
  const seedText = str(values, "seed");
  const spec: RandomModelSpec = {
    version, nLayer: positiveInt(values, "layers", shape.nLayer), nEmbd: positiveInt(values, "embd", shape.nEmbd),
    vocabSize: positiveInt(values, "vocab", shape.vocabSize), seed: seedText === undefined ? 1 : positiveInt(values, "seed", 1),
  };
  checkRandomSpec(spec); // an unavailable version or impossible shape fails before any work
  return { random: spec };
}

function parseBench(args: string[]): { values: Values; positionals: string[] } {
  try {
    const r = parseArgs({ args: joinNegativeValues(args, OPTIONS), options: OPTIONS, allowPositionals: true, strict: true });
    return { values: r.values as Values, positionals: r.positionals };
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export async function benchCommand(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parseBench(args);
  const context = values.context === true;
  const misplaced = (context ? SPEED_ONLY : CONTEXT_ONLY).find((o) => values[o] !== undefined);
  if (misplaced) throw new UsageError(`--${misplaced} does not apply ${context ? "to --context" : "without --context"}`);
  const source = modelSource(values, positionals, context, config);
  const random = "random" in source;
  const dtypes = dtypeList(values, random);
  const backend = backendName(values);
  const threads = intList(values, "threads", context ? [1] : [...new Set([1, defaultThreads()])]);
  if (!random) openSource(source).close(); // a missing or corrupt MODEL fails now, before any worker starts
  if (backend === "webgpu" && !(await prepareNodeWebGpu())) selectBackend(backend); // no GPU: its reason, before any worker starts
  if (context) {
    if (dtypes.length !== 1 || threads.length !== 1) throw new UsageError("--context runs one model: give one --dtype and one --threads value");
    return benchContext(io, source, dtypes[0], threads[0], backend, values);
  }
  return benchSpeed(io, source, dtypes, threads, backend, values);
}

// ---- speed -----------------------------------------------------------------------------------

export interface SpeedReport {
  readonly model: string;
  readonly source: ModelSource;
  readonly node: string;
  readonly cpu: string;
  readonly cores: number;
  readonly loadAverage: { readonly start: number; readonly end: number };
  readonly runs: number;
  /** Times the whole table ran, rows taking turns; each row's medians are over rounds x runs. */
  readonly rounds: number;
  readonly warmupSeconds: number;
  readonly decodeTokens: number;
  readonly prefill: number[];
  readonly probeMib: number;
  /** Batch sizes of the batched-decode columns (--batch). */
  readonly batch?: number[];
  /** The device's peak memory bandwidth given with --bandwidth, bytes per second. */
  readonly peakBytesPerSecond?: number;
  readonly rows: Array<RowResult & { readonly gbPerSecond: number; readonly probeGbPerSecond: number; readonly probeFraction: number; readonly peakFraction?: number }>;
  readonly disturbedRuns: { readonly count: number; readonly of: number; readonly thresholdCores: number };
}

async function benchSpeed(io: CliIO, source: ModelSource, dtypes: BenchDType[], threads: number[], backend: string | undefined, values: Values): Promise<number> {
  const runs = positiveInt(values, "runs", DEFAULTS.runs);
  const rounds = positiveInt(values, "rounds", DEFAULTS.rounds);
  const decodeTokens = positiveInt(values, "decode-tokens", DEFAULTS.decodeTokens);
  const prefill = intList(values, "prefill", DEFAULTS.prefill);
  const mib = positiveInt(values, "probe-mib", DEFAULTS.probeMib);
  const quiet = values["no-retry"] !== true;
  const warmupSeconds = numberIn(values, "warmup", DEFAULTS.warmupSeconds, 0, MAX_WARMUP_SECONDS);
  const batch = intList(values, "batch", []);
  const peak = values.bandwidth === undefined ? undefined : numberIn(values, "bandwidth", 0, Number.MIN_VALUE, Number.MAX_VALUE) * GB;
  const note = (line: string) => io.stderr(`bench: ${line}\n`);
  const start = loadavg()[0];

  const simd = currentSimd();
  const perRow: RowResult[][] = [];
  for (let round = 0; round < rounds; round++) {
    let i = 0;
    for (const dtype of dtypes) {
      for (const t of threads) {
        const of = rounds > 1 ? ` (round ${round + 1} of ${rounds})` : "";
        note(`${dtype}, ${t} thread${t > 1 ? "s" : ""}: building the model, ${runs} runs, then the bandwidth probe${of}`);
        (perRow[i++] ??= []).push(await runJob({ source, dtype, threads: t, backend, simd, speed: { runs, decodeTokens, prefill, quiet, warmupSeconds, batch }, probeMib: mib }, note));
      }
    }
  }
  const rows = perRow.map(mergeRounds);
  const others = rows.flatMap(rowOtherCores);
  const report: SpeedReport = {
    model: describeSource(source), source, node: process.version, cpu: cpus()[0]?.model ?? "unknown", cores: defaultThreads(),
    loadAverage: { start, end: loadavg()[0] }, runs, rounds, warmupSeconds, decodeTokens, prefill,
    probeMib: mib, ...(batch.length ? { batch } : {}), ...(peak !== undefined ? { peakBytesPerSecond: peak } : {}),
    rows: rows.map((r) => {
      const bytesPerSecond = r.weightBytesPerToken * r.decode.median;
      return {
        ...r, gbPerSecond: bytesPerSecond / GB, probeGbPerSecond: r.probe.bytesPerSecond / GB, probeFraction: bytesPerSecond / r.probe.bytesPerSecond,
        ...(peak !== undefined ? { peakFraction: bytesPerSecond / peak } : {}),
      };
    }),
    disturbedRuns: { count: others.filter((c) => c !== null && c > DISTURBED_CORES).length, of: others.length, thresholdCores: DISTURBED_CORES },
  };
  io.stdout(values.json === true ? JSON.stringify(report, null, 2) + "\n" : speedTable(report));
  return 0;
}

/** One row's rounds as one result: runs in the order they ran, medians over all of them, the largest peak RSS. */
function mergeRounds(results: RowResult[]): RowResult {
  if (results.length === 1) return results[0];
  const rate = (stats: RateStat[]): RateStat => {
    const runs = stats.flatMap((s) => s.runs);
    return { median: median(runs), runs, otherCores: stats.flatMap((s) => s.otherCores) };
  };
  const first = results[0];
  const probeRuns = results.flatMap((r) => r.probe.runs);
  return {
    ...first,
    decode: rate(results.map((r) => r.decode)),
    ...(first.batchDecode ? { batchDecode: Object.fromEntries(Object.keys(first.batchDecode).map((b) => [b, rate(results.map((r) => r.batchDecode![b]))])) } : {}),
    prefill: Object.fromEntries(Object.keys(first.prefill).map((n) => [n, rate(results.map((r) => r.prefill[n]))])),
    peakRssBytes: Math.max(...results.map((r) => r.peakRssBytes)),
    buildSeconds: median(results.map((r) => r.buildSeconds)),
    probe: { ...first.probe, bytesPerSecond: median(probeRuns), runs: probeRuns, otherCores: results.flatMap((r) => r.probe.otherCores) },
  };
}

/** What other processes used during each of a row's runs (the probe's included), in cores. */
function rowOtherCores(r: RowResult): Array<number | null> {
  return [r.decode, ...Object.values(r.prefill), ...Object.values(r.batchDecode ?? {}), r.probe].flatMap((s) => s.otherCores);
}

/** The median of the measurable values, or null. */
function medianOf(xs: ReadonlyArray<number | null>): number | null {
  const known = xs.filter((x): x is number => x !== null);
  return known.length ? median(known) : null;
}

/** Right-aligned columns under their headers. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n") + "\n";
}

const fixed = (x: number, d: number) => (Number.isFinite(x) ? x.toFixed(d) : "-");
const coresText = (c: number | null) => (c === null ? "-" : c.toFixed(2));

/** The human-readable form of a report (also renders a saved --json report). */
export function speedTable(r: SpeedReport): string {
  const first = r.rows[0];
  const build = first ? `${first.backend}${first.simd ? ` (${first.simd})` : ""}` : "?";
  const head = [
    `model    ${r.model}`,
    `machine  ${r.cpu}, ${r.cores} cores, node ${r.node}, backend ${build}; load average ${r.loadAverage.start.toFixed(2)} at start, ${r.loadAverage.end.toFixed(2)} at end`,
    `method   medians of ${r.rounds > 1 ? `${r.rounds} rounds x ` : ""}${r.runs} runs after ${r.warmupSeconds} s of untimed ones${r.rounds > 1 ? " (each round: every row in turn)" : ""}; decode = ${r.decodeTokens} model.step calls a run (logits included); prefill = model.forward on a fresh state`,
    `probe    in each row's process after its runs: the runtime's f32 matrix-vector product over ${r.probeMib} MiB, as wide as the model`,
    "",
  ].join("\n");
  // Speed-ups over f32 come from the same run, so they hold better than the absolute rates on a busy machine.
  const f32 = new Map(r.rows.filter((x) => x.dtype === "f32").map((x) => [x.threads, x.decode.median]));
  const ratio = f32.size > 0;
  const batch = r.batch ?? [];
  const peak = r.peakBytesPerSecond !== undefined;
  const header = ["dtype", "threads", "decode tok/s", ...(ratio ? ["vs f32"] : []), ...batch.map((b) => `batch${b} tok/s`), ...r.prefill.map((n) => `prefill${n} tok/s`),
    "peak RSS MiB", "weight MB/token", "GB/s", ...(peak ? ["% of peak"] : []), "probe GB/s", "% of probe", "others"];
  const rows = r.rows.map((x) => [
    x.dtype, String(x.threads), fixed(x.decode.median, 1), ...(ratio ? [f32.has(x.threads) ? `x${fixed(x.decode.median / f32.get(x.threads)!, 2)}` : "-"] : []),
    ...batch.map((b) => fixed(x.batchDecode?.[String(b)]?.median ?? NaN, 1)),
    ...r.prefill.map((n) => fixed(x.prefill[String(n)].median, 1)),
    fixed(x.peakRssBytes / MIB, 0), fixed(x.weightBytesPerToken / MB, 1), fixed(x.gbPerSecond, 2), ...(peak ? [fixed(100 * (x.peakFraction ?? NaN), 0)] : []),
    fixed(x.probeGbPerSecond, 2), fixed(100 * x.probeFraction, 0), coresText(medianOf(rowOtherCores(x))),
  ]);
  const foot = [
    "",
    "peak RSS: the maximum resident set of the process that built and ran the row (one process per row).",
    "GB/s = weight MB/token x decode tok/s, the rate decode streams weights; % of probe = that over the probe's rate",
    "(the weight-streaming rate the runtime reaches on this machine at that moment; decode can exceed it a little).",
    ...(peak ? [`% of peak: GB/s over the device's peak bandwidth given with --bandwidth (${fixed(r.peakBytesPerSecond! / GB, 0)} GB/s).`] : []),
    ...(batch.length ? ["batchB: model.stepBatch over B states, tokens per second of all of them."] : []),
    "others: cores that other processes used during the runs (median; from /proc/stat): CPU time the benchmark could not have.",
    r.disturbedRuns.of && r.disturbedRuns.count
      ? `${r.disturbedRuns.count} of ${r.disturbedRuns.of} runs had other processes using > ${r.disturbedRuns.thresholdCores} core (after retries): numbers are noisy.`
      : "",
  ].filter((l, i) => i === 0 || l !== "");
  return head + "\n" + table(header, rows) + foot.join("\n") + "\n";
}

// ---- context ---------------------------------------------------------------------------------

async function benchContext(io: CliIO, source: ModelSource, dtype: BenchDType, threads: number, backend: string | undefined, values: Values): Promise<number> {
  const tokens = positiveInt(values, "tokens", DEFAULTS.contextTokens);
  const out = str(values, "out") ?? DEFAULTS.contextOut;
  const seedText = str(values, "seed");
  const seed = seedText === undefined ? 1 : positiveInt(values, "seed", 1);
  checkWritableTarget(out); // before a run of minutes, not after
  const be = selectBackend(backend, { threads });
  const model = benchModel(source, dtype, be);
  const progress = new Progress({ label: "bench --context", unit: "tok", write: (t) => io.stderr(t), tty: process.stderr.isTTY === true, columns: process.stderr.columns });
  const r = await runContext(model, { tokens, seed, onProgress: (d, n) => progress.update(d, n) });
  progress.finish();
  const c = model.config;
  const what = `${describeSource(source)}, ${dtype}, ${be.name} backend, ${threads} thread${threads > 1 ? "s" : ""}`;
  const svg = contextSvg(r, `RWKV-${c.version}: one generation of ${tokens.toLocaleString("en-US")} tokens`, [
    what, `state ${r.stateBytes.toLocaleString("en-US")} bytes; node ${process.version}, ${cpus()[0]?.model ?? "unknown CPU"}; seed ${seed}`,
  ]);
  await writeFileAtomic(out, [new TextEncoder().encode(svg)]);
  if (values.json === true) {
    io.stdout(JSON.stringify({ model: describeSource(source), source, dtype, threads, backend: be.name, config: c, plot: out, ...r }, null, 2) + "\n");
    return 0;
  }
  const first = r.marks[0], last = r.marks[r.marks.length - 1];
  io.stdout([
    `model    ${what}`,
    `run      one sampled generation of ${tokens} tokens (seed ${seed}), recurrent form; state ${r.stateBytes} bytes`,
    "",
    table(["tokens", "ms/token", "cumulative s", "RSS MiB"], r.marks.map((m) => [
      String(m.tokens), fixed(m.msPerToken, 4), fixed(m.cumulativeSeconds, 2), fixed(m.rssBytes / MIB, 1),
    ])).trimEnd(),
    "",
    "ms/token: mean over the last tenth of the tokens before the mark; RSS: the process's resident set at the mark.",
    `last/first: ms/token x${fixed(last.msPerToken / first.msPerToken, 2)}, RSS x${fixed(last.rssBytes / first.rssBytes, 2)} (linear time and constant memory: both ~1)`,
    `plot     ${out}`,
    "",
  ].join("\n"));
  return 0;
}
