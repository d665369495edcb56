import { RwkvInputError } from "./errors.js";
import { type FinishReason, generate, prefill } from "./generate.js";
import type { Model } from "./model/model.js";
import type { State } from "./model/state.js";
import { type PenaltyOptions, Penalties, Rng, type SamplerOptions, validateSamplerOptions } from "./sampling.js";
import type { Tokenizer } from "./tokenizer/types.js";

/*
 * A chat conversation over one RWKV state, in the official World / G1 format (SPEC §10.3):
 *
 *   "System: {system}\n\n" (optional) + "User: {msg}\n\nAssistant:{reply}" + "\n\n" + "User: ...",
 *
 * messages cleaned as ChatRWKV does. The state IS the history (SPEC §10.4): every turn feeds only
 * the new text; nothing already behind the state is processed again.
 *
 * Token stream between turns. A reply normally ends when the model itself writes "\n\n". Like the
 * official chat.py (which runs every sampled token through the model before looking for "\n\n"), the
 * model's own tokens are kept, the one that completed "\n\n" included, so the state covers
 * "…{reply}\n\n" and the next turn feeds just encode("User: {msg}\n\nAssistant:"). Two other cases
 * keep the token stream equal to the text "…{reply}\n\nUser: …":
 *   - the reply ended without "\n\n" (max tokens, token 0, Ctrl-C): the reply's tokens are fed and
 *     the next turn feeds encode("\n\nUser: {msg}\n\nAssistant:") — the separator joins the turns;
 *   - the generated tokens do not spell exactly the reply (+ "\n\n"): a World token such as
 *     "\n\n " or "\n\n\n" ran past the separator, a --stop string was cut off, or Ctrl-C dropped text
 *     held back as a possible start of "\n\n". Then the state goes back to where the reply started
 *     and the reply's text (+ "\n\n") becomes `pending`, fed in front of the next turn's text. This
 *     re-runs at most one reply (never older history) and keeps the state equal to what was shown.
 * With the bytes tokenizer (one token per byte) the fed stream is therefore exactly
 * encode(transcript); with World it is too whenever the model chose the canonical tokens.
 *
 * Raw mode drops the User/Assistant framing: the input is appended verbatim and the model continues
 * it; only token 0 (World/20B) and the --stop strings end a continuation.
 *
 * Randomness: one Rng runs through the whole session (saved with /save). Repetition penalties start
 * empty for every chat reply, as chat.py's `occurrence = {}` does; raw continuations carry them on,
 * like `generate --state-in`.
 */

/** Joins turns; also what ends a reply. */
export const TURN_SEPARATOR = "\n\n";
/** World / 20B end-of-text token; byte-level models (vocab 256) have no such token (id 0 is byte 0). */
export const END_OF_TEXT_TOKEN = 0;
const CHAT_EXTRA_VERSION = 1;

/** Python's str.isspace() set (str.strip()), which differs from JS trim(): \x1c-\x1f and \x85 yes, \uFEFF no. */
const PY_SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_STRIP = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, "g");

/** ChatRWKV's message cleaning: `re.sub(r"\n{2,}", "\n", msg.replace("\r\n","\n")).strip()`. */
export function cleanMessage(msg: string): string {
  return msg.replaceAll("\r\n", "\n").replace(/\n{2,}/g, "\n").replace(PY_STRIP, "");
}

/** The system line (already cleaned text) with its separator. */
export function systemLine(text: string): string {
  return `System: ${text}${TURN_SEPARATOR}`;
}

/** One user turn up to the point where the model answers (no trailing space after "Assistant:"). */
export function userTurn(msg: string): string {
  return `User: ${msg}${TURN_SEPARATOR}Assistant:`;
}

/** The whole official transcript: what the state of a conversation with these turns has seen. */
export function formatConversation(system: string | undefined, turns: ReadonlyArray<{ user: string; assistant?: string }>): string {
  return (system === undefined ? "" : systemLine(system)) + turns.map((t) => userTurn(t.user) + (t.assistant ?? "")).join(TURN_SEPARATOR);
}

/** What a reply is sampled with (node's SamplingSettings fits, minus the seed). */
export interface ChatSettings {
  maxTokens: number;
  sampler: SamplerOptions;
  penalties: PenaltyOptions;
  stop: readonly string[];
  stopTokens: readonly number[];
  chunkLen: number;
}

