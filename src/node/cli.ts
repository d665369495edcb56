import { RwkvInputError } from "../core/errors.js";
import { type CliIO, UsageError } from "./cli-util.js";
import { benchCommand, BENCH_USAGE } from "./commands/bench.js";
import { chatCommand, CHAT_USAGE } from "./commands/chat.js";
import { convertCommand, CONVERT_USAGE } from "./commands/convert.js";
import { convertAdapterCommand, CONVERT_ADAPTER_USAGE } from "./commands/convert-adapter.js";
import { embedCommand, EMBED_USAGE } from "./commands/embed.js";
import { evalCommand, EVAL_USAGE } from "./commands/eval.js";
import { generateCommand, GENERATE_USAGE } from "./commands/generate.js";
import { info, INFO_USAGE } from "./commands/info.js";
import { pullCommand, PULL_USAGE } from "./commands/pull.js";
import { mergeCommand, MERGE_USAGE } from "./commands/merge.js";
import { serveCommand, SERVE_USAGE } from "./commands/serve.js";
import { trainCommand, TRAIN_USAGE } from "./commands/train.js";
import type { CliConfig } from "./model-arg.js";
import { modelHomeFromEnv } from "./pull/home.js";
import { webCommand, WEB_USAGE } from "./commands/web.js";

export type { CliIO } from "./cli-util.js";

type Command = (args: string[], io: CliIO, config: CliConfig) => number | Promise<number>;

/** Each command lives in commands/<name>.ts and brings its own usage line. */
const COMMANDS: Record<string, { run: Command; usage: string }> = {
  info: { run: info, usage: INFO_USAGE },
  generate: { run: generateCommand, usage: GENERATE_USAGE },
  chat: { run: chatCommand, usage: CHAT_USAGE },
  eval: { run: evalCommand, usage: EVAL_USAGE },
  convert: { run: convertCommand, usage: CONVERT_USAGE },
  merge: { run: mergeCommand, usage: MERGE_USAGE },
  "convert-adapter": { run: convertAdapterCommand, usage: CONVERT_ADAPTER_USAGE },
  serve: { run: serveCommand, usage: SERVE_USAGE },
  train: { run: trainCommand, usage: TRAIN_USAGE },
  bench: { run: benchCommand, usage: BENCH_USAGE },
  pull: { run: pullCommand, usage: PULL_USAGE },
  embed: { run: embedCommand, usage: EMBED_USAGE },
  web: { run: webCommand, usage: WEB_USAGE },
};

const usage = () => `usage: rwkv <command> [options]

commands:
${Object.values(COMMANDS).map((c) => "  " + c.usage).join("\n")}

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
      io.stdout(usage() + "\n");
      return name === undefined ? 2 : 0;
    }
    const command = COMMANDS[name];
    if (!command) throw new UsageError(`unknown command "${name}"`);
    return await command.run(rest, io, config);
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
