import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { defaultModelPath } from "../src/node/default-model.js";
import { runCaptured as run } from "./run-cli.js";
import { sharedPath } from "./shared.js";

/*
 * Every command that takes MODEL runs the bundled model without one (as generate always did), and
 * the defects found by probing the CLI: a missing --tokenizer file, a negative number after an
 * option with a space, an output directory that exists but cannot be written.
 */

const BIN = join(import.meta.dirname, "..", "src", "node", "bin.js");
const BUNDLED = defaultModelPath();

test("info, eval and bench without MODEL use the bundled model", async () => {
  const info = await run(["info", "--json"]);
  assert.equal(info.code, 0, info.err);
  assert.deepEqual(JSON.parse(info.out).config, { version: "7", nLayer: 4, nEmbd: 128, nHead: 2, headSize: 64, vocabSize: 256, dimFfn: 512, dimAtt: 128 });
  const human = await run(["info"]);
  assert.match(human.out, new RegExp(`^file        ${BUNDLED.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\n`));

  const dir = mkdtempSync(join(tmpdir(), "rwkv-defaults-"));
  const text = join(dir, "t.txt");
  writeFileSync(text, "To be, or not to be, that is the question.\n");
  const ev = await run(["eval", "--text", text]);
  assert.equal(ev.code, 0, ev.err);
  const r = JSON.parse(ev.out) as { model: string; tokenizer: string; tokens: number };
  assert.equal(r.model, BUNDLED);
  assert.equal(r.tokenizer, "bytes");

  const bench = await run(["bench", "--runs", "1", "--decode-tokens", "2", "--prefill", "4", "--warmup", "0", "--threads", "1", "--probe-mib", "1", "--no-retry", "--json"]);
  assert.equal(bench.code, 0, bench.err);
  const b = JSON.parse(bench.out) as { source: { file?: string }; rows: Array<{ config: { nEmbd: number } }> };
  assert.equal(b.source.file, BUNDLED);
  assert.equal(b.rows[0].config.nEmbd, 128);
});

test("chat and serve without MODEL use the bundled model", async () => {
  const chat = spawnSync(process.execPath, [BIN, "chat", "--max-tokens", "3", "--seed", "1"], { input: "Hello\n/quit\n", encoding: "utf8", timeout: 60_000 });
  assert.equal(chat.status, 0, chat.stderr);
  assert.match(chat.stderr, /rwkv chat: RWKV-7, bytes tokenizer/);

  const serve = spawn(process.execPath, [BIN, "serve", "--port", "0"], { stdio: ["ignore", "ignore", "pipe"] });
  try {
    let err = "";
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 30_000);
      serve.stderr.on("data", (d: Buffer) => {
        err += d.toString();
        const m = /listening on http:\/\/127\.0\.0\.1:(\d+) \(model "rwkv7-shakespeare"/.exec(err);
        if (m) { clearTimeout(timer); resolve(Number(m[1])); }
      });
      serve.once("exit", (code) => reject(new Error(`serve exited ${code}: ${err}`)));
    });
    const models = (await (await fetch(`http://127.0.0.1:${port}/v1/models`)).json()) as { data: Array<{ id: string }> };
    assert.deepEqual(models.data.map((m) => m.id), ["rwkv7-shakespeare"]);
  } finally {
    const exited = new Promise((resolve) => serve.once("exit", resolve));
    serve.kill("SIGTERM");
    await exited;
  }
});

test("CLI defects: a missing --tokenizer file, '--max-tokens -1', an unwritable output directory", async (t) => {
  const tiny = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!tiny) return;
  const cases: Array<[string[], number, RegExp]> = [
    // The bundled and tiny models are byte-level: a tokenizer file used to be ignored silently.
    [["generate", "--prompt", "x", "--tokenizer", "/nope.txt"], 1, /^rwkv: \/nope\.txt: tokenizer file not found\n$/],
    [["generate", tiny, "--prompt", "x", "--tokenizer", "/nope.txt"], 1, /^rwkv: \/nope\.txt: tokenizer file not found\n$/],
    [["generate", tiny, "--prompt", "x", "--tokenizer", BUNDLED], 1, /the bytes tokenizer uses no file \(pass --tokenizer-kind world\|20b to use this one\)/],
    // A negative value after a space reaches the option's own check (node's parseArgs called it "ambiguous").
    [["generate", tiny, "--prompt", "x", "--max-tokens", "-1"], 2, /^rwkv: --max-tokens must be a positive integer, got "-1"\n/],
    [["generate", tiny, "--prompt", "x", "--temperature", "-0.5"], 2, /^rwkv: --temperature must be a number in \[0, 100\], got "-0\.5"\n/],
    [["bench", "--random", "7", "--warmup", "-1"], 2, /^rwkv: --warmup must be a number in \[0, 3600\], got "-1"\n/],
    [["serve", tiny, "--port", "-5"], 2, /^rwkv: --port must be a number in \[0, 65535\], got "-5"\n/],
    // /proc exists but takes no new files: the message says so instead of "does not exist".
    [["convert", tiny, "/proc/x.safetensors"], 1, /^rwkv: \/proc\/x\.safetensors: cannot write the output: directory \/proc is not writable\n$/],
    [["convert", tiny, "/nonexistent-dir/x.safetensors"], 1, /directory \/nonexistent-dir does not exist/],
  ];
  for (const [argv, code, re] of cases) {
    const r = await run(argv);
    assert.equal(r.code, code, `${argv.join(" ")}: exit ${r.code}, ${r.err}`);
    assert.match(r.err, re, argv.join(" "));
    assert.doesNotMatch(r.err, /ambiguous/);
  }
  // Negative values where the option allows them work after a space too.
  const ok = await run(["generate", tiny, "--prompt", "ab", "--max-tokens", "2", "--presence-penalty", "-0.5", "--seed", "-3"]);
  assert.equal(ok.code, 0, ok.err);
});