/* The official PIPELINE_ARGS defaults (as in sampling.ts), shown by /set when a field is unset. */
const SHOWN_DEFAULTS = { temperature: 1.0, topP: 0.85, topK: 0, minP: 0, presence: 0.2, frequency: 0.2, decay: 0.996 };
/** --temperature and --presence/frequency-penalty accept the same ranges on the command line. */
const MAX_TEMPERATURE = 100;
const MAX_ABS_PENALTY = 100;

type Assign = (s: ChatSettings, value: number) => void;
interface Settable { readonly check: (v: number) => string | null; readonly assign: Assign }

const inRange = (lo: number, hi: number) => (v: number) => (v >= lo && v <= hi ? null : `must be a number in [${lo}, ${hi}]`);
const nonNegInt = (v: number) => (Number.isSafeInteger(v) && v >= 0 ? null : "must be an integer >= 0 (0 = off)");
const positiveInt = (v: number) => (Number.isSafeInteger(v) && v > 0 ? null : "must be a positive integer");

/** The names /set accepts, with their checks (the same ranges as the command-line flags). */
const SETTABLE: Readonly<Record<string, Settable>> = {
  temperature: { check: inRange(0, MAX_TEMPERATURE), assign: (s, v) => { s.sampler = { ...s.sampler, temperature: v }; } },
  top_p: { check: inRange(0, 1), assign: (s, v) => { s.sampler = { ...s.sampler, topP: v }; } },
  top_k: { check: nonNegInt, assign: (s, v) => { s.sampler = { ...s.sampler, topK: v }; } },
  min_p: { check: inRange(0, 1), assign: (s, v) => { s.sampler = { ...s.sampler, minP: v }; } },
  presence: { check: inRange(-MAX_ABS_PENALTY, MAX_ABS_PENALTY), assign: (s, v) => { s.penalties = { ...s.penalties, presencePenalty: v }; } },
  frequency: { check: inRange(-MAX_ABS_PENALTY, MAX_ABS_PENALTY), assign: (s, v) => { s.penalties = { ...s.penalties, frequencyPenalty: v }; } },
  decay: { check: inRange(0, 1), assign: (s, v) => { s.penalties = { ...s.penalties, penaltyDecay: v }; } },
  max_tokens: { check: positiveInt, assign: (s, v) => { s.maxTokens = v; } },
};
/** Not a sampler field: reseeds the session's random stream. */
const SEED_NAME = "seed";
export const SETTABLE_NAMES: readonly string[] = [...Object.keys(SETTABLE), SEED_NAME];

export function describeSettings(s: ChatSettings): string {
  const d = SHOWN_DEFAULTS;
  return `temperature=${s.sampler.temperature ?? d.temperature} top_p=${s.sampler.topP ?? d.topP} top_k=${s.sampler.topK ?? d.topK} ` +
    `min_p=${s.sampler.minP ?? d.minP} presence=${s.penalties.presencePenalty ?? d.presence} ` +
    `frequency=${s.penalties.frequencyPenalty ?? d.frequency} decay=${s.penalties.penaltyDecay ?? d.decay} max_tokens=${s.maxTokens}`;
}

/**
 * Applies "name=value" assignments to a copy of `settings`, all or nothing: any bad name or value
 * throws RwkvInputError and nothing changes. Returns the new settings and a new seed if one was set.
 */
export function applySettings(settings: ChatSettings, assignments: readonly string[]): { settings: ChatSettings; seed?: number } {
  const next: ChatSettings = { ...settings, sampler: { ...settings.sampler }, penalties: { ...settings.penalties } };
  let seed: number | undefined;
  for (const a of assignments) {
    const m = /^([a-z_-]+)=(.*)$/i.exec(a);
    if (!m) throw new RwkvInputError("/set", `expected name=value, got "${a}" (names: ${SETTABLE_NAMES.join(", ")})`);
    const name = m[1].toLowerCase().replaceAll("-", "_");
    const text = m[2].trim();
    const value = text === "" ? NaN : Number(text);
    if (name === SEED_NAME) {
      if (!Number.isSafeInteger(value)) throw new RwkvInputError(name, `must be an integer, got "${m[2]}"`);
      seed = value;
      continue;
    }
    const entry = SETTABLE[name];
    if (!entry) throw new RwkvInputError("/set", `unknown setting "${m[1]}" (names: ${SETTABLE_NAMES.join(", ")})`);
    const problem = Number.isFinite(value) ? entry.check(value) : "must be a number";
    if (problem) throw new RwkvInputError(name, `${problem}, got "${m[2]}"`);
    entry.assign(next, value);
  }
  // The checks above mirror these; running the real validators keeps the two from drifting apart.
  validateSamplerOptions(next.sampler);
  new Penalties(next.penalties, () => "");
  return seed === undefined ? { settings: next } : { settings: next, seed };
}

