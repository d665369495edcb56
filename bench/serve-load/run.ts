import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { setMaxListeners } from "node:events";
import { appendFileSync, writeFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { join } from "node:path";
import { parseArgs } from "node:util";

/*
 * Load test of `rwkv serve`: N concurrent streaming chat clients for S seconds against a server
 * started as a child process, once per --slots value. Each client holds multi-turn conversations
 * (the reply goes back into the next turn, so the prefix cache is exercised as real chat traffic
 * does) and streams every reply. After a warm-up (until the prefix cache has filled: the RSS check
 * is about leaks, not about the cache reaching its budget), measured per run:
 *   - errors: any non-200 answer, error event or stream without [DONE] (must be 0);
 *   - time to first token (request sent → first content delta), p50 / p99;
 *   - aggregate completion tokens/s: the server's own completion_tokens_total counter over the
 *     measured window (after warm-up), so tokens still held back or cut at the end are exact;
 *   - server RSS, sampled every second from /metrics: start (end of warm-up), end, max;
 * and the throughput speed-up of each --slots value over the first one (1 = one at a time).
 *
 * Scale-out: --replicas 1,2 starts that many servers per run and sends each request to the next
 * replica in turn (a round-robin balancer without session affinity, built into the clients), so
 * consecutive turns of a conversation land on different replicas; with --state-store URL every
 * replica gets `--state-store URL` and continues the others' conversations from Redis. Counters
 * are summed over the replicas; the state store's hit rate is reported beside the prompt share.
 *
 *   node dist/bench/serve-load/run.js MODEL [--clients 64] [--seconds 60] [--warmup 30] [--slots 1,16,64]
 *     [--replicas 1,2] [--state-store redis://127.0.0.1:6379]
 */

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    clients: { type: "string", default: "64" },
    seconds: { type: "string", default: "60" },
    warmup: { type: "string", default: "30" },
    slots: { type: "string", default: "1,16,64" },
    replicas: { type: "string", default: "1" },
    "state-store": { type: "string" },
    "cache-mb": { type: "string", default: "64" },
    "max-tokens": { type: "string", default: "96" },
    turns: { type: "string", default: "4" },
    json: { type: "string" },
    /** Extra arguments for `rwkv serve`, space-separated: --server-args="--backend reference". */
    "server-args": { type: "string", default: "" },
    /** Append the server's stderr (with --log-requests in server-args: one line per request) to this file. */
    "server-log": { type: "string" },
  },
});
if (positionals.length !== 1) {
  process.stderr.write("usage: node dist/bench/serve-load/run.js MODEL [--clients 64] [--seconds 60] [--warmup 30] [--slots 1,16,64] [--cache-mb 64] [--max-tokens 96] [--turns 4] [--replicas 1,2] [--state-store URL] [--json OUT]\n");
  process.exit(2);
}
const MODEL = positionals[0];
const CLIENTS = Number(values.clients);
const SECONDS = Number(values.seconds);
const WARMUP_S = Number(values.warmup);
const SLOTS = values.slots!.split(",").map(Number);
const REPLICAS = values.replicas!.split(",").map(Number);
if (!REPLICAS.every((r) => Number.isSafeInteger(r) && r >= 1)) {
  process.stderr.write(`--replicas must be positive integers, got "${values.replicas}"\n`);
  process.exit(2);
}
/**
 * Each run's conversations differ (another seed), and each invocation's system messages carry a random
 * tag of fixed length, so states a shared store kept from an earlier run or invocation never match.
 */
const RUN_SEED_STRIDE = 100_003;
const SESSION_TAG = randomBytes(3).toString("hex");
const MAX_TOKENS = Number(values["max-tokens"]);
const TURNS = Number(values.turns);
const MODEL_NAME = "bench";
const BIN = join(import.meta.dirname, "..", "..", "src", "node", "bin.js");
const RSS_SAMPLE_MS = 1000;
/** RSS at the end may differ from RSS after warm-up by at most this fraction. */
const RSS_TOLERANCE = 0.1;
const MS_PER_S = 1000;
const MIB = 1024 * 1024;
/**
 * Sampling for the clients. The tiny test models are barely trained: with plain temperature-1 sampling
 * they emit random bytes (often invalid UTF-8, which cannot be sent back verbatim), so a top-k
 * setting keeps replies word-like and the conversations' prefix caching realistic.
 */
