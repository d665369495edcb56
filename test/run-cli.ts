import { runCli } from "../src/node/cli.js";

/** Runs one CLI command in this process, capturing what it writes: exit code, stdout, stderr. */
export async function runCaptured(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "", err = "";
  const code = await runCli(argv, { stdout: (t) => { out += t; }, stderr: (t) => { err += t; } });
  return { code, out, err };
}