type RngJson = ReturnType<Rng["toJSON"]>;
type PenaltyCounts = ReturnType<Penalties["toJSON"]>;
const NO_COUNTS: PenaltyCounts = { occurrence: [] };

/** What /save puts in the state file's `extra` (rng and penalties where generate --state-in finds them too). */
export interface ChatExtra {
  chat: { version: number; history: string; pending: string; raw: boolean };
  rng: RngJson;
  penalties: PenaltyCounts;
}

/**
 * The chat part of a state file's `extra`: null when the file has none (a generate --state-out file),
 * RwkvInputError when it is malformed.
 */
export function parseChatExtra(extra: unknown, source: string): ChatExtra["chat"] | null {
  if (typeof extra !== "object" || extra === null || !("chat" in extra)) return null;
  const c: unknown = extra.chat;
  if (typeof c !== "object" || c === null || !("version" in c) || !("history" in c) || !("pending" in c) || !("raw" in c)) {
    throw new RwkvInputError(source, "malformed conversation in state file");
  }
  const { version: formatVersion, history, pending, raw } = c;
  if (formatVersion !== CHAT_EXTRA_VERSION) throw new RwkvInputError(source, `conversation format ${String(formatVersion)} is not supported (this build reads ${CHAT_EXTRA_VERSION})`);
  if (typeof history !== "string" || typeof pending !== "string" || typeof raw !== "boolean" || !history.endsWith(pending)) {
    throw new RwkvInputError(source, "malformed conversation in state file");
  }
  return { version: formatVersion, history, pending, raw };
}

/** The saved random stream, if any (Rng.fromJSON checks it). */
function rngOf(extra: unknown, source: string): Rng | null {
  if (typeof extra !== "object" || extra === null || !("rng" in extra)) return null;
  return inFile(source, () => Rng.fromJSON(extra.rng as RngJson));
}

/** The saved penalty counts, checked and copied by Penalties.fromJSON (empty when none were saved). */
function countsOf(extra: unknown, options: PenaltyOptions, decode: (ids: readonly number[]) => string, source: string): PenaltyCounts {
  if (typeof extra !== "object" || extra === null || !("penalties" in extra)) return NO_COUNTS;
  return inFile(source, () => Penalties.fromJSON(options, decode, extra.penalties as PenaltyCounts).toJSON());
}

/** Runs a check on a file's contents; its error message gets the file's name in front. */
function inFile<T>(source: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof RwkvInputError) throw new RwkvInputError(source, e.message);
    throw e;
  }
}

/** A point in the conversation: the state, and the text behind it plus text not yet fed. */
interface Point {
  readonly state: State;
  /** Next-token logits of `state`; null only before anything was fed. */
  readonly logits: Float32Array | null;
  /** Tokens behind `state` since the model's initial state. */
  readonly tokens: number;
  /** The whole transcript, `pending` included. */
  readonly history: string;
  /** The tail of `history` not yet fed: fed in front of the next input. */
  readonly pending: string;
  readonly penalties: PenaltyCounts;
}

/** The point right before a reply (after the user's input), kept for /regen. */
interface PreReply extends Point { readonly raw: boolean }

/** A state to start from (a state file's contents). */
export interface ChatStart {
  readonly state: State;
  readonly logits: Float32Array | null;
  readonly tokens: number;
  readonly extra?: unknown;
  /** Names the file in messages. */
  readonly source: string;
}

export interface ChatStartOptions {
  settings: ChatSettings;
  /** A fresh random stream; when absent, the start file's saved stream, else seed 0. */
  seed?: number;
  /** Cleaned and fed as "System: …\n\n" at startup; part of the point /reset returns to. */
  system?: string;
  /** Initial mode; default: the start file's, else chat. */
  raw?: boolean;
  from?: ChatStart;
  signal?: AbortSignal;
}

export interface ReplyOptions {
  /** Receives the reply text as it is generated. */
  onText?: (text: string) => void;
  /** Aborting ends the reply (or the feeding of the input) early; what was shown is kept. */
  signal?: AbortSignal;
}

export interface Reply {
  readonly text: string;
  /** "cancelled" also when the signal fired while the input was still being fed (then nothing changed). */
  readonly finishReason: FinishReason;
  readonly tokens: number;
}

const utf8 = (s: string) => new TextEncoder().encode(s);

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function bytesStartWith(a: Uint8Array, prefix: Uint8Array): boolean {
  return a.length >= prefix.length && prefix.every((x, i) => x === a[i]);
}

