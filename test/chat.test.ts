import assert from "node:assert/strict";
import { type ChildProcessWithoutNullStreams, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import { applySettings, type ChatSettings, ChatSession, cleanMessage, formatConversation } from "../src/core/chat.js";
import type { Model } from "../src/core/model/model.js";
import { State } from "../src/core/model/state.js";
import type { Tokenizer } from "../src/core/tokenizer/types.js";
import { ChatRepl } from "../src/node/commands/chat.js";
import { loadModel } from "../src/node/load.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { compare, sharedPath } from "./shared.js";

const BIN = join(import.meta.dirname, "..", "src", "node", "bin.js");
const tmp = mkdtempSync(join(tmpdir(), "rwkv-chat-"));
const SEP = "\n\n";
/** fp32 chunked prefill vs token-by-token steps: the same math in another order (SPEC §12 tolerance). */
const LOGIT_TOL = 1e-4;
const NEWLINE = 10;

/** These tiny test models are barely trained (flat distributions): top-k 3 keeps them on ASCII. */
function settings(over: Partial<ChatSettings> = {}): ChatSettings {
  return { maxTokens: 30, sampler: { topK: 3 }, penalties: {}, stop: [], stopTokens: [], chunkLen: 256, ...over };
}
const GREEDY: Partial<ChatSettings> = { sampler: { temperature: 0, topK: 1 }, penalties: { presencePenalty: 0, frequencyPenalty: 0 } };

async function tiny(t: TestContext): Promise<{ path: string; model: Model; tok: Tokenizer } | null> {
  const path = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!path) return null;
  return { path, model: await loadModel(path), tok: loadTokenizer({ kind: "bytes" }) };
}

/** The same model, recording every token it is fed (prefill and steps alike), in order. */
function spy(model: Model): { model: Model; fed: number[] } {
  const fed: number[] = [];
  const recording: Partial<Model> = {
    step: async (token, state) => { fed.push(token); return await model.step(token, state); },
    forward: async (tokens, state, o) => { fed.push(...tokens); return await model.forward(tokens, state, o); },
    stepBatch: async (tokens, states) => { fed.push(...tokens); return await model.stepBatch(tokens, states); },
  };
  // A proxy passes every other member through, so the spy keeps up with the Model interface.
  return {
    fed,
    model: new Proxy(model, {
      get: (target, key) => {
        if (key in recording) return recording[key as keyof Model];
        const v: unknown = Reflect.get(target, key);
        return typeof v === "function" ? v.bind(target) : v;
      },
    }),
  };
}

/** The session's logits equal those of a fresh model fed the transcript (minus unfed text) in one forward. */
async function assertStateIsTranscript(s: ChatSession, model: Model, tok: Tokenizer, what: string): Promise<void> {
  const fedText = s.history.slice(0, s.history.length - s.pending.length);
  const fresh = await model.forward(tok.encode(fedText), model.initState());
  const c = compare(s.logits!, fresh, LOGIT_TOL, LOGIT_TOL);
  assert.ok(c.ok, `${what}: logits differ from a fresh forward of the transcript (max ${c.maxAbs})`);
}

async function replPair(session: ChatSession) {
  let out = "";
  const repl = new ChatRepl(session, (t) => { out += t; });
  return { repl, take: () => { const o = out; out = ""; return o; } };
}

test("message cleaning and the official World/G1 format", () => {
  assert.equal(cleanMessage("  Hi\r\n\r\n\r\nthere\n\n\nyou \t"), "Hi\nthere\nyou");
  assert.equal(cleanMessage("a\r\nb"), "a\nb");
  // Python's strip() set: \x1c-\x1f and \x85 are whitespace, U+FEFF is not (unlike JS trim()).
  assert.equal(cleanMessage("\x1c\x85x\x1f"), "x");
  assert.equal(cleanMessage("\ufeffx"), "\ufeffx");
  assert.equal(formatConversation("Be brief.", [{ user: "Hi", assistant: " Hello." }, { user: "Bye" }]),
    "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:");
});

