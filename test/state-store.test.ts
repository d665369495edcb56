import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, test, type TestContext } from "node:test";
import OpenAI from "openai";
import { State } from "../src/core/model/state.js";
import { PrefixCache, type PrefixStore } from "../src/core/prefix-cache.js";
import { loadModel } from "../src/node/load.js";
import { lengthsKey, prefixDigests, stateKey, storeModelId, storeNamespace } from "../src/node/state-store/keys.js";
import { parseStateStoreUrl, RedisStateStore } from "../src/node/state-store/redis.js";
import { runCaptured } from "./run-cli.js";

/*
 * The prefix cache's second level: unit checks (key builder, URL parsing, the cache with a fake
 * store) and the multi-replica test: a real redis-server (Debian package, installed by .ci/run)
 * on a free port, two `rwkv serve --state-store` processes and one plain `rwkv serve` as the
 * single-server reference, driven by the official openai client. Then Redis hangs (SIGSTOP) and
 * dies (SIGKILL) mid-conversation: every request still succeeds with the reference's output.
 */

const ROOT = join(import.meta.dirname, "..", "..");
const BIN = join(ROOT, "dist", "src", "node", "bin.js");
const MODEL = join(ROOT, "models", "rwkv7-shakespeare.safetensors");
const MODEL_NAME = "shakespeare";
const SEED = 7;
const REPLY_TOKENS = 24;
const START_TIMEOUT_MS = 20_000;