export class ChatSession {
  /** Chat (User/Assistant framing) or raw continuation. */
  raw: boolean;
  private settingsNow: ChatSettings;
  private rng: Rng;
  private now: Point;
  private readonly initial: Point;
  private pre: PreReply | null = null;
  private readonly decode = (ids: readonly number[]) => this.tokenizer.decode(ids);

  private constructor(readonly model: Model, readonly tokenizer: Tokenizer, settings: ChatSettings, rng: Rng, raw: boolean, start: Point) {
    this.settingsNow = settings;
    this.rng = rng;
    this.raw = raw;
    this.now = start;
    this.initial = start;
  }

  /** Builds a session: from `from` (a saved state or conversation) or the model's initial state, then the system line. */
  static async start(model: Model, tokenizer: Tokenizer, options: ChatStartOptions): Promise<ChatSession> {
    applySettings(options.settings, []); // validates
    const from = options.from;
    const chat = from ? parseChatExtra(from.extra, from.source) : null;
    const savedRng = from ? rngOf(from.extra, from.source) : null;
    // Like generate --state-in: continue the saved random stream unless a seed was asked for.
    const rng = options.seed !== undefined || !savedRng ? new Rng(options.seed ?? 0) : savedRng;
    const counts = from ? countsOf(from.extra, options.settings.penalties, (ids) => tokenizer.decode(ids), from.source) : NO_COUNTS;
    let point: Point = from
      ? { state: from.state, logits: from.logits, tokens: from.tokens, history: chat?.history ?? "", pending: chat?.pending ?? "", penalties: counts }
      : { state: model.initState(), logits: null, tokens: 0, history: "", pending: "", penalties: NO_COUNTS };
    if (options.system !== undefined) {
      const system = cleanMessage(options.system);
      if (system === "") throw new RwkvInputError("system", "is empty");
      const fed = await ChatSession.feed(model, tokenizer, point, systemLine(system), options.settings.chunkLen, options.signal);
      if (!fed) throw new RwkvInputError("system", "cancelled while being read");
      point = fed;
    }
    return new ChatSession(model, tokenizer, options.settings, rng, options.raw ?? chat?.raw ?? false, point);
  }

  /** Feeds `point.pending + text` from `point`'s state (not modified); null when cancelled. */
  private static async feed(model: Model, tokenizer: Tokenizer, point: Point, text: string, chunkLen: number, signal?: AbortSignal): Promise<Point | null> {
    const tokens = tokenizer.encode(point.pending + text);
    const state = point.state.clone();
    const logits = tokens.length > 0 ? await prefill(model, tokens, state, chunkLen, signal) : point.logits;
    if (tokens.length > 0 && logits === null) return null;
    return { ...point, state, logits, tokens: point.tokens + tokens.length, history: point.history + text, pending: "" };
  }

  get settings(): ChatSettings { return this.settingsNow; }
  /** The transcript so far (what the state has seen, plus `pending`). */
  get history(): string { return this.now.history; }
  /** Text of the transcript not yet fed to the state (see the header comment). */
  get pending(): string { return this.now.pending; }
  /** A copy of the current state and its next-token logits. */
  get state(): State { return this.now.state.clone(); }
  get logits(): Float32Array | null { return this.now.logits?.slice() ?? null; }
  get tokens(): number { return this.now.tokens; }
  /** The mode /regen replies in: that of the reply it replaces (null when there is none). */
  get regenerateRaw(): boolean | null { return this.pre?.raw ?? null; }

  /**
   * One turn: in chat mode the message is cleaned and framed ("\n\n" first if the transcript does
   * not end with it), in raw mode appended verbatim (empty = continue from where the text stops).
   * Returns null for an empty chat message (nothing to do).
   */
  async send(input: string, options: ReplyOptions = {}): Promise<Reply | null> {
    let text: string;
    if (this.raw) {
      text = input;
      if (text === "" && this.now.pending === "" && this.now.logits === null) throw new RwkvInputError("input", "nothing to continue yet: type some text");
    } else {
      const msg = cleanMessage(input);
      if (msg === "") return null;
      const h = this.now.history;
      // An unknown history (a plain state file) counts as text that needs the separator.
      const joined = h === "" ? this.now.tokens === 0 : h.endsWith(TURN_SEPARATOR);
      text = (joined ? "" : TURN_SEPARATOR) + userTurn(msg);
    }
    const fed = await ChatSession.feed(this.model, this.tokenizer, this.now, text, this.settingsNow.chunkLen, options.signal);
    if (!fed) return { text: "", finishReason: "cancelled", tokens: 0 };
    this.pre = { ...fed, raw: this.raw };
    return this.reply(this.pre, options);
  }