test("two turns with a system line: the fed token stream is encode(official transcript), logits match one forward", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const finishes = new Set<string>();
  // With a mild push towards "\n" (byte 10) the replies end at "\n\n"; without it they run to max tokens.
  for (const bias of [2, 0]) {
    const { model, fed } = spy(m.model);
    const s = await ChatSession.start(model, m.tok, {
      settings: settings({ maxTokens: 40, penalties: { logitBias: new Map([[NEWLINE, bias]]) } }), seed: 0, system: "  You are\r\n\r\nhelpful. ",
    });
    const r1 = (await s.send("Hi!\r\n\r\n\r\nWho are you?  "))!;
    const r2 = (await s.send("Tell me more."))!;
    finishes.add(r1.finishReason).add(r2.finishReason);
    // A reply that stopped did so at "\n\n" (no other stops here): the separator is the model's own.
    const end2 = r2.finishReason === "stop" ? SEP : "";
    const want = "System: You are\nhelpful.\n\nUser: Hi!\nWho are you?\n\nAssistant:" + r1.text + SEP + "User: Tell me more.\n\nAssistant:" + r2.text + end2;
    assert.equal(s.history, want);
    assert.equal(s.pending, "");
    assert.deepEqual(fed, m.tok.encode(want), `bias ${bias}: the tokens fed are exactly the transcript, each once`);
    await assertStateIsTranscript(s, m.model, m.tok, `bias ${bias}`);
  }
  assert.deepEqual([...finishes].sort(), ["length", "stop"], "both ways a reply ends were exercised");
});

/** A fake model that predicts from a script and records the tokens behind each state (in the state itself). */
const SCRIPT_CAPACITY = 4096;
const FORCED_LOGIT = 50;
function scriptedModel(tok: Tokenizer, replies: number[][], onStep?: (token: number) => void): Model {
  const seen = (s: State) => { const a = s.layers[0].tokens; return Array.from(a.subarray(1, 1 + a[0])); };
  const push = (s: State, token: number) => { const a = s.layers[0].tokens; a[1 + a[0]] = token; a[0]++; };
  const predict = (s: State) => {
    const text = tok.decode(seen(s));
    const turns = text.split("Assistant:");
    const out = new Float32Array(tok.vocabSize);
    const reply = replies[turns.length - 2] ?? [];
    const sofar = turns[turns.length - 1];
    let j = 0;
    while (j < reply.length && tok.decode(reply.slice(0, j)) !== sofar) j++;
    out[reply[j] ?? 0] = FORCED_LOGIT;
    return out;
  };
  return {
    config: { version: "7", nLayer: 1, nEmbd: 1, nHead: 1, headSize: 1, vocabSize: tok.vocabSize, dimFfn: 1, dimAtt: 1 },
    backend: referenceBackend, fingerprint: "scripted",
    initState: () => new State("7", [{ tokens: new Float32Array(SCRIPT_CAPACITY) }]),
    useTimeState: () => { throw new Error("scripted model has no time_state"); },
    step: async (token, s) => { push(s, token); onStep?.(token); return predict(s); },
    forward: async (tokens, s) => { for (const x of tokens) push(s, x); return predict(s); },
    stepBatch: async (tokens, states) => {
      const out = new Float32Array(tokens.length * tok.vocabSize);
      tokens.forEach((x, b) => { push(states[b], x); out.set(predict(states[b]), b * tok.vocabSize); });
      return out;
    },
  };
}

