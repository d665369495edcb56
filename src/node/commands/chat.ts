import { closeSync, openSync, readSync } from "node:fs";
import { createInterface } from "node:readline";
import { ChatSession, type ChatStart, cleanMessage, describeSettings, parseChatExtra, type Reply, type ReplyOptions, SETTABLE_NAMES } from "../../core/chat.js";
import { RwkvInputError } from "../../core/errors.js";
import type { Model } from "../../core/model/model.js";
import type { StateFile } from "../../core/state-file.js";
import { type CliIO, parse, str, UsageError, modelLoadOptions } from "../cli-util.js";
import { loadModel } from "../load.js";
import { type CliConfig, modelPathFor } from "../model-arg.js";
import { loadStartState, saveStateFile } from "../state-io.js";
import { SAMPLING_OPTIONS, samplingSettings, tokenizerFor } from "./generate.js";

/** Replies end at "\n\n" long before this in practice; generate's 100 would cut many answers short. */
const CHAT_DEFAULT_MAX_TOKENS = 500;

export const CHAT_USAGE = `chat [MODEL] [--system TEXT] [--raw]    interactive chat on stdin/stdout (World/G1 "User:/Assistant:"
      format; type /help inside); takes the sampling options of generate (--max-tokens default ${CHAT_DEFAULT_MAX_TOKENS})
      --system TEXT         a "System: TEXT" line before the first turn (kept by /reset)
      --raw                 start in raw continuation mode (no User/Assistant framing)
      --state-in FILE       start from a conversation saved with /save, a state file, or a state-tuning checkpoint`;

export const CHAT_HELP = `commands (anything else is your message; start it with // to send a message beginning with /):
  /help            this list
  /reset           back to the start (the --system line and --state-in state included)
  /regen           discard the last reply and sample a new one from the state before it
  /set [name=value ...]   show or change sampling settings, all or nothing:
                   ${SETTABLE_NAMES.join(", ")}
  /raw             toggle raw continuation mode (your text is appended verbatim; an empty line continues)
  /save FILE       save the conversation (state, text, random stream, penalties)
  /load FILE       continue a conversation saved with /save (it must come from this model)
  /quit, /exit     exit (also Ctrl-D, or Ctrl-C on an empty prompt)
Ctrl-C while a reply is streaming stops that reply.
`;

const CHAT_PROMPT = "User: ";
const RAW_PROMPT = "raw> ";
/** Shown before a chat reply so the screen reads like the transcript the model sees. */
const ASSISTANT_LABEL = "Assistant:";
const STOPPED_NOTE = "[reply stopped]";
const EXIT_HINT = "(line cleared; Ctrl-C again on the empty line, Ctrl-D or /quit to exit)";
/** state-file.ts's magic: /load takes only state files, never a checkpoint (which would change the model). */
const STATE_FILE_MAGIC = "RWKVSTF1";

export type LineOutcome = "continue" | "quit";

/**
 * The interactive chat without a terminal: one line in, output through `write`. Runs one reply at a
 * time; interrupt() stops it. Errors in commands are printed as one line and the session goes on.
 */
export class ChatRepl {
  private running: AbortController | null = null;

  constructor(readonly session: ChatSession, private readonly write: (text: string) => void) {}

  get prompt(): string { return this.session.raw ? RAW_PROMPT : CHAT_PROMPT; }
  get busy(): boolean { return this.running !== null; }

  /** Stops the reply being generated; false when none is. */
  interrupt(): boolean {
    if (!this.running) return false;
    this.running.abort();
    return true;
  }

  async handleLine(line: string): Promise<LineOutcome> {
    try {
      return await this.dispatch(line);
    } catch (e) {
      if (e instanceof RwkvInputError) {
        this.write(`error: ${e.message}\n`);
        return "continue";
      }
      throw e;
    }
  }

  private async dispatch(line: string): Promise<LineOutcome> {
    const session = this.session;
    if (!line.startsWith("/") || line.startsWith("//")) {
      const text = line.startsWith("//") ? line.slice(1) : line;
      if (!session.raw && cleanMessage(text) === "") return "continue";
      await this.reply(!session.raw, (o) => session.send(text, o));
      return "continue";
    }
    const m = /^\/(\S*)\s*([\s\S]*)$/.exec(line)!;
    const name = m[1], arg = m[2].trim();
    const model = session.model;
    switch (name) {
      case "help":
        this.write(CHAT_HELP);
        break;
      case "reset":
        session.reset();
        this.write("(back to the start)\n");
        break;
      case "regen":
        await this.reply(session.regenerateRaw === false, (o) => session.regenerate(o));
        break;
      case "set":
        if (arg !== "") session.set(arg.split(/\s+/));
        this.write(`(${describeSettings(session.settings)})\n`);
        break;
      case "raw":
        session.raw = !session.raw;
        this.write(session.raw ? "(raw mode: your text is continued verbatim; /raw again for chat)\n" : "(chat mode)\n");
        break;
      case "save": {
        if (arg === "") throw new RwkvInputError("/save", "needs a file name");
        const snap = session.snapshot();
        await saveStateFile(arg, model, snap.state, snap.logits, snap.tokens, snap.extra);
        this.write(`(saved ${snap.tokens} tokens of conversation to ${arg})\n`);
        break;
      }
      case "load": {
        if (arg === "") throw new RwkvInputError("/load", "needs a file name");
        const file = loadStateFileOnly(arg, model);
        session.restore({ ...file, source: arg });
        this.write(`(loaded ${arg}: ${file.tokens} tokens${parseChatExtra(file.extra, arg) ? "" : ", no conversation text"}${session.raw ? ", raw mode" : ""})\n`);
        break;
      }
      case "quit":
      case "exit":
        return "quit";
      default:
        throw new RwkvInputError(`/${name}`, "unknown command (/help lists them; start a message with // to send it as it is)");
    }
    return "continue";
  }

