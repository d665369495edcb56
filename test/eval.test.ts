// `rwkv eval` checked against independent computations: every expected figure below is recomputed
// here with the recurrent form (model.step, one token at a time) and a float64 log-softmax written
// in this file, never by calling src/core/eval.ts, so a shared mistake cannot hide. (Only the
// cancellation test drives src/core/eval.ts directly, and it checks no figure.)
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { evaluateDocuments } from "../src/core/eval.js";
import type { Model } from "../src/core/model/model.js";
import type { State } from "../src/core/model/state.js";
import { ByteTokenizer } from "../src/core/tokenizer/bytes.js";
import { loadModel } from "../src/node/load.js";
import { formatDuration, Progress } from "../src/node/progress.js";
import { SHARED, sharedPath } from "./shared.js";
import { runCaptured as run } from "./run-cli.js";

const BIN = join(import.meta.dirname, "..", "src", "node", "bin.js");
/** Parallel (forward) vs recurrent (step) sums of thousands of log-probs agree to float32 noise. */
const REL_TOL = 1e-6;
const SEPARATOR = 0;

const tmp = mkdtempSync(join(tmpdir(), "rwkv-eval-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

function tmpFile(name: string, content: string | Uint8Array): string {
  const p = join(tmp, name);
  writeFileSync(p, content);
  return p;
}

/** Runs `rwkv eval` in-process and parses its stdout, which must be exactly one JSON document. */
async function evalJson(argv: string[]): Promise<Record<string, unknown>> {
  const r = await run(["eval", ...argv]);
  assert.equal(r.code, 0, r.err);
  return JSON.parse(r.out) as Record<string, unknown>;
}

const num = (r: Record<string, unknown>, k: string): number => {
  const v = r[k];
  assert.equal(typeof v, "number", `${k} is ${JSON.stringify(v)}`);
  return v as number;
};

function assertClose(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= REL_TOL * Math.abs(expected), `${what}: ${actual} vs independent ${expected}`);
}

/** ln softmax(logits)[target] in float64, and the first index of the maximum. */
function independentLogProb(logits: Float32Array, target: number): { logProb: number; best: number } {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  const max = logits[best];
  let z = 0;
  for (const v of logits) z += Math.exp(v - max);
  return { logProb: logits[target] - max - Math.log(z), best };
}

/** Feeds `seq` token by token from `state`; the sum of -ln p(seq[i+1] | seq[..i]). */
async function stepNll(model: Model, state: State, seq: readonly number[]): Promise<number> {
  let nll = 0;
  for (let i = 0; i < seq.length; i++) {
    const logits = await model.step(seq[i], state);
    if (i + 1 < seq.length) nll -= independentLogProb(logits, seq[i + 1]).logProb;
  }
  return nll;
}

const utf8 = (s: string): number[] => Array.from(Buffer.from(s, "utf8"));
const codePoints = (s: string): number => [...s].length;

/** The trained byte-level rwkv.cpp models: tests spread over versions to cover more than one architecture. */
const MODEL_V7 = ["rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin"];
const MODEL_V5 = ["rwkv.cpp", "tiny-rwkv-5v2-730K-FP32.bin"];
/** v4 is the fastest in both forms here, so it carries the longest check (a whole uncheatable document). */
const MODEL_V4 = ["rwkv.cpp", "tiny-rwkv-4v0-660K-FP32.bin"];
const LAMBADA = ["data", "lambada", "lambada_test.jsonl"];
const LAMBADA_LIMIT = 20;

function tinyModel(t: import("node:test").TestContext): string | null {
  return sharedPath(t, ...MODEL_V7);
}

/**
 * LAMBADA (20 items, ~6,700 tokens) is the slowest part of this file on the plain-TypeScript
 * kernels, so it runs as a real `rwkv eval` process started when the file loads: it uses the
 * machine's second core while the in-process tests below run, and its test awaits the result.
 */
const lambadaRun: Promise<{ code: number | null; out: string; err: string }> | null =
  existsSync(join(SHARED, ...MODEL_V7)) && existsSync(join(SHARED, ...LAMBADA))
    ? new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [BIN, "eval", join(SHARED, ...MODEL_V7), "--lambada", join(SHARED, ...LAMBADA), "--limit", String(LAMBADA_LIMIT)]);
      let out = "", err = "";
      child.stdout.setEncoding("utf8").on("data", (d: string) => { out += d; });
      child.stderr.setEncoding("utf8").on("data", (d: string) => { err += d; });
      child.on("error", reject);
      child.on("close", (code) => resolve({ code, out, err }));
    })
    : null;