test("World tokens between turns: \\n\\n kept, an overshooting token re-fed as text, token 0, max tokens, Ctrl-C", async (t) => {
  const vocab = sharedPath(t, "tokenizers", "rwkv_vocab_v20230424.txt");
  if (!vocab) return;
  const tok = loadTokenizer({ kind: "world", path: vocab });
  const id = (s: string) => { const ids = tok.encode(s); assert.equal(ids.length, 1, s); return ids[0]; };
  const enc = (s: string) => tok.encode(s);
  let controller = new AbortController();
  const replies = [
    [...enc(" Hello there."), id("\n\n")], // the model writes the separator: its tokens are kept
    [...enc(" Sure"), id("\n\n ")], // runs past the separator: back to the reply's start, text owed
    [...enc(" Bye"), 0], // end of text: the next turn brings "\n\n"
    [...enc(" Yes."), id(" \n\n")], // a space glued to the separator: still exactly reply + "\n\n"
    Array<number>(40).fill(id(" la")), // cut at max tokens
    [...enc(" One"), id("\n"), ...enc(" two")], // Ctrl-C right after "\n", which was held back as a possible "\n\n"
    [...enc(" Done."), id("\n\n")],
  ];
  const model = scriptedModel(tok, replies, (token) => { if (token === id("\n")) controller.abort(); });
  const s = await ChatSession.start(model, tok, { settings: settings({ ...GREEDY, maxTokens: 12 }), system: "Be brief." });
  const behind = () => { const a = s.state.layers[0].tokens; return Array.from(a.subarray(1, 1 + a[0])); };
  const check = (what: string) => assert.deepEqual(behind(), enc(s.history.slice(0, s.history.length - s.pending.length)), what);

  const r = [];
  r.push(await s.send("Hi"));
  assert.deepEqual([r[0]!.text, r[0]!.finishReason, s.pending], [" Hello there.", "stop", ""]);
  check("1");
  r.push(await s.send("Ok?"));
  assert.deepEqual([r[1]!.text, s.pending], [" Sure", " Sure\n\n"]);
  check("2: the state stops at 'Assistant:'");
  r.push(await s.send("Go"));
  assert.deepEqual([r[2]!.text, r[2]!.finishReason, s.pending], [" Bye", "stop", ""]);
  check("3");
  r.push(await s.send("Really?"));
  assert.deepEqual([r[3]!.text, s.pending], [" Yes. ", ""]);
  check("4");
  r.push(await s.send("Sing"));
  assert.deepEqual([r[4]!.finishReason, r[4]!.tokens], ["length", 12]);
  check("5");
  controller = new AbortController();
  r.push(await s.send("Count", { signal: controller.signal }));
  assert.deepEqual([r[5]!.text, r[5]!.finishReason, s.pending], [" One", "cancelled", " One"]);
  check("6");
  r.push(await s.send("End"));
  const want = "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello there.\n\nUser: Ok?\n\nAssistant: Sure\n\nUser: Go\n\nAssistant: Bye" +
    "\n\nUser: Really?\n\nAssistant: Yes. \n\nUser: Sing\n\nAssistant:" + " la".repeat(12) + "\n\nUser: Count\n\nAssistant: One" +
    "\n\nUser: End\n\nAssistant: Done.\n\n";
  assert.equal(s.history, want);
  assert.deepEqual(behind(), enc(want), "the whole stream equals encode(transcript)");
});

test("/regen: a new reply from the state before the last one; greedy repeats it, sampling continues the random stream", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const g = await ChatSession.start(m.model, m.tok, { settings: settings({ ...GREEDY, maxTokens: 20 }) });
  await assert.rejects(g.regenerate(), /\/regen: no reply to regenerate yet/);
  const first = await g.send("Hello");
  const before = g.history;
  const again = await g.regenerate();
  assert.equal(again.text, first!.text, "greedy: same reply");
  assert.equal(g.history, before);
  await assertStateIsTranscript(g, m.model, m.tok, "greedy regen");

  const runs = [];
  for (let k = 0; k < 2; k++) {
    const s = await ChatSession.start(m.model, m.tok, { settings: settings({ maxTokens: 25 }), seed: 11, system: "Hi." });
    const r1 = (await s.send("Tell me a story."))!;
    const r2 = await s.regenerate();
    const r3 = await s.regenerate();
    assert.equal(s.history, "System: Hi.\n\nUser: Tell me a story.\n\nAssistant:" + r3.text + (r3.finishReason === "stop" ? SEP : ""));
    await assertStateIsTranscript(s, m.model, m.tok, "sampled regen");
    const r4 = await s.send("More.");
    assert.ok(s.history.includes(r3.text + SEP + "User: More.\n\nAssistant:" + r4!.text), "the discarded replies are gone");
    runs.push([r1.text, r2.text, r3.text, r4!.text]);
  }
  assert.deepEqual(runs[0], runs[1], "deterministic for a seed");
  assert.notEqual(runs[0][1], runs[0][0], "the random stream is not rewound, so a sampled reply changes");
  assert.notEqual(runs[0][2], runs[0][1]);
});

