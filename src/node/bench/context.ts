import type { Model } from "../../core/model/model.js";
import { Rng, sampleLogits } from "../../core/sampling.js";
import { lineChartSvg } from "../svg-chart.js";

/*
 * Linear time, constant memory: one sampled generation out to N tokens with the recurrent form,
 * recording the cumulative time after every token and the process's RSS as it goes. A transformer
 * with a KV cache would show a per-token time and a memory that grow with the context (cumulative
 * time quadratic); RWKV's state is a fixed number of floats, so both should stay flat.
 */

/** Context lengths the report names (those up to N, and N itself). */
export const CONTEXT_MARKS = [1_000, 10_000, 100_000];
/** Per-token time at a mark is averaged over the last tenth of the tokens before it. */
const WINDOW_FRACTION = 10;
/** RSS samples per run (plus one at every mark): enough for a smooth plot, cheap to take. */
const RSS_SAMPLES = 500;
/** Points per curve in the plot. */
const PLOT_POINTS = 1000;
const MS_PER_S = 1000;
/**
 * Steps on a separate state before the timed run: the first few hundred tokens of a fresh process
 * run half-compiled JavaScript, which would show as a context effect that is not one.
 */
const WARMUP_STEPS = 300;
const MIB = 2 ** 20;

export interface ContextMark {
  readonly tokens: number;
  /** Mean ms per token over the window before the mark. */
  readonly msPerToken: number;
  /** Tokens averaged for msPerToken. */
  readonly window: number;
  readonly cumulativeSeconds: number;
  readonly rssBytes: number;
}

export interface ContextResult {
  readonly tokens: number;
  readonly seed: number;
  readonly stateBytes: number;
  readonly totalSeconds: number;
  readonly marks: ContextMark[];
  /** [tokens, cumulative seconds], evenly spaced. */
  readonly time: Array<[number, number]>;
  /** [tokens, RSS bytes]. */
  readonly rss: Array<[number, number]>;
}

export interface ContextOptions {
  readonly tokens: number;
  readonly seed: number;
  /** Called now and then with (tokens done, total). */
  readonly onProgress?: (done: number, total: number) => void;
}

/** The marks for a run of n tokens. */
export function contextMarks(n: number): number[] {
  const marks = CONTEXT_MARKS.filter((m) => m < n);
  return [...marks, n];
}

export async function runContext(model: Model, o: ContextOptions): Promise<ContextResult> {
  const n = o.tokens;
  const rng = new Rng(o.seed);
  const state = model.initState();
  const marks = new Set(contextMarks(n));
  const rssEvery = Math.max(1, Math.floor(n / RSS_SAMPLES));
  const progressEvery = Math.max(1, Math.floor(n / 100));
  const elapsed = new Float64Array(n + 1); // ms after token i
  const warm = model.initState();
  for (let i = 0; i < WARMUP_STEPS; i++) await model.step(i % model.config.vocabSize, warm);
  const rss: Array<[number, number]> = [[0, process.memoryUsage.rss()]];
  // Token 0 starts the sequence, as a byte-level model's first byte would; each token sampled
  // (the official sampler's defaults, temperature 1, top-p 0.85) is fed back: one generation.
  let token = 0;
  const t0 = performance.now();
  for (let i = 1; i <= n; i++) {
    const logits = await model.step(token, state);
    token = sampleLogits(logits, undefined, rng);
    elapsed[i] = performance.now() - t0;
    if (i % rssEvery === 0 || marks.has(i)) rss.push([i, process.memoryUsage.rss()]);
    if (i % progressEvery === 0) o.onProgress?.(i, n);
  }
  const rssAt = (m: number) => rss.find(([t]) => t === m)![1];
  const result: ContextMark[] = [...marks].map((m) => {
    const w = Math.max(1, Math.floor(m / WINDOW_FRACTION));
    return { tokens: m, window: w, msPerToken: (elapsed[m] - elapsed[m - w]) / w, cumulativeSeconds: elapsed[m] / MS_PER_S, rssBytes: rssAt(m) };
  });
  const step = Math.max(1, Math.floor(n / PLOT_POINTS));
  const time: Array<[number, number]> = [];
  for (let i = 0; i <= n; i += step) time.push([i, elapsed[i] / MS_PER_S]);
  if (time[time.length - 1][0] !== n) time.push([n, elapsed[n] / MS_PER_S]);
  return { tokens: n, seed: o.seed, stateBytes: 4 * state.size, totalSeconds: elapsed[n] / MS_PER_S, marks: result, time, rss };
}

/** Cumulative time and RSS against tokens, with the marks labelled; a dashed straight line through the last point shows what "linear" looks like. */
export function contextSvg(r: ContextResult, title: string, subtitle: readonly string[]): string {
  const last = r.time[r.time.length - 1];
  return lineChartSvg({
    title, subtitle, xLabel: "tokens generated (context length)",
    panels: [
      {
        yLabel: "cumulative time (s)",
        series: [
          { label: "measured", color: "#2171b5", points: r.time },
          { label: "linear (straight line to the end point)", color: "#999", dashed: true, points: [[0, 0], last] },
        ],
        marks: r.marks.map((m) => ({ x: m.tokens, y: m.cumulativeSeconds, text: `${m.tokens} tok: ${m.cumulativeSeconds.toFixed(2)} s, ${m.msPerToken.toFixed(3)} ms/tok` })),
      },
      {
        yLabel: "resident memory (MiB)",
        series: [{ label: "process RSS", color: "#d94801", points: r.rss.map(([t, b]) => [t, b / MIB]) }],
        marks: r.marks.map((m) => ({ x: m.tokens, y: m.rssBytes / MIB, text: `${m.tokens} tok: ${(m.rssBytes / MIB).toFixed(1)} MiB` })),
      },
    ],
  });
}