  /**
   * chat.py's "+": the last reply is discarded and a new one sampled from the state right before it
   * (same mode, the penalty counts of that moment). The random stream is NOT rewound, so a sampled
   * reply comes out differently; greedy decoding gives the same reply again.
   */
  async regenerate(options: ReplyOptions = {}): Promise<Reply> {
    if (!this.pre) throw new RwkvInputError("/regen", "no reply to regenerate yet");
    return this.reply(this.pre, options);
  }

  private async reply(pre: PreReply, options: ReplyOptions): Promise<Reply> {
    const s = this.settingsNow;
    const penalties = Penalties.fromJSON(s.penalties, this.decode, pre.raw ? pre.penalties : NO_COUNTS);
    const stopTokens = this.tokenizer.name === "bytes" ? s.stopTokens : [END_OF_TEXT_TOKEN, ...s.stopTokens];
    const it = generate(this.model, this.tokenizer, { prompt: [], state: pre.state, logits: pre.logits ?? undefined }, {
      maxTokens: s.maxTokens, sampler: s.sampler, rng: this.rng, penaltyState: penalties,
      stop: pre.raw ? s.stop : [TURN_SEPARATOR, ...s.stop], stopTokens, signal: options.signal, chunkLen: s.chunkLen,
    });
    let r = await it.next();
    for (; !r.done; r = await it.next()) if (r.value.text) options.onText?.(r.value.text);
    const res = r.value;

    // Which text the state must cover past `pre`: the reply, plus the separator if the model wrote it.
    const generated = this.tokenizer.decodeBytes(res.tokens);
    const withSeparator = utf8(res.text + TURN_SEPARATOR);
    const endedAtSeparator = !pre.raw && res.finishReason === "stop" && bytesStartWith(generated, withSeparator);
    const covered = endedAtSeparator ? res.text + TURN_SEPARATOR : res.text;
    const history = pre.history + covered;
    const counts = penalties.toJSON();
    if (bytesEqual(generated, endedAtSeparator ? withSeparator : utf8(res.text))) {
      // The model's tokens spell exactly that text: keep them (chat.py feeds its own tokens too).
      const logits = res.unfed.length > 0 ? await this.model.forward(res.unfed, res.state) : res.logits;
      this.now = { state: res.state, logits, tokens: pre.tokens + res.tokens.length, history, pending: "", penalties: counts };
    } else {
      // The tokens say more (or other) than the transcript: go back to `pre` and owe the text.
      this.now = { ...pre, history, pending: covered, penalties: counts };
    }
    return { text: res.text, finishReason: res.finishReason, tokens: res.tokens.length };
  }

  /** Back to the starting point (the system line included); the random stream runs on. */
  reset(): void {
    this.now = this.initial;
    this.pre = null;
  }

  /** `/set name=value ...`: all or nothing (throws RwkvInputError, keeping the old settings). */
  set(assignments: readonly string[]): void {
    const { settings, seed } = applySettings(this.settingsNow, assignments);
    this.settingsNow = settings;
    if (seed !== undefined) this.rng = new Rng(seed);
  }

  /** What /save writes: the state, its logits, the token count and the conversation in `extra`. */
  snapshot(): { state: State; logits: Float32Array | null; tokens: number; extra: ChatExtra } {
    const n = this.now;
    return {
      state: n.state.clone(), logits: n.logits, tokens: n.tokens,
      extra: { chat: { version: CHAT_EXTRA_VERSION, history: n.history, pending: n.pending, raw: this.raw }, rng: this.rng.toJSON(), penalties: n.penalties },
    };
  }

  /**
   * /load: continue a saved conversation exactly (its text, random stream, penalty counts and mode).
   * A plain state file (no conversation) continues from its state with an unknown history. The
   * file must already be checked to belong to this model; nothing changes if its extra is malformed.
   */
  restore(file: ChatStart): void {
    const chat = parseChatExtra(file.extra, file.source);
    // Everything is checked before anything changes.
    const rng = rngOf(file.extra, file.source) ?? this.rng;
    const counts = countsOf(file.extra, this.settingsNow.penalties, this.decode, file.source);
    this.rng = rng;
    this.raw = chat?.raw ?? this.raw;
    this.now = { state: file.state.clone(), logits: file.logits, tokens: file.tokens, history: chat?.history ?? "", pending: chat?.pending ?? "", penalties: counts };
    this.pre = null;
  }
}
