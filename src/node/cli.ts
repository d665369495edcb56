import { RwkvInputError } from "../core/errors.js";
import { type CliIO, UsageError } from "./cli-util.js";
import type { CliConfig } from "./model-arg.js";
import { modelHomeFromEnv } from "./pull/home.js";

export type { CliIO } from "./cli-util.js";

type Command = (args: string[], io: CliIO, config: CliConfig) => number | Promise<number>;

interface CommandModule { run: Command; usage: string }

/**
 * Each command lives in commands/<name>.ts and brings its own usage line. Loaded on use: importing
 * every command (the server's and trainer's code among them) costs ~20 MB of RSS that `rwkv generate`
 * has no use for.
 */
const COMMANDS: Record<string, () => Promise<CommandModule>> = {
  info: async () => { const m = await import("./commands/info.js"); return { run: m.info, usage: m.INFO_USAGE }; },
  generate: async () => { const m = await import("./commands/generate.js"); return { run: m.generateCommand, usage: m.GENERATE_USAGE }; },
  chat: async () => { const m = await import("./commands/chat.js"); return { run: m.chatCommand, usage: m.CHAT_USAGE }; },
  eval: async () => { const m = await import("./commands/eval.js"); return { run: m.evalCommand, usage: m.EVAL_USAGE }; },
  convert: async () => { const m = await import("./commands/convert.js"); return { run: m.convertCommand, usage: m.CONVERT_USAGE }; },
  merge: async () => { const m = await import("./commands/merge.js"); return { run: m.mergeCommand, usage: m.MERGE_USAGE }; },
  "convert-adapter": async () => { const m = await import("./commands/convert-adapter.js"); return { run: m.convertAdapterCommand, usage: m.CONVERT_ADAPTER_USAGE }; },
  serve: async () => { const m = await import("./commands/serve.js"); return { run: m.serveCommand, usage: m.SERVE_USAGE }; },
  train: async () => { const m = await import("./commands/train.js"); return { run: m.trainCommand, usage: m.TRAIN_USAGE }; },
  bench: async () => { const m = await import("./commands/bench.js"); return { run: m.benchCommand, usage: m.BENCH_USAGE }; },
  pull: async () => { const m = await import("./commands/pull.js"); return { run: m.pullCommand, usage: m.PULL_USAGE }; },
  embed: async () => { const m = await import("./commands/embed.js"); return { run: m.embedCommand, usage: m.EMBED_USAGE }; },
  web: async () => { const m = await import("./commands/web.js"); return { run: m.webCommand, usage: m.WEB_USAGE }; },
};

const usage = async () => `usage: rwkv <command> [options]

commands:
${(await Promise.all(Object.values(COMMANDS).map((load) => load()))).map((c) => "  " + c.usage).join("\n")}

MODEL is a .pth, .safetensors, rwkv.cpp .bin or .gguf file (the format is read from its content), or a name
fetched with rwkv pull; without MODEL, commands use the bundled models/rwkv7-shakespeare.safetensors.`;

const processIO: CliIO = { stdout: (t) => process.stdout.write(t), stderr: (t) => process.stderr.write(t) };

/**
 * Runs one CLI command; resolves to the exit code (0 ok, 1 bad input, 2 bad usage). `config`
 * defaults to what the process environment says ($RWKV_HOME): the only place the CLI reads it.
 */
export async function runCli(argv: string[], io: CliIO = processIO, config: CliConfig = { home: modelHomeFromEnv(process.env) }): Promise<number> {
  const [name, ...rest] = argv;
  try {
    if (name === undefined || name === "help" || name === "--help" || name === "-h") {
      io.stdout(await usage() + "\n");
      return name === undefined ? 2 : 0;
    }
    const load = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
    if (!load) throw new UsageError(`unknown command "${name}"`);
    return await (await load()).run(rest, io, config);
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr(`rwkv: ${e.message}\nRun "rwkv help" for usage.\n`);
      return 2;
    }
    if (e instanceof RwkvInputError) {
      io.stderr(`rwkv: ${e.message}\n`);
      return 1;
    }
    throw e; // a bug: let Node print the stack trace
  }
}