test("/set changes sampling settings all or nothing; bad values print one line and keep the old ones", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const s = await ChatSession.start(m.model, m.tok, { settings: settings() });
  const { repl, take } = await replPair(s);
  await repl.handleLine("/set");
  assert.equal(take(), "(temperature=1 top_p=0.85 top_k=3 min_p=0 presence=0.2 frequency=0.2 decay=0.996 max_tokens=30)\n");
  await repl.handleLine("/set temperature=0.7 top_p=0.5 top_k=10 min_p=0.05 presence=0.1 frequency=-0.3 decay=0.99 max_tokens=7");
  const changed = "(temperature=0.7 top_p=0.5 top_k=10 min_p=0.05 presence=0.1 frequency=-0.3 decay=0.99 max_tokens=7)\n";
  assert.equal(take(), changed);
  for (const [line, re] of [
    ["/set top_p=2", /^error: top_p: must be a number in \[0, 1\], got "2"\n$/],
    ["/set temperature=-1", /^error: temperature: must be a number in \[0, 100\]/],
    ["/set temperature=abc", /^error: temperature: must be a number, got "abc"/],
    ["/set top_k=1.5", /^error: top_k: must be an integer >= 0/],
    ["/set max_tokens=0", /^error: max_tokens: must be a positive integer/],
    ["/set decay=1.5", /^error: decay: must be a number in \[0, 1\]/],
    ["/set presence=", /^error: presence: must be a number/],
    ["/set top_k=5 banana=3", /^error: \/set: unknown setting "banana"/],
    ["/set top_k", /^error: \/set: expected name=value, got "top_k"/],
    ["/set seed=1.5", /^error: seed: must be an integer/],
  ] as const) {
    await repl.handleLine(line);
    assert.match(take(), re, line);
    await repl.handleLine("/set");
    assert.equal(take(), changed, `${line} changed nothing (all or nothing)`);
  }
  // The new settings are used: max_tokens=7 gives a reply of at most 7 tokens.
  const r = await s.send("Hi");
  assert.ok(r!.tokens <= 7);
  // seed=N restarts the random stream: two sessions reseeded alike sample alike.
  const texts = [];
  for (let k = 0; k < 2; k++) {
    const x = await ChatSession.start(m.model, m.tok, { settings: settings(), seed: k });
    x.set(["seed=42"]);
    texts.push((await x.send("Hi"))!.text);
  }
  assert.equal(texts[0], texts[1]);
  assert.throws(() => applySettings(settings(), ["temperature=Infinity"]), /temperature: must be a number/);
});

test("/save + /load continue exactly (chat and raw mode); foreign, missing and non-state files are refused", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const file = join(tmp, "conv.state");
  for (const raw of [false, true]) {
    const a = await ChatSession.start(m.model, m.tok, { settings: settings(), seed: 7, system: "Be kind.", raw });
    const ar = await replPair(a);
    await ar.repl.handleLine(raw ? "Once upon a time" : "Hello");
    await ar.repl.handleLine(`/save ${file}`);
    assert.match(ar.take(), new RegExp(`\\(saved \\d+ tokens of conversation to ${file.replace(/[.]/g, "\\.")}\\)\\n$`));
    assert.ok(existsSync(file));
    const next = raw ? "" : "And then?"; // raw: an empty line continues the text (penalties and rng carry on)
    const want = (await a.send(next))!.text;
    const wantHistory = a.history;

    // Another session (another seed, no system line, the other mode) picks the conversation up.
    const b = await ChatSession.start(m.model, m.tok, { settings: settings(), seed: 99, raw: !raw });
    const br = await replPair(b);
    await br.repl.handleLine(`/load ${file}`);
    assert.match(br.take(), new RegExp(`^\\(loaded .*conv\\.state: \\d+ tokens${raw ? ", raw mode" : ""}\\)\\n$`));
    assert.equal(b.raw, raw);
    const got = (await b.send(next))!.text;
    assert.equal(got, want, `${raw ? "raw" : "chat"}: same reply after save + load`);
    assert.equal(b.history, wantHistory);
    await assertStateIsTranscript(b, m.model, m.tok, "after load");
  }

  // A state of another model (v6 tiny, same vocabulary) is refused; the session goes on unchanged.
  const v6path = sharedPath(t, "rwkv.cpp", "tiny-rwkv-6v0-1m-FP32.bin");
  if (!v6path) return;
  const v6 = await ChatSession.start(await loadModel(v6path), m.tok, { settings: settings({ maxTokens: 5 }) });
  await v6.send("Hi");
  const foreign = join(tmp, "v6.state");
  await new ChatRepl(v6, () => {}).handleLine(`/save ${foreign}`);
  const s = await ChatSession.start(m.model, m.tok, { settings: settings({ maxTokens: 10 }), seed: 3 });
  const { repl, take } = await replPair(s);
  await repl.handleLine("Hi");
  take();
  const history = s.history;
  const truncated = join(tmp, "truncated.state");
  const bytes = readFileSync(file);
  writeFileSync(truncated, bytes.subarray(0, bytes.length - 5));
  for (const [line, re] of [
    [`/load ${foreign}`, /^error: .*v6\.state: state belongs to another model \(version 6, this model has 7\)\n$/],
    [`/load ${join(tmp, "missing.state")}`, /^error: .*missing\.state: no such file\n$/],
    [`/load ${m.path}`, /^error: .*\.bin: not an rwkv-ts state file/],
    [`/load ${truncated}`, /^error: .*truncated\.state: truncated state data/],
    ["/load", /^error: \/load: needs a file name\n$/],
    ["/save", /^error: \/save: needs a file name\n$/],
    [`/save ${join(tmp, "no", "such", "dir", "x.state")}`, /^error: .*x\.state: cannot write state file/],
    ["/frobnicate", /^error: \/frobnicate: unknown command/],
  ] as const) {
    assert.equal(await repl.handleLine(line), "continue");
    assert.match(take(), re, line);
    assert.equal(s.history, history, `${line} changed nothing`);
  }
  await repl.handleLine("Still there?");
  assert.match(take(), /^Assistant:.*\n$/s, "the session goes on");
  assert.equal(await repl.handleLine("/quit"), "quit");
});