const SAMPLING = { temperature: 0.8, top_k: 8 };

const WORDS = ("the king queen castle river bread cheese story night ship sea war peace letter horse garden tower " +
  "winter summer sword friend enemy gold silver song dance market road mountain forest lamp").split(" ");

/** A small deterministic PRNG per client, so runs are comparable. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
}

interface Message { role: "system" | "user" | "assistant"; content: string }
interface Stats { requests: number; errors: number; aborted: number; ttftMs: number[]; errorSamples: string[] }

const agent = new Agent({ keepAlive: true, maxSockets: Infinity });

/** One streamed chat request; resolves with TTFT and the reply, or rejects on any error. */
function streamChat(port: number, body: object, signal: AbortSignal): Promise<{ ttftMs: number; reply: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const data = JSON.stringify(body);
    const req = request({ host: "127.0.0.1", port, path: "/v1/chat/completions", method: "POST", agent, signal,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(data) } }, (res) => {
      if (res.statusCode !== 200) {
        let text = "";
        res.on("data", (d: Buffer) => { text += d.toString(); });
        res.on("end", () => reject(new Error(`HTTP ${res.statusCode}: ${text}`)));
        return;
      }
      let buf = "", reply = "", ttft = -1, done = false;
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        buf += d;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (!event.startsWith("data: ")) continue;
          const payload = event.slice(6);
          if (payload === "[DONE]") { done = true; continue; }
          const chunk = JSON.parse(payload) as { error?: { message: string }; choices?: Array<{ delta: { content?: string }; finish_reason: string | null }> };
          if (chunk.error) { reject(new Error(`error event: ${chunk.error.message}`)); return; }
          const c = chunk.choices?.[0];
          if (c && ttft < 0 && (c.delta.content || c.finish_reason)) ttft = performance.now() - t0;
          if (c?.delta.content) reply += c.delta.content;
        }
      });
      res.on("end", () => (done ? resolve({ ttftMs: ttft, reply }) : reject(new Error("stream ended without [DONE]"))));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(data);
  });
}

/** A client: conversations of TURNS turns, back to back, until the signal fires. */
async function client(id: number, nextPort: () => number, signal: AbortSignal, stats: Stats, measuring: () => boolean, runSeed: number): Promise<void> {
  const rnd = lcg(id + 1 + runSeed);
  const pick = () => WORDS[Math.floor(rnd() * WORDS.length)];
  const topic = () => Array.from({ length: 1 + Math.floor(rnd() * 3) }, pick).join(" ");
  while (!signal.aborted) {
    const messages: Message[] = [{ role: "system", content: `Storyteller ${id}, session ${SESSION_TAG}.` }];
    for (let turn = 0; turn < TURNS && !signal.aborted; turn++) {
      messages.push({ role: "user", content: `About ${topic()}?` });
      const body = { model: MODEL_NAME, messages, stream: true, max_tokens: Math.ceil(MAX_TOKENS / 3) + Math.floor(rnd() * (MAX_TOKENS - Math.ceil(MAX_TOKENS / 3) + 1)), seed: id * 1000 + turn, ...SAMPLING };
      try {
        const { ttftMs, reply } = await streamChat(nextPort(), body, signal);
        if (measuring()) { stats.requests++; stats.ttftMs.push(ttftMs); }
        messages.push({ role: "assistant", content: reply });
      } catch (e) {
        if (signal.aborted) { stats.aborted++; return; }
        stats.errors++;
        if (stats.errorSamples.length < 5) stats.errorSamples.push((e as Error).message);
        return;
      }
    }
  }
}

async function getJson(port: number, path: string): Promise<Record<string, number>> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return (await res.json()) as Record<string, number>;
}