test("eval --text: sum NLL, bits per byte and per char match a token-by-token computation", async (t) => {
  const modelPath = tinyModel(t);
  const shakespeare = sharedPath(t, "data", "tinyshakespeare", "input.txt");
  if (!modelPath || !shakespeare) return;
  // Real text plus multi-byte characters, so bytes and code points differ.
  const text = readFileSync(shakespeare, "utf8").slice(0, 300) + "\nCafé — naïve ✓ 𝄞 done.\n";
  const file = tmpFile("sample.txt", text);
  // A piece length that does not divide the length: the state is carried across uneven pieces.
  const r = await evalJson([modelPath, "--text", file, "--piece-len", "100"]);

  const model = await loadModel(modelPath);
  const bytes = utf8(text);
  const nll = await stepNll(model, model.initState(), [SEPARATOR, ...bytes]);
  assertClose(num(r, "sumNll"), nll, "sumNll");
  assertClose(num(r, "bitsPerByte"), nll / Math.LN2 / bytes.length, "bitsPerByte");
  assertClose(num(r, "bitsPerChar"), nll / Math.LN2 / codePoints(text), "bitsPerChar");
  assertClose(num(r, "perplexity"), Math.exp(nll / bytes.length), "perplexity");
  assert.equal(num(r, "scoredTokens"), bytes.length);
  assert.equal(num(r, "bytes"), bytes.length);
  assert.equal(num(r, "chars"), codePoints(text));
  assert.equal(r.model, modelPath);
  assert.equal(r.method, "documents");
  assert.equal(r.inputKind, "text");
});

test("eval --json: two documents, each from a fresh state or carried, match token-by-token sums", async (t) => {
  const modelPath = sharedPath(t, ...MODEL_V5);
  if (!modelPath) return;
  const docs = ["ROMEO: But soft, what light through yonder window breaks?", "It is the east, and Juliet is the sun. Über — ✓"];
  const file = tmpFile("docs.json", JSON.stringify(docs));
  const out = join(tmp, "result.json");
  const r = await evalJson([modelPath, "--json", file, "--piece-len", "16", "--output", out]);
  assert.deepEqual(JSON.parse(readFileSync(out, "utf8")).perDocument, r.perDocument, "--output holds the same result");

  const model = await loadModel(modelPath);
  const fresh: number[] = [];
  for (const d of docs) fresh.push(await stepNll(model, model.initState(), [SEPARATOR, ...utf8(d)]));
  const per = r.perDocument as Array<{ nll: number; scoredTokens: number; chars: number }>;
  assert.equal(per.length, 2);
  docs.forEach((d, i) => {
    assertClose(per[i].nll, fresh[i], `document ${i}`);
    assert.equal(per[i].scoredTokens, utf8(d).length);
    assert.equal(per[i].chars, codePoints(d));
  });
  const bytes = docs.reduce((n, d) => n + utf8(d).length, 0);
  assertClose(num(r, "sumNll"), fresh[0] + fresh[1], "sumNll");
  assertClose(num(r, "bitsPerByte"), (fresh[0] + fresh[1]) / Math.LN2 / bytes, "bitsPerByte");

  // --carry-state: the second document continues from the state the first left.
  const c = await evalJson([modelPath, "--json", file, "--carry-state"]);
  const state = model.initState();
  const carried: number[] = [];
  for (const d of docs) carried.push(await stepNll(model, state, [SEPARATOR, ...utf8(d)]));
  const cper = c.perDocument as Array<{ nll: number }>;
  assertClose(cper[0].nll, carried[0], "carried document 0");
  assertClose(cper[1].nll, carried[1], "carried document 1");
  assert.notEqual(cper[1].nll, per[1].nll);
});