test("raw mode appends text verbatim; /reset returns to the system line; Ctrl-C (interrupt) keeps what was shown", async (t) => {
  const m = await tiny(t);
  if (!m) return;
  const { model, fed } = spy(m.model);
  const s = await ChatSession.start(model, m.tok, { settings: settings({ maxTokens: 15 }), system: "Sys." });
  const { repl, take } = await replPair(s);
  const afterSystem = fed.length;
  await repl.handleLine("/raw");
  assert.match(take(), /raw mode/);
  await repl.handleLine("  The king\n\n ");
  const cont = take();
  assert.ok(!cont.startsWith("Assistant:"), "no framing in raw mode");
  const typed = m.tok.encode("  The king\n\n ");
  assert.deepEqual(fed.slice(afterSystem, afterSystem + typed.length), typed, "verbatim, not cleaned");
  assert.equal(s.history, "System: Sys.\n\n  The king\n\n " + cont.slice(0, -1));
  await repl.handleLine("/raw");
  await repl.handleLine("Hi");
  assert.ok(s.history.includes(cont.slice(0, -1) + "\n\nUser: Hi\n\nAssistant:"), "a chat turn after raw text is joined by \\n\\n");
  await repl.handleLine("/reset");
  assert.equal(take().split("\n").at(-2), "(back to the start)");
  assert.equal(s.history, "System: Sys.\n\n");
  assert.equal(await s.regenerate().catch((e: Error) => e.message), "/regen: no reply to regenerate yet");
  await assertStateIsTranscript(s, m.model, m.tok, "after reset");

  // Ctrl-C: the reply stops once some text has streamed; the session keeps exactly what was shown.
  s.set(["max_tokens=100000"]);
  let shown = "";
  const stopping = new ChatRepl(s, (text) => { shown += text; if (shown.length > 40) stopping.interrupt(); });
  const t0 = Date.now();
  await stopping.handleLine("Tell me everything.");
  assert.ok(Date.now() - t0 < 10_000, "stopped long before 100000 tokens");
  assert.match(shown, /\n\[reply stopped\]\n$/);
  const reply = shown.slice("Assistant:".length, shown.lastIndexOf("\n[reply stopped]"));
  assert.equal(s.history, "System: Sys.\n\nUser: Tell me everything.\n\nAssistant:" + reply);
  assert.equal(stopping.busy, false);
  await assertStateIsTranscript(s, m.model, m.tok, "after Ctrl-C");
  s.set(["max_tokens=5"]);
  const after = await s.send("Ok.");
  assert.ok(s.history.endsWith(reply + "\n\nUser: Ok.\n\nAssistant:" + after!.text));
});