function startServer(slots: number): Promise<{ child: ChildProcessWithoutNullStreams; port: number; exited: Promise<number | null> }> {
  const store = values["state-store"] ? ["--state-store", values["state-store"]] : [];
  const child = spawn(process.execPath, [BIN, "serve", MODEL, "--port", "0", "--model-name", MODEL_NAME, "--slots", String(slots),
    "--queue", String(CLIENTS), "--cache-mb", values["cache-mb"]!, "--shutdown-grace", "5", ...store, ...values["server-args"]!.split(" ").filter(Boolean)]);
  if (values["server-log"]) child.stderr.on("data", (d: Buffer) => appendFileSync(values["server-log"]!, d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  let log = "";
  return new Promise((resolve, reject) => {
    child.stderr.on("data", (d: Buffer) => {
      log += d.toString();
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log);
      if (m) resolve({ child, port: Number(m[1]), exited });
    });
    child.once("exit", (code) => reject(new Error(`server exited (${code}): ${log}`)));
  });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

interface RunResult {
  slots: number; replicas: number; stateStoreHitRate: number | null; requests: number; errors: number; tokensPerS: number; promptTokensPerS: number; ttftP50Ms: number; ttftP99Ms: number;
  meanBatch: number; cachedPromptShare: number; rssStartMiB: number; rssEndMiB: number; rssMaxMiB: number; rssOk: boolean; exitCode: number | null;
  errorSamples: string[];
  /** The server's /metrics at the end of the window. */
  metrics: Record<string, number>;
}

/** /metrics of every replica, counters and RSS summed. */
async function summedMetrics(ports: readonly number[]): Promise<Record<string, number>> {
  const all = await Promise.all(ports.map((p) => getJson(p, "/metrics?format=json")));
  const sum: Record<string, number> = {};
  for (const m of all) for (const [k, v] of Object.entries(m)) sum[k] = (sum[k] ?? 0) + v;
  return sum;
}

async function run(slots: number, replicas: number, runIndex: number): Promise<RunResult> {
  const servers = await Promise.all(Array.from({ length: replicas }, () => startServer(slots)));
  const ports = servers.map((s) => s.port);
  const port = ports[0];
  let turn = 0;
  const nextPort = () => ports[turn++ % ports.length];
  const health = (await (await fetch(`http://127.0.0.1:${port}/health`)).json()) as { backend: string };
  if (runIndex === 0) process.stdout.write(`backend: ${health.backend}\n`);
  const stats: Stats = { requests: 0, errors: 0, aborted: 0, ttftMs: [], errorSamples: [] };
  const stop = new AbortController();
  setMaxListeners(CLIENTS * 2, stop.signal); // every in-flight request listens to it
  const t0 = performance.now();
  const warmupEnd = t0 + WARMUP_S * MS_PER_S;
  const end = warmupEnd + SECONDS * MS_PER_S;
  const measuring = () => performance.now() >= warmupEnd;
  const clients = Array.from({ length: CLIENTS }, (_, i) => client(i, nextPort, stop.signal, stats, measuring, runIndex * RUN_SEED_STRIDE));
  const rss: Array<{ t: number; mib: number }> = [];
  let atWarmup: Record<string, number> | null = null;
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, RSS_SAMPLE_MS));
    const m = await summedMetrics(ports);
    rss.push({ t: (performance.now() - t0) / MS_PER_S, mib: m.process_resident_memory_bytes / MIB });
    if (!atWarmup && measuring()) atWarmup = m;
  }
  const last = await summedMetrics(ports);
  const window = (performance.now() - warmupEnd) / MS_PER_S;
  stop.abort();
  await Promise.all(clients);
  for (const s of servers) s.child.kill("SIGTERM");
  const codes = await Promise.all(servers.map((s) => s.exited));
  const exitCode = codes.find((c) => c !== 0) ?? 0;
  const first = atWarmup ?? last;
  const after = rss.filter((s) => s.t >= WARMUP_S);
  const rssStart = after[0]?.mib ?? NaN, rssEnd = after[after.length - 1]?.mib ?? NaN;
  const ttft = [...stats.ttftMs].sort((a, b) => a - b);
  const promptDelta = last.prompt_tokens_total - first.prompt_tokens_total;
  const storeHits = (last.state_store_hits_total ?? 0) - (first.state_store_hits_total ?? 0);
  const storeLookups = storeHits + (last.state_store_misses_total ?? 0) - (first.state_store_misses_total ?? 0);
  return {
    slots, replicas, stateStoreHitRate: values["state-store"] ? (storeLookups > 0 ? storeHits / storeLookups : 0) : null, requests: stats.requests, errors: stats.errors, errorSamples: stats.errorSamples,
    tokensPerS: (last.completion_tokens_total - first.completion_tokens_total) / window,
    promptTokensPerS: (last.prompt_tokens_processed_total - first.prompt_tokens_processed_total) / window,
    ttftP50Ms: percentile(ttft, 50), ttftP99Ms: percentile(ttft, 99),
    meanBatch: (last.decode_tokens_total - first.decode_tokens_total) / Math.max(1, last.decode_steps_total - first.decode_steps_total),
    cachedPromptShare: promptDelta > 0 ? (last.prompt_tokens_cached_total - first.prompt_tokens_cached_total) / promptDelta : 0,
    rssStartMiB: rssStart, rssEndMiB: rssEnd, rssMaxMiB: Math.max(...rss.map((s) => s.mib)),
    rssOk: Math.abs(rssEnd - rssStart) <= RSS_TOLERANCE * rssStart, exitCode, metrics: last,
  };
}