test("eval --uncheatable on a real file: fresh state per piece, first token of each piece unscored", async (t) => {
  const modelPath = sharedPath(t, ...MODEL_V4);
  const data = sharedPath(t, "data", "uncheatable_eval", "bbc_news_20240601to20240615.json");
  if (!modelPath || !data) return;
  const PIECE = 256;
  const r = await evalJson([modelPath, "--uncheatable", data, "--limit", "1", "--piece-len", String(PIECE)]);

  const doc = (JSON.parse(readFileSync(data, "utf8")) as string[])[0];
  const ids = utf8(doc);
  assert.ok(ids.length > 3 * PIECE, "the document spans several pieces");
  const model = await loadModel(modelPath);
  let nll = 0, scored = 0;
  for (let begin = 0; begin < ids.length; begin += PIECE) {
    const piece = ids.slice(begin, begin + PIECE);
    nll += await stepNll(model, model.initState(), piece);
    scored += piece.length - 1;
  }
  assert.equal(r.method, "uncheatable");
  assert.equal(num(r, "documents"), 1);
  assert.equal(num(r, "scoredTokens"), scored);
  assertClose(num(r, "sumNll"), nll, "sumNll");
  assertClose(num(r, "bitsPerChar"), nll / Math.LN2 / codePoints(doc), "bitsPerChar");
  assertClose(num(r, "bitsPerByte"), nll / Math.LN2 / ids.length, "bitsPerByte");
  assertClose((r.perDocument as Array<{ nll: number }>)[0].nll, nll, "per-document sum");
});

