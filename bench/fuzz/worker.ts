import { RwkvInputError } from "../../src/core/errors.js";
import { loadModel } from "../../src/node/load.js";

// A long-lived child of run.ts: loads many mutants, one at a time, and answers what happened.
// The parent enforces time (kills a child that does not answer) and memory (--max-old-space-size
// for the JS heap; the peak RSS reported here for typed arrays and wasm memory).

export interface Job { readonly id: number; readonly path: string; readonly seed: string }
export type Outcome = "error" | "same" | "different" | "crash" | "oom";
export interface Answer { readonly id: number; readonly outcome: Outcome; readonly message: string; readonly maxRssMb: number }

/** Tokens fed before comparing logits: a few steps so every layer's state matters. */
const PROBE_TOKENS = [1, 17, 42, 3, 100];

async function logitsOf(path: string): Promise<Float32Array> {
  const model = await loadModel(path, { backend: "reference", onWarning: () => {} });
  const state = model.initState();
  const V = model.config.vocabSize;
  return (await model.forward(PROBE_TOKENS.map((t) => t % V), state)).slice();
}

function same(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

const seedLogits = new Map<string, Float32Array>();

async function run(job: Job): Promise<Omit<Answer, "id" | "maxRssMb">> {
  let want = seedLogits.get(job.seed);
  if (!want) {
    want = await logitsOf(job.seed);
    seedLogits.set(job.seed, want);
  }
  try {
    const got = await logitsOf(job.path);
    return same(got, want) ? { outcome: "same", message: "" } : { outcome: "different", message: describeDiff(got, want) };
  } catch (e) {
    if (e instanceof RwkvInputError) return { outcome: "error", message: e.message };
    const err = e as Error;
    // Typed-array allocations live outside the JS heap: V8 reports their failure as a RangeError.
    if (err instanceof RangeError && /allocation failed|Array buffer allocation|Invalid typed array length|memory/i.test(err.message)) {
      return { outcome: "oom", message: err.message };
    }
    return { outcome: "crash", message: `${err.name}: ${err.message} ${err.stack?.split("\n")[1]?.trim() ?? ""}` };
  }
}

function describeDiff(got: Float32Array, want: Float32Array): string {
  if (got.length !== want.length) return `${got.length} logits instead of ${want.length}`;
  let max = 0, nonFinite = 0;
  for (let i = 0; i < got.length; i++) {
    if (!Number.isFinite(got[i])) nonFinite++;
    else max = Math.max(max, Math.abs(got[i] - want[i]));
  }
  return `max |diff| ${max.toPrecision(3)}${nonFinite ? `, ${nonFinite} non-finite` : ""}`;
}

if (process.send) {
  process.on("message", async (job: Job) => {
    const answer = await run(job);
    const maxRssMb = process.resourceUsage().maxRSS / 1024;
    process.send!({ id: job.id, maxRssMb, ...answer } satisfies Answer);
  });
}