const results: RunResult[] = [];
process.stdout.write(`serve-load: ${MODEL}, ${CLIENTS} streaming chat clients, ${WARMUP_S} s warm-up + ${SECONDS} s measured per run, slots ${SLOTS.join(", ")}, ` +
  `replicas ${REPLICAS.join(", ")}${values["state-store"] ? `, state store ${values["state-store"]}` : ""}\n`);
for (const replicas of REPLICAS) for (const slots of SLOTS) {
  const r = await run(slots, replicas, results.length);
  results.push(r);
  const f = (x: number, d = 1) => x.toFixed(d);
  const store = r.stateStoreHitRate === null ? "" : `, state store hit rate ${f(100 * r.stateStoreHitRate)}%`;
  process.stdout.write(`--replicas ${replicas} --slots ${slots}: ${r.requests} requests, ${r.errors} errors, ${f(r.tokensPerS)} tokens/s (+ ${f(r.promptTokensPerS)} prompt tokens/s prefilled), TTFT p50 ${f(r.ttftP50Ms, 0)} ms p99 ${f(r.ttftP99Ms, 0)} ms, ` +
    `mean batch ${f(r.meanBatch)}, prompt tokens cached ${f(100 * r.cachedPromptShare)}%${store}, RSS ${f(r.rssStartMiB)} → ${f(r.rssEndMiB)} MiB ` +
    `(max ${f(r.rssMaxMiB)}; ${r.rssOk ? "within" : "NOT within"} ${RSS_TOLERANCE * 100}%), exit ${r.exitCode}\n`);
  for (const e of r.errorSamples) process.stdout.write(`    error: ${e}\n`);
}
const base = results[0];
for (const r of results.slice(1)) {
  process.stdout.write(`speed-up --replicas ${r.replicas} --slots ${r.slots} over --replicas ${base.replicas} --slots ${base.slots}: ${(r.tokensPerS / base.tokensPerS).toFixed(2)}x\n`);
}
if (values.json) writeFileSync(values.json, JSON.stringify({ model: MODEL, clients: CLIENTS, seconds: SECONDS, warmup: WARMUP_S, stateStore: values["state-store"] ?? null, results }, null, 2));
const ok = results.every((r) => r.errors === 0 && r.rssOk && r.exitCode === 0);
process.stdout.write(ok ? "OK: zero errors, RSS steady, clean exits\n" : "FAILED: see above\n");
agent.destroy();
process.exitCode = ok ? 0 : 1;