test("eval bad input: one-line messages naming the file, exit 1 (2 for flags), no stack trace", async (t) => {
  const modelPath = tinyModel(t);
  if (!modelPath) return;
  const notJson = tmpFile("notjson.json", "[\"a\", oops");
  const object = tmpFile("object.json", JSON.stringify({ text: "a" }));
  const numbers = tmpFile("numbers.json", JSON.stringify(["ok", 3]));
  const emptyList = tmpFile("emptylist.json", "[]");
  const badUtf8 = tmpFile("bad.txt", Uint8Array.from([0x61, 0x62, 0xff, 0x63]));
  const cutUtf8 = tmpFile("cut.txt", Uint8Array.from([0x61, 0xe2, 0x9c]));
  const empty = tmpFile("empty.txt", "");
  const badLambada = tmpFile("lambada.jsonl", "{\"text\": \"a b\"}\n[1]\n");
  const good = tmpFile("good.txt", "hello");
  const cases: Array<[string[], number, RegExp]> = [
    [["--json", notJson], 1, /notjson\.json: not valid JSON/],
    [["--json", object], 1, /object\.json: expected a JSON list of strings \(documents\), got an object/],
    [["--uncheatable", numbers], 1, /numbers\.json: expected a JSON list of strings, but item 1 is a number/],
    [["--json", emptyList], 1, /emptylist\.json: the list of documents is empty/],
    [["--text", badUtf8], 1, /bad\.txt: not valid UTF-8 \(bad byte 0xff at offset 2\)/],
    [["--text", cutUtf8], 1, /cut\.txt: not valid UTF-8 \(the file ends inside a multi-byte character\)/],
    [["--text", empty], 1, /empty\.txt: file is empty/],
    [["--text", join(tmp, "missing.txt")], 1, /missing\.txt: no such file/],
    [["--text", tmp], 1, /is a directory/],
    [["--lambada", badLambada], 1, /lambada\.jsonl: line 2: expected an object \{"text": string\}, got a list/],
    [["--text", good, "--output", join(tmp, "no-dir", "out.json")], 1, /out\.json: cannot write the result \(ENOENT\)/],
    [[], 2, /give exactly one of --text FILE/],
    [["--text", good, "--json", good], 2, /got --text, --json/],
    [["--text", good, "--limit", "3"], 2, /--limit applies to/],
    [["--text", good, "--piece-len", "0"], 2, /--piece-len must be a positive integer/],
    [["--uncheatable", good, "--piece-len", "1"], 2, /at least 2/],
    [["--lambada", good, "--piece-len", "8"], 2, /--piece-len does not apply to --lambada/],
    [["--lambada", good, "--carry-state"], 2, /--carry-state applies only to --json/],
    [["--text", good, "--tokenizer-kind", "gpt"], 2, /--tokenizer-kind must be/],
    [["--text", good, "--backend", "nope"], 2, /--backend must be one of/],
  ];
  for (const [flags, code, re] of cases) {
    const argv = ["eval", modelPath, ...flags];
    const r = await run(argv);
    assert.equal(r.code, code, `${flags.join(" ")}: exit ${r.code}, stderr ${r.err}`);
    assert.equal(r.out, "", "nothing on stdout");
    const lines = r.err.trimEnd().split("\n");
    assert.match(lines[0], re, flags.join(" "));
    // Input errors are one line; usage errors add only the dispatcher's "rwkv help" hint.
    assert.equal(lines.length, code === 1 ? 1 : 2, r.err);
  }
  // A real process prints no stack trace either.
  const p = spawnSync(process.execPath, [BIN, "eval", modelPath, "--json", notJson], { encoding: "utf8", timeout: 30_000 });
  assert.equal(p.status, 1);
  assert.match(p.stderr, /^rwkv: .*notjson\.json: not valid JSON/);
  assert.doesNotMatch(p.stderr, /\n\s+at /);
  assert.equal(p.stdout, "");
});

test("evaluation can be cancelled: an AbortSignal, and Ctrl-C in the CLI (exit 130)", async (t) => {
  const modelPath = tinyModel(t);
  if (!modelPath) return;
  const model = await loadModel(modelPath);
  const controller = new AbortController();
  const reason = new Error("stop");
  let calls = 0;
  await assert.rejects(evaluateDocuments(model, new ByteTokenizer(), ["x".repeat(64)], {
    pieceLen: 8, signal: controller.signal, onProgress: () => { if (++calls === 2) controller.abort(reason); },
  }), (e) => e === reason);
  assert.equal(calls, 2, "stopped at the next piece");

  const file = tmpFile("long.txt", "abcdefgh ".repeat(200));
  const before = process.listenerCount("SIGINT");
  // Ctrl-C as soon as the command has installed its handler (it yields between pieces).
  const poll = setInterval(() => {
    if (process.listenerCount("SIGINT") > before) { clearInterval(poll); process.emit("SIGINT", "SIGINT"); }
  }, 1);
  const r = await run(["eval", modelPath, "--text", file, "--piece-len", "8"]);
  clearInterval(poll);
  assert.equal(r.code, 130, r.err);
  assert.match(r.err, /^rwkv: eval interrupted after \d+ tokens\n$/);
  assert.equal(r.out, "");
  assert.equal(process.listenerCount("SIGINT"), before, "the handler is removed");
});