  /** Streams one reply; Ctrl-C (interrupt) ends it with a note, keeping what was shown. */
  private async reply(framed: boolean, run: (o: ReplyOptions) => Promise<Reply | null>): Promise<void> {
    const controller = new AbortController();
    this.running = controller;
    if (framed) this.write(ASSISTANT_LABEL);
    let r: Reply | null;
    try {
      r = await run({ signal: controller.signal, onText: (t) => this.write(t) });
    } finally {
      this.running = null;
    }
    this.write("\n");
    if (r?.finishReason === "cancelled") this.write(`${STOPPED_NOTE}\n`);
  }
}

/** The first bytes of a file, or null when it cannot be read (loadStartState then says why). */
function peek(path: string, n: number): string | null {
  try {
    const fd = openSync(path, "r");
    try {
      const b = Buffer.alloc(n);
      return b.subarray(0, readSync(fd, b, 0, n, 0)).toString("latin1");
    } finally {
      closeSync(fd);
    }
  } catch {
    return null;
  }
}

/** An rwkv-ts state file checked to belong to `model` (missing, foreign or damaged files throw RwkvInputError). */
function loadStateFileOnly(path: string, model: Model): StateFile {
  const head = peek(path, STATE_FILE_MAGIC.length);
  if (head !== null && head !== STATE_FILE_MAGIC) throw new RwkvInputError(path, "not an rwkv-ts state file (state-tuning checkpoints go to --state-in)");
  const start = loadStartState(path, model);
  if (start.kind !== "state") throw new RwkvInputError(path, "not an rwkv-ts state file");
  return start.file;
}

export async function chatCommand(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parse(args, {
    ...SAMPLING_OPTIONS, system: { type: "string" }, raw: { type: "boolean" }, "state-in": { type: "string" },
  }, ["[MODEL]"]);
  const settings = samplingSettings(values);
  if (values["max-tokens"] === undefined) settings.maxTokens = CHAT_DEFAULT_MAX_TOKENS;
  const system = str(values, "system");
  if (system !== undefined && cleanMessage(system) === "") throw new UsageError("--system is empty");
  const modelPath = modelPathFor(positionals[0], config);
  const model = await loadModel(modelPath, { ...modelLoadOptions(values, args), onNote: (t) => io.stderr(`note: ${t}\n`) });
  const tokenizer = tokenizerFor(values, model.config.vocabSize, modelPath);
  const stateIn = str(values, "state-in");
  let from: ChatStart | undefined;
  if (stateIn !== undefined) {
    const start = loadStartState(stateIn, model); // a state-tuning checkpoint becomes the model's initial state
    if (start.kind === "state") {
      from = { ...start.file, source: stateIn };
      if (system !== undefined && parseChatExtra(start.file.extra, stateIn) !== null) {
        throw new UsageError(`--system cannot be added to the conversation saved in ${stateIn}`);
      }
    }
  }
  const session = await ChatSession.start(model, tokenizer, {
    settings, seed: values.seed === undefined ? undefined : settings.seed, system, raw: values.raw === true ? true : undefined, from,
  });
  io.stderr(`rwkv chat: RWKV-${model.config.version}, ${tokenizer.name} tokenizer. /help for commands, /quit or Ctrl-D to exit.\n`);
  return interactive(new ChatRepl(session, (t) => io.stdout(t)));
}

/**
 * Reads lines with node:readline until /quit, Ctrl-D or Ctrl-C on an empty prompt. On a terminal,
 * readline reads keys in raw mode, so Ctrl-C arrives as its 'SIGINT' event (no signal is sent); with
 * piped input a real SIGINT does the same job. Either stops a running reply instead of exiting.
 */
async function interactive(repl: ChatRepl): Promise<number> {
  const terminal = process.stdin.isTTY === true && process.stdout.isTTY === true;
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal, prompt: repl.prompt });
  const onInterrupt = () => {
    if (repl.interrupt()) return;
    // On an empty line Ctrl-C exits; on a typed one it clears it (so a second Ctrl-C exits).
    if (rl.line === "") {
      rl.close();
      return;
    }
    rl.write(null, { ctrl: true, name: "e" }); // to the end of the line, then delete all before the cursor
    rl.write(null, { ctrl: true, name: "u" });
    process.stdout.write(`\n${EXIT_HINT}\n`);
    rl.prompt();
  };
  rl.on("SIGINT", onInterrupt);
  process.on("SIGINT", onInterrupt);
  let closed = false;
  rl.on("close", () => {
    closed = true;
    // Ctrl-D during a reply: stop it and leave. (Piped input ends early by nature: its lines still run.)
    if (terminal) repl.interrupt();
  });
  let quit = false;
  try {
    rl.prompt();
    for await (const line of rl) {
      if (await repl.handleLine(line) === "quit") {
        quit = true;
        break;
      }
      if (closed) {
        // Ctrl-D on a terminal means leave now, typed-ahead lines or not. Piped input closes as soon
        // as it has been read: its queued lines still run, just without prompts (prompt() on a closed
        // interface would resume stdin and keep the process alive).
        if (terminal) break;
        continue;
      }
      rl.setPrompt(repl.prompt);
      rl.prompt();
    }
  } finally {
    rl.close();
    process.off("SIGINT", onInterrupt);
  }
  if (!quit) process.stdout.write("\n"); // leave the shell prompt on a line of its own after Ctrl-C / Ctrl-D
  return 0;
}