function cli(args: string[], input = "") {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", input, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test("rwkv chat: startup errors are one line and a non-zero exit; piped input and --state-in of a saved conversation", (t) => {
  const m = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!m) return;
  for (const [args, code, re] of [
    [["chat", join(tmp, "nope.bin")], 1, /nope\.bin: no such file/],
    [["chat", m, "--top-p", "2"], 2, /--top-p must be a number in \[0, 1\]/],
    [["chat", m, "--bogus"], 2, /Unknown option '--bogus'/],
    [["chat", m, "--system", " \r\n "], 2, /--system is empty/],
    [["chat", m, "extra"], 2, /expected \[MODEL\], got .* extra/],
    [["chat", m, "--state-in", join(tmp, "none.state")], 1, /none\.state: no such file/],
  ] as const) {
    const r = cli([...args]);
    assert.equal(r.code, code, `${args.join(" ")}: ${r.err}`);
    assert.match(r.err, re);
    assert.doesNotMatch(r.err, /\n\s+at /);
  }
  const saved = join(tmp, "cli.state");
  const opts = ["--top-k", "3", "--max-tokens", "20", "--seed", "5"];
  const a = cli(["chat", m, ...opts, "--system", "Hi."], `Hello\n/save ${saved}\nHow are you?\n/quit\n`);
  assert.equal(a.code, 0, a.err);
  const replies = a.out.split("Assistant:").slice(1).map((x) => x.slice(0, x.indexOf("\n")));
  assert.equal(replies.length, 2, a.out);
  // Piped input ends (and readline closes) long before the replies are done: every line still runs.
  const b = cli(["chat", m, "--top-k", "3", "--max-tokens", "20", "--state-in", saved], "How are you?\n/set\n");
  assert.equal(b.code, 0, b.err);
  // Whether readline shows one more empty prompt before it sees the end of the input is timing.
  assert.match(b.out, /\(temperature=1 top_p=0\.85 top_k=3 .* max_tokens=20\)\n(User: )?\n$/);
  assert.equal(b.out.split("Assistant:")[1].split("\n")[0], replies[1], "the saved conversation continues exactly (end of input exits 0)");
  const sys = cli(["chat", m, "--state-in", saved, "--system", "x"]);
  assert.equal(sys.code, 2);
  assert.match(sys.err, /--system cannot be added to the conversation saved in/);
});

/* ------------------------------------------------------------------------------------------ */
/* A real terminal: `script` gives the CLI a pseudo-terminal (readline in raw mode, Ctrl-C as a key). */

const PTY_STEP_TIMEOUT_MS = 8_000;
/** Pause between keystroke batches, so each arrives as the program is ready for it. */
const KEY_DELAY_MS = 30;
/** CSI escape sequences (cursor moves, line clears) that readline writes around its prompt. */
const ANSI = new RegExp(`${String.fromCharCode(0x1b)}\\[[0-9;?]*[A-Za-z]`, "g");

const shellQuote = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;

class Terminal {
  private raw = "";
  private readonly exited: Promise<number | null>;
  private readonly child: ChildProcessWithoutNullStreams;