test("progress: a bar redrawn in place on a terminal, rare plain lines elsewhere", () => {
  let clock = 0;
  const tty: string[] = [];
  const bar = new Progress({ label: "eval", unit: "tok", write: (s) => tty.push(s), tty: true, columns: 120, now: () => clock });
  clock = 2000;
  bar.update(500, 1000);
  clock = 2050; // within the redraw interval: skipped
  bar.update(510, 1000);
  clock = 4000;
  bar.update(1000, 1000);
  bar.finish();
  assert.equal(tty.length, 3);
  assert.ok(tty[0].startsWith("\r\x1b[2K"), JSON.stringify(tty[0]));
  assert.match(tty[0], /eval \[#{12}-{12}\]\s+50% 500\/1000 tok 250 tok\/s 2s ETA 2s/);
  assert.match(tty[2], /100% 1000\/1000 tok 250 tok\/s 4s ETA 0s\n$/);

  clock = 0;
  const plain: string[] = [];
  const lines = new Progress({ label: "eval", unit: "tok", write: (s) => plain.push(s), tty: false, now: () => clock });
  clock = 5000;
  lines.update(100, 1000);
  assert.equal(plain.length, 0, "short jobs print nothing");
  clock = 12_000;
  lines.update(300, 1000);
  assert.deepEqual(plain, ["eval: 30.0% (300/1000 tok), 25.0 tok/s, 12s elapsed, ETA 28s\n"]);
  assert.ok(!plain[0].includes("\r"));
  // A pseudo-terminal reporting 0 columns still gets a visible bar.
  const zero: string[] = [];
  new Progress({ label: "eval", unit: "tok", write: (s) => zero.push(s), tty: true, columns: 0, now: () => 0 }).update(1, 2);
  assert.match(zero[0], /eval \[#{12}-{12}\]/);
  assert.equal(formatDuration(185), "3m05s");
  assert.equal(formatDuration(3720), "1h02m");
});

test("eval --lambada: a tiny trained model end to end, one item checked token by token", async (t) => {
  const modelPath = tinyModel(t);
  const data = sharedPath(t, ...LAMBADA);
  if (!modelPath || !data || !lambadaRun) return;
  const LIMIT = LAMBADA_LIMIT;
  const run = await lambadaRun;
  assert.equal(run.code, 0, run.err);
  const r = JSON.parse(run.out) as Record<string, unknown>;
  assert.equal(r.model, modelPath);
  assert.equal(r.method, "lambada");
  assert.equal(num(r, "items"), LIMIT);
  const accuracy = num(r, "accuracy");
  assert.ok(accuracy >= 0 && accuracy <= 1, `accuracy ${accuracy}`);
  assert.ok(Number.isFinite(num(r, "perplexity")) && num(r, "perplexity") > 1, `perplexity ${num(r, "perplexity")}`);
  const items = r.perItem as Array<{ logProb: number; hit: boolean }>;
  assert.equal(items.length, LIMIT);
  assert.equal(num(r, "hits"), items.filter((i) => i.hit).length);
  const sum = items.reduce((s, i) => s + i.logProb, 0);
  assertClose(num(r, "perplexity"), Math.exp(-sum / LIMIT), "perplexity = exp(-sum log p / items)");

  // The shortest item, recomputed: Python's split(' ') gives context and " " + last word.
  const texts = readFileSync(data, "utf8").split("\n").slice(0, LIMIT).map((l) => (JSON.parse(l) as { text: string }).text);
  const k = texts.reduce((best, s, i) => (s.length < texts[best].length ? i : best), 0);
  const words = texts[k].split(" ");
  const src = [SEPARATOR, ...utf8(words.slice(0, -1).join(" "))];
  const dst = utf8(" " + words[words.length - 1]);
  const model = await loadModel(modelPath);
  const state = model.initState();
  let logits: Float32Array = new Float32Array(0);
  for (const tok of src) logits = await model.step(tok, state);
  let logProb = 0, hit = true;
  for (const tok of dst) {
    const p = independentLogProb(logits, tok);
    logProb += p.logProb;
    if (p.best !== tok) hit = false;
    logits = await model.step(tok, state);
  }
  assertClose(items[k].logProb, logProb, `item ${k} log-prob`);
  assert.equal(items[k].hit, hit, `item ${k} hit`);
});