const children: ChildProcess[] = [];
after(() => { for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL"); });

test("prefixDigests: SHA-256 of each prefix as little-endian u32 ids (vectors from Python hashlib)", () => {
  const d = prefixDigests([1, 2, 3], [3, 2, 9, 0]);
  assert.deepEqual([...d.keys()], [2, 3]); // 9 is longer than the tokens, 0 is empty: skipped
  assert.equal(d.get(3), "4636993d3e1da4e9d6b8f87b79e8f7c6d018580d52661950eabc3845c5897a4d");
  assert.equal(d.get(2), "34fb5c825de7ca4aea6e712f19d439c1da0c92c37b423936c5f618545ca4fa1f");
  assert.equal(prefixDigests([70000, 5], [2]).get(2), "f547374ec68ea8187324905db72f1af698dc538df28132f09ae04ee5d90dc5a0");
});

test("storeNamespace: one namespace per model and adapter; an adapter id cannot forge another key", () => {
  assert.equal(storeNamespace("abc1"), "rwkv:states:v1:abc1:base");
  assert.equal(storeNamespace("abc1", "my:lora"), "rwkv:states:v1:abc1:a.my%3Alora");
  assert.notEqual(storeNamespace("abc1", "base"), storeNamespace("abc1"));
  assert.throws(() => storeNamespace("ABC:x"), /model id must be lowercase hex/);
});

test("parseStateStoreUrl: redis URLs pass, anything else is refused naming the problem", () => {
  assert.equal(parseStateStoreUrl("redis://127.0.0.1:6379/2"), "redis://127.0.0.1:6379/2");
  assert.throws(() => parseStateStoreUrl("127.0.0.1:6379"), /only redis:\/\/|not a URL/);
  assert.throws(() => parseStateStoreUrl("http://h:1"), /only redis:\/\//);
  assert.throws(() => parseStateStoreUrl("redis://h:1/x"), /database must be a number/);
  assert.throws(() => parseStateStoreUrl("redis://h:1/0?ttl=3"), /query strings/);
});

test("rwkv serve: bad --state-store flags are one-line usage errors", async () => {
  const cases: Array<[string[], RegExp]> = [
    [["--state-store", "http://localhost:6379"], /--state-store: .*only redis:\/\//],
    [["--state-ttl", "10"], /--state-ttl needs --state-store/],
    [["--state-store", "redis://127.0.0.1:1", "--cache-mb", "0"], /needs the local prefix cache/],
    [["--state-store", "redis://127.0.0.1:1", "--state-ttl", "0"], /--state-ttl/],
  ];
  for (const [flags, want] of cases) {
    const r = await runCaptured(["serve", MODEL, "--port", "0", ...flags]);
    assert.equal(r.code, 2, `${flags.join(" ")}: ${r.err}`);
    assert.match(r.err.split("\n")[0], want); // the problem on the first line (then the pointer to `rwkv help`)
  }
});

/** An in-memory second level that records calls; `fail` makes fetch answer null as a down store does. */
class FakeStore implements PrefixStore {
  readonly entries = new Map<string, { length: number; state: State; logits: Float32Array }>();
  puts = 0;
  fetches = 0;
  fail = false;
  async fetch(tokens: readonly number[], minLength: number) {
    this.fetches++;
    if (this.fail) return null;
    for (let n = tokens.length; n > minLength; n--) {
      const e = this.entries.get(tokens.slice(0, n).join(","));
      if (e) return { length: n, state: e.state.clone(), logits: e.logits.slice() };
    }
    return null;
  }
  put(tokens: readonly number[], state: State, logits: Float32Array) {
    this.puts++;
    this.entries.set(tokens.join(","), { length: tokens.length, state: state.clone(), logits: logits.slice() });
  }
  metrics() { return {}; }
}

const stateOf = (x: number) => new State("7", [{ att_x_prev: new Float32Array([x, x + 1]) }]);

test("PrefixCache with a second level: writes through, prefetches a longer prefix, never writes it back", async () => {
  const store = new FakeStore();
  const a = new PrefixCache(1 << 20, store), b = new PrefixCache(1 << 20, store);
  a.store([1, 2, 3], stateOf(3), new Float32Array([0.5]));
  assert.equal(store.puts, 1);
  // Replica b never saw the conversation: prefetch brings the state, lookup finds it.
  assert.equal(b.lookup([1, 2, 3, 4]), null);
  await b.prefetch([1, 2, 3, 4]);
  const hit = b.lookup([1, 2, 3, 4]);
  assert.equal(hit?.length, 3);
  assert.deepEqual([...hit!.state.layers[0].att_x_prev], [3, 4]);
  assert.deepEqual([...hit!.logits], [0.5]);
  assert.equal(store.puts, 1, "a prefetched entry is not written back");
  // a already holds the longest prefix the store could give for the exact prompt: no round trip.
  const before = store.fetches;
  await a.prefetch([1, 2, 3]);
  assert.equal(store.fetches, before);
  // A store that is down: prefetch resolves, the local level still answers.
  store.fail = true;
  b.store([1, 2, 3, 4, 5], stateOf(5), new Float32Array([1]));
  await b.prefetch([1, 2, 3, 4, 5, 6]);
  assert.equal(b.lookup([1, 2, 3, 4, 5, 6])?.length, 5);
});

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Spawns a process and resolves once a line of its output matches `ready` (with the match). */
function startProcess(cmd: string, args: string[], ready: RegExp): Promise<{ child: ChildProcess; match: RegExpMatchArray; output: () => string }> {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let out = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd} did not start within ${START_TIMEOUT_MS} ms:\n${out}`)), START_TIMEOUT_MS);
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = out.match(ready);
      if (m) { clearTimeout(timer); resolve({ child, match: m, output: () => out }); }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) => { clearTimeout(timer); reject(new Error(`${cmd} exited (${code}) before it was ready:\n${out}`)); });
  });
}

function redisServerPath(t: TestContext): string | null {
  const r = spawnSync("redis-server", ["--version"], { encoding: "utf8" });
  if (r.status === 0) return "redis-server";
  if (process.env.CI === "true") throw new Error("redis-server is not installed (.ci/run installs the Debian package redis-server)");
  t.skip("redis-server not installed (apt-get install -y redis-server)");
  return null;
}

interface Replica { url: string; client: OpenAI; output: () => string }

async function serve(extra: string[]): Promise<Replica> {
  const p = await startProcess(process.execPath, [BIN, "serve", MODEL, "--port", "0", "--model-name", MODEL_NAME, "--slots", "2", ...extra], /listening on (http:\/\/\S+) /);
  const url = p.match[1];
  // maxRetries 0: a failed request must fail the test, not be retried until it passes.
  return { url, client: new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 }), output: p.output };
}

async function metrics(r: Replica): Promise<Record<string, number>> {
  return (await (await fetch(`${r.url}/metrics?format=json`)).json()) as Record<string, number>;
}

type Message = { role: "user" | "assistant"; content: string };

async function turn(r: Replica, messages: Message[]): Promise<{ content: string; cached: number }> {
  const c = await r.client.chat.completions.create({ model: MODEL_NAME, messages, seed: SEED, max_tokens: REPLY_TOKENS, temperature: 1, top_p: 0.9 });
  return { content: c.choices[0].message.content ?? "", cached: c.usage?.prompt_tokens_details?.cached_tokens ?? -1 };
}

const USER_LINES = ["Good morrow, what news?", "Speak, I pray thee.", "Where is the king?", "Then let us go.", "What say you now?", "Farewell."];

test("two replicas sharing Redis continue each other's conversation; Redis hanging or dead fails no request", async (t) => {
  const redisBin = redisServerPath(t);
  if (!redisBin) return;
  const port = await freePort();
  // The size bound and eviction as the docs recommend: maxmemory with LRU over all keys.
  const redis = await startProcess(redisBin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
    "--maxmemory", "32mb", "--maxmemory-policy", "allkeys-lru"], /Ready to accept connections/);
  const storeFlags = ["--state-store", `redis://127.0.0.1:${port}/0`, "--state-store-timeout", "1500"]; // generous: a slow CI machine must not turn hits into timeouts
  const [a, b, single] = await Promise.all([serve(storeFlags), serve(storeFlags), serve([])]);
  const replicas = [a, b];

  const convo: Message[] = [], reference: Message[] = [];
  const outageLine = /state store redis:\/\/127\.0\.0\.1:\d+\/0: .*recomputing/g;
  for (let i = 0; i < USER_LINES.length; i++) {
    if (i === 3) redis.child.kill("SIGSTOP"); // connected but silent: lookups time out
    if (i === 4) redis.child.kill("SIGKILL"); // gone: the client is disconnected, lookups are skipped
    const r = replicas[i % 2];
    convo.push({ role: "user", content: USER_LINES[i] });
    reference.push({ role: "user", content: USER_LINES[i] });
    const got = await turn(r, convo);
    const want = await turn(single, reference);
    assert.equal(got.content, want.content, `turn ${i + 1}: the replica's reply differs from the single server's`);
    if (i > 0 && i < 3) assert.ok(got.cached > 0, `turn ${i + 1} on replica ${i % 2 ? "b" : "a"}: cached_tokens ${got.cached}`);
    convo.push({ role: "assistant", content: got.content });
    reference.push({ role: "assistant", content: want.content });
    if (i === 1) {
      // b had never seen this conversation: its cached tokens came from Redis.
      const mb = await metrics(b);
      assert.equal(mb.state_store_hits_total, 1);
      assert.equal(mb.state_store_errors_total, 0);
    }
  }
  assert.ok(convo.filter((m) => m.role === "assistant" && m.content.length > 0).length >= 3, `replies: ${JSON.stringify(convo)}`);
  const [ma, mb] = await Promise.all([metrics(a), metrics(b)]);
  for (const [name, m, r] of [["a", ma, a], ["b", mb, b]] as const) {
    assert.equal(m.requests_failed_total, 0, `replica ${name}`);
    assert.equal(m.requests_finished_total, USER_LINES.length / 2, `replica ${name}`);
    assert.equal(m.state_store_up, 0, `replica ${name}: Redis is dead`);
    assert.ok(m.state_store_errors_total + m.state_store_skipped_total >= 1, `replica ${name}: ${JSON.stringify(m)}`);
    assert.equal(r.output().match(outageLine)?.length, 1, `replica ${name} logs the outage once:\n${r.output()}`);
  }
  // b was the replica asked while Redis hung (turn 4): its lookup timed out and was counted.
  assert.ok(mb.state_store_errors_total >= 1, JSON.stringify(mb));
  assert.ok(ma.state_store_hits_total >= 1 && mb.state_store_hits_total >= 1, `${JSON.stringify(ma)} ${JSON.stringify(mb)}`);
});

test("RedisStateStore: exact round trip of state and logits; a foreign value is a miss, counted and deleted", async (t) => {
  const redisBin = redisServerPath(t);
  if (!redisBin) return;
  const port = await freePort();
  const redis = await startProcess(redisBin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], /Ready to accept connections/);
  const model = await loadModel(MODEL);
  const modelId = storeModelId(model, { matrices: "compact" });
  const lines: string[] = [];
  const store = new RedisStateStore({ url: `redis://127.0.0.1:${port}`, model, modelId, ttlSeconds: 60, timeoutMs: 2000, log: (l) => lines.push(l) });
  try {
    assert.equal(await store.connect(), true);
    const tokens = [...Buffer.from("To be, or not")];
    const state = model.initState();
    const logits = await model.forward(tokens, state);
    store.put(tokens, state, logits);
    const want = state.clone();
    await model.forward([32], state); // the caller goes on advancing its state: the stored copy must not move
    const prompt = [...tokens, 32, 116, 111];
    let got = null;
    for (let i = 0; i < 50 && !got; i++) { got = await store.fetch(prompt, 0); if (!got) await new Promise((r) => setTimeout(r, 10)); }
    assert.ok(got, JSON.stringify(store.metrics()));
    assert.equal(got.length, tokens.length);
    assert.deepEqual(got.logits, logits);
    got.state.layers.forEach((l, i) => { for (const [k, v] of Object.entries(l)) assert.deepEqual(v, want.layers[i][k], `layer ${i} ${k}`); });
    // Nothing longer than what the caller already holds: a miss without transfer.
    assert.equal(await store.fetch(prompt, tokens.length), null);
    assert.equal(await store.fetch(prompt.slice(0, tokens.length - 1), 0), null);
    // Another writer's bytes under our key: ignored (recompute), counted, removed; no outage logged.
    const { Redis } = await import("ioredis");
    const raw = new Redis(`redis://127.0.0.1:${port}`);
    const ns = storeNamespace(modelId);
    const key = stateKey(ns, prefixDigests(tokens, [tokens.length]).get(tokens.length)!);
    await raw.set(key, "not a state");
    assert.equal(await store.fetch(prompt, 0), null);
    const m = store.metrics();
    assert.equal(m.state_store_errors_total, 1);
    assert.equal(m.state_store_hits_total, 1);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(await raw.exists(key), 0);
    assert.ok((await raw.ttl(lengthsKey(ns))) > 0, "the lengths set expires too");
    await raw.quit();
    assert.deepEqual(lines, []);
  } finally {
    await store.close();
    redis.child.kill("SIGKILL");
  }
});