  constructor(args: string[]) {
    const command = [process.execPath, BIN, ...args].map(shellQuote).join(" ");
    // -q quiet, -f flush each write, -e return the child's exit code, -c the command; no typescript file.
    this.child = spawn("script", ["-qfec", command, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, TERM: "xterm" } });
    this.child.stdout.on("data", (d: Buffer) => { this.raw += d.toString("utf8"); });
    this.child.stderr.on("data", (d: Buffer) => { this.raw += d.toString("utf8"); });
    this.exited = new Promise((resolve) => this.child.on("exit", (code) => resolve(code)));
  }

  /** Screen text without escape sequences or carriage returns. */
  get text(): string { return this.raw.replace(ANSI, "").replaceAll("\r", ""); }

  async keys(s: string): Promise<void> {
    this.child.stdin.write(s);
    await new Promise((r) => setTimeout(r, KEY_DELAY_MS));
  }

  /** Waits until `re` matches the text after offset `from`; returns the offset just past the match. */
  async waitFor(re: RegExp, from: number, what: string): Promise<number> {
    const deadline = Date.now() + PTY_STEP_TIMEOUT_MS;
    for (;;) {
      const m = re.exec(this.text.slice(from));
      if (m) return from + m.index + m[0].length;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; screen so far:\n${this.text}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async exit(): Promise<number | null> {
    const timer = setTimeout(() => this.child.kill("SIGKILL"), PTY_STEP_TIMEOUT_MS);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }

  kill(): void { this.child.kill("SIGKILL"); }
}

function haveScript(t: TestContext): boolean {
  const r = spawnSync("script", ["--version"], { encoding: "utf8" });
  if (!r.error && r.status === 0) return true;
  if (process.env.CI === "true") throw new Error("util-linux `script` is needed for the pseudo-terminal test");
  t.skip("util-linux `script` not found: pseudo-terminal test skipped");
  return false;
}

test("rwkv chat in a pseudo-terminal: reply, /reset, /save, /load, Ctrl-C stops a reply, /quit exits 0", { timeout: 30_000 }, async (t) => {
  const m = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!m || !haveScript(t)) return;
  const file = join(tmp, "pty.state");
  const term = new Terminal(["chat", m, "--top-k", "3", "--max-tokens", "20", "--seed", "1", "--system", "Be helpful."]);
  try {
    let at = await term.waitFor(/User: $/, 0, "the first prompt");
    await term.keys("Hello there\r");
    at = await term.waitFor(/Assistant:[^]*\nUser: $/, at, "a reply and the next prompt");
    await term.keys("/reset\r");
    at = await term.waitFor(/\(back to the start\)\nUser: $/, at, "/reset");
    await term.keys(`/save ${file}\r`);
    at = await term.waitFor(/\(saved \d+ tokens of conversation to .*pty\.state\)\nUser: $/, at, "/save");
    assert.ok(existsSync(file));
    await term.keys(`/load ${file}\r`);
    at = await term.waitFor(/\(loaded .*pty\.state: \d+ tokens\)\nUser: $/, at, "/load");
    await term.keys("/set max_tokens=100000\r");
    at = await term.waitFor(/max_tokens=100000\)\nUser: $/, at, "/set");
    await term.keys("Tell me a very long story\r");
    at = await term.waitFor(/Assistant:[^]{30}/, at, "a long reply streaming");
    await term.keys("\x03");
    at = await term.waitFor(/\n\[reply stopped\]\nUser: $/, at, "the reply stopped by Ctrl-C, then the prompt");
    // Still alive and responsive after the Ctrl-C.
    await term.keys("/set max_tokens=5\r");
    await term.waitFor(/max_tokens=5\)\nUser: $/, at, "a command after Ctrl-C");
    await term.keys("/quit\r");
    assert.equal(await term.exit(), 0);
  } finally {
    term.kill();
  }

  // Ctrl-D while a reply streams stops it and exits.
  const d: Terminal = new Terminal(["chat", m, "--max-tokens", "100000", "--top-k", "3"]);
  try {
    const at = await d.waitFor(/User: $/, 0, "the prompt");
    await d.keys("Go on and on\r");
    await d.waitFor(/Assistant:[^]{30}/, at, "a long reply streaming");
    await d.keys("\x04");
    assert.equal(await d.exit(), 0, d.text);
    assert.match(d.text, /\[reply stopped\]/);
  } finally {
    d.kill();
  }

  // Ctrl-C on an empty prompt exits cleanly, as does Ctrl-D; Ctrl-C on a typed line only clears it.
  for (const [keys, what] of [["\x03", "Ctrl-C"], ["\x04", "Ctrl-D"], ["abc\x03\x03", "Ctrl-C twice"]] as const) {
    const x: Terminal = new Terminal(["chat", m, "--max-tokens", "5"]);
    try {
      await x.waitFor(/User: $/, 0, "the prompt");
      for (const k of keys) await x.keys(k);
      assert.equal(await x.exit(), 0, `${what}: ${x.text}`);
      if (what === "Ctrl-C twice") assert.match(x.text, /line cleared; Ctrl-C again/);
    } finally {
      x.kill();
    }
  }
});
