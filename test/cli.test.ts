import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { SHARED, sharedPath } from "./shared.js";
import { runCaptured as run } from "./run-cli.js";

const BIN = join(import.meta.dirname, "..", "src", "node", "bin.js");

/** Every model file in ../shared: golden (vocab 512, random weights) and rwkv.cpp (bytes, trained). */
function sharedModels(t: import("node:test").TestContext): string[] {
  const g = sharedPath(t, "golden"), r = sharedPath(t, "rwkv.cpp");
  if (!g || !r) return [];
  return [
    ...["v4", "v5", "v6", "v7"].flatMap((v) => readdirSync(join(g, v)).filter((f) => /^model.*\.(pth|safetensors)$/.test(f)).map((f) => join(g, v, f))),
    ...readdirSync(r).filter((f) => f.endsWith(".bin") && f.startsWith("tiny-rwkv")).map((f) => join(r, f)),
  ];
}

test("rwkv info reports format, version and sizes for every model in ../shared", async (t) => {
  const models = sharedModels(t);
  assert.ok(models.length >= 39, `found ${models.length} models`);
  for (const m of models) {
    const { code, out, err } = await run(["info", m, "--json"]);
    assert.equal(code, 0, `${m}: ${err}`);
    const info = JSON.parse(out);
    const isCpp = m.endsWith(".bin");
    assert.equal(info.format, isCpp ? "rwkv.cpp" : m.endsWith(".pth") ? "pth" : "safetensors");
    const v = /tiny-rwkv-(\d)v(\d)/.exec(m);
    const want = v ? (v[1] === "5" ? `5.${v[2]}` : v[1]) : ({ v4: "4", v5: "5.2", v6: "6", v7: "7" } as Record<string, string>)[/golden\/(v\d)/.exec(m)![1]];
    assert.equal(info.config.version, want, m);
    assert.equal(info.config.vocabSize, isCpp ? 256 : 512, m);
    assert.ok(info.parameters > 100_000, m);
  }
  // The human-readable form names every field the issue asks for.
  const { out } = await run(["info", join(SHARED, "golden", "v7", "model.pth")]);
  for (const field of ["format      pth", "version     RWKV-7", "layers      3", "width       128", "heads       2 x 64", "vocab       512", "parameters", "tensors"]) {
    assert.ok(out.includes(field), `missing "${field}" in:\n${out}`);
  }
});

test("rwkv generate runs greedily on every model in ../shared", async (t) => {
  for (const m of sharedModels(t)) {
    const { code, out, err } = await run(["generate", m, "--prompt", "The ", "--max-tokens", "8", "--tokenizer-kind", "bytes"]);
    assert.equal(code, 0, `${m}: ${err}`);
    assert.ok(out.length > 1, m);
  }
});

test("rwkv generate --greedy on a trained rwkv.cpp model: deterministic, English-looking bytes", async (t) => {
  const m = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!m) return;
  const a = await run(["generate", m, "--prompt", "The ", "--max-tokens", "40", "--greedy"]);
  const b = await run(["generate", m, "--prompt", "The ", "--max-tokens", "40", "--greedy"]);
  assert.equal(a.code, 0, a.err);
  assert.equal(a.out, b.out);
  const letters = a.out.replace(/[^a-zA-Z ]/g, "").length;
  assert.ok(letters / a.out.length > 0.8, `mostly letters and spaces: ${JSON.stringify(a.out)}`);
});

test("CLI user errors: one line, no stack trace, non-zero exit (real processes)", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-cli-"));
  const junk = join(dir, "junk.pth");
  writeFileSync(junk, "this is not a model at all");
  const v7 = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!v7) return;
  const cases: Array<[string[], number, RegExp]> = [
    [["info", join(dir, "missing.pth")], 1, /missing\.pth: no such file/],
    [["info", junk], 1, /junk\.pth: unknown file format/],
    [["info", dir], 1, /is a directory/],
    [["frobnicate"], 2, /unknown command "frobnicate"/],
    [["toString"], 2, /unknown command "toString"/], // a name on Object.prototype, not a command
    [["generate", v7, "--prompt", "x", "--bogus"], 2, /Unknown option '--bogus'/],
    [["generate", v7], 2, /--prompt TEXT \(or --prompt-file F, or --state-in FILE\) is required/],
    [["generate", v7, "--prompt", ""], 2, /--prompt is empty/],
    [["generate", v7, "--prompt", "x", "--max-tokens", "-3"], 2, /--max-tokens/],
    [["generate", v7, "--prompt", "x", "--max-tokens=0"], 2, /--max-tokens must be a positive integer, got "0"/],
    [["generate", v7, "--prompt", "x", "--max-tokens", "1e9x"], 2, /--max-tokens must be a positive integer/],
    [["generate", v7, "--prompt", "x"], 1, /vocab size 512.*--tokenizer-kind/],
    [["generate", v7, "--prompt", "x", "--tokenizer-kind", "world", "--tokenizer", join(dir, "nope.txt")], 1, /nope\.txt/],
    [["generate", v7, "--prompt", "x", "--backend", "nope"], 1, /unknown backend "nope"/],
    [["generate", v7, "--prompt", "x", "--threads", "0"], 2, /--threads must be a positive integer/],
  ];
  for (const [argv, code, re] of cases) {
    const r = spawnSync(process.execPath, [BIN, ...argv], { encoding: "utf8", timeout: 30_000 });
    assert.equal(r.status, code, `${argv.join(" ")}: exit ${r.status}, stderr ${r.stderr}`);
    assert.match(r.stderr, re, argv.join(" "));
    assert.doesNotMatch(r.stderr, /\n\s+at /, `stack trace for ${argv.join(" ")}`);
  }
});
