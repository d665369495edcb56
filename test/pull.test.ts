import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { runCli } from "../src/node/cli.js";
import { CATALOG, type CatalogEntry } from "../src/node/pull/catalog.js";
import { download, partialPath } from "../src/node/pull/download.js";
import { type ModelHome, modelHomeFromEnv, resolveModelArg } from "../src/node/pull/home.js";
import { pullModel } from "../src/node/pull/pull.js";
import { findTokenizerFile } from "../src/node/tokenizer.js";
import { sharedPath } from "./shared.js";

/*
 * rwkv pull against a local HTTP server (no outside network): progress, resume with a Range request
 * after the connection is cut, a corrupted download refused, a 404 named clearly, and a pulled name
 * used as MODEL by other commands.
 */

const PAYLOAD = randomBytes(600 * 1024 + 17);
const SHA = createHash("sha256").update(PAYLOAD).digest("hex");

interface Behaviour { cutAfter?: number; corrupt?: boolean; ignoreRange?: boolean }
let behaviour: Behaviour = {};
let cutsLeft = 0;
const seen: Array<{ path: string; range: string | null }> = [];
const files = new Map<string, Buffer>([["/m/model.bin", PAYLOAD]]);
let http: Server;
let base: string;

function serve(req: IncomingMessage, res: import("node:http").ServerResponse): void {
  const path = req.url ?? "/";
  seen.push({ path, range: req.headers.range ?? null });
  let body = files.get(path);
  if (!body) { res.writeHead(404, { "Content-Type": "text/plain" }); res.end("not found"); return; }
  if (behaviour.corrupt) { body = Buffer.from(body); body[1000] ^= 0xff; }
  let start = 0;
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
  if (m && !behaviour.ignoreRange) {
    start = Number(m[1]);
    if (start >= body.length) { res.writeHead(416, { "Content-Range": `bytes */${body.length}` }); res.end(); return; }
    res.writeHead(206, { "Content-Length": body.length - start, "Content-Range": `bytes ${start}-${body.length - 1}/${body.length}` });
  } else {
    res.writeHead(200, { "Content-Length": body.length });
  }
  const rest = body.subarray(start);
  if (behaviour.cutAfter !== undefined && cutsLeft > 0) {
    cutsLeft--;
    // Send part of the body, then drop the connection mid-transfer.
    res.write(rest.subarray(0, behaviour.cutAfter), () => setTimeout(() => res.socket?.destroy(), 20));
    return;
  }
  res.end(rest);
}

before(async () => {
  http = createServer(serve);
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
});

after(() => new Promise<void>((resolve) => { http.closeAllConnections(); http.close(() => resolve()); }));

function freshHome(): ModelHome {
  return { dir: mkdtempSync(join(tmpdir(), "rwkv-home-")) };
}

function reset(b: Behaviour = {}, cuts = 0): void {
  behaviour = b;
  cutsLeft = cuts;
  seen.length = 0;
}

test("pull: a URL lands in <home>/models/<name>/ with progress reports ending at the full size", async () => {
  reset();
  const home = freshHome();
  const progress: Array<[string, number, number | null]> = [];
  const r = await pullModel(`${base}/m/model.bin`, home, { sha256: SHA, onProgress: (f, d, t) => progress.push([f, d, t]) });
  assert.equal(r.name, "model");
  assert.equal(r.path, join(home.dir, "models", "model", "model.bin"));
  assert.ok(readFileSync(r.path).equals(PAYLOAD));
  assert.ok(progress.length >= 2, `${progress.length} progress reports`);
  assert.ok(progress.every(([f, , t]) => f === "model.bin" && t === PAYLOAD.length));
  for (let i = 1; i < progress.length; i++) assert.ok(progress[i][1] >= progress[i - 1][1], "progress never goes back");
  assert.equal(progress.at(-1)![1], PAYLOAD.length);
  assert.deepEqual(readdirSync(join(home.dir, "models", "model")), ["model.bin"], "no partial file left");
  // Pulling again downloads nothing.
  reset();
  const again = await pullModel(`${base}/m/model.bin`, home, { sha256: SHA });
  assert.deepEqual(again.downloaded, []);
  assert.equal(seen.length, 0);
});

test("pull: a cut connection leaves a partial file; the next run resumes it with a Range request", async () => {
  const home = freshHome();
  const CUT = 200 * 1024;
  reset({ cutAfter: CUT }, 1);
  await assert.rejects(pullModel(`${base}/m/model.bin`, home, { sha256: SHA, attempts: 1 }),
    /connection was cut .*after \d+ bytes \(1 tries\); run the same command again to resume/);
  const dest = join(home.dir, "models", "model", "model.bin");
  assert.ok(!existsSync(dest), "nothing installed");
  const have = readFileSync(partialPath(dest)).length;
  assert.ok(have > 0 && have <= CUT, `partial file of ${have} bytes`);
  reset();
  const r = await pullModel(`${base}/m/model.bin`, home, { sha256: SHA });
  assert.deepEqual(seen.map((s) => s.range), [`bytes=${have}-`], "asked only for the rest");
  assert.ok(readFileSync(r.path).equals(PAYLOAD), "the resumed file is byte-identical");
  assert.ok(!existsSync(partialPath(dest)));

  // Within one run, a cut is retried from where it stopped.
  const home2 = freshHome();
  reset({ cutAfter: CUT }, 1);
  const r2 = await pullModel(`${base}/m/model.bin`, home2, { sha256: SHA, retryDelayMs: 0 });
  assert.equal(seen.length, 2);
  assert.equal(seen[0].range, null);
  assert.match(seen[1].range ?? "", /^bytes=\d+-$/);
  assert.ok(readFileSync(r2.path).equals(PAYLOAD));
});

test("pull: a server that ignores Range restarts the file from zero, still correct", async () => {
  const home = freshHome();
  reset({ cutAfter: 100 * 1024, ignoreRange: true }, 1);
  const r = await pullModel(`${base}/m/model.bin`, home, { sha256: SHA, retryDelayMs: 0 });
  assert.ok(readFileSync(r.path).equals(PAYLOAD));
});

test("pull: a corrupted download is refused and deleted; a 404 and bad names are named clearly", async () => {
  const home = freshHome();
  reset({ corrupt: true });
  await assert.rejects(pullModel(`${base}/m/model.bin`, home, { sha256: SHA }), /download is corrupt \(SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64}\); it was deleted/);
  const dir = join(home.dir, "models", "model");
  assert.deepEqual(readdirSync(dir), [], "neither the file nor a partial file remains");
  // A known size that the server contradicts is refused before reading the body.
  reset();
  await assert.rejects(download(`${base}/m/model.bin`, join(dir, "x.bin"), { bytes: PAYLOAD.length + 1 }), /offers 614417 bytes, but this file has 614418/);
  reset();
  await assert.rejects(pullModel(`${base}/m/missing.bin`, home), /missing\.bin: download failed: HTTP 404 Not Found \(no such file on the server/);
  // Nobody listening: named after the tries, with no talk of resuming.
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const deadPort = (closed.address() as AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  await assert.rejects(pullModel(`http://127.0.0.1:${deadPort}/x.bin`, home, { attempts: 2, retryDelayMs: 0 }), /x\.bin: cannot connect \(ECONNREFUSED\) \(2 tries\)$/);
  await assert.rejects(pullModel("rwkv7-g9-1b", home), /not a known model name nor a URL \(known names: rwkv7-g1-0\.1b, /);
  await assert.rejects(pullModel("ftp://x/y.pth", home), /only http and https/);
  await assert.rejects(pullModel(`${base}/m/model.bin`, home, { sha256: "abc" }), /--sha256: must be 64 hex digits/);
  await assert.rejects(pullModel(`${base}/m/model.bin`, home, { name: "../evil" }), /a model name may hold only/);
  // The CLI says it in one line, exit 1.
  let err = "";
  const code = await runCli(["pull", `${base}/m/missing.bin`], { stdout: () => undefined, stderr: (t) => { err += t; } }, { home });
  assert.equal(code, 1);
  assert.match(err, /^rwkv: .*HTTP 404 Not Found.*\n$/);
});

test("the catalog: official G1 files on Hugging Face with their sizes and SHA-256; a catalog name not pulled says how", () => {
  assert.deepEqual(Object.keys(CATALOG), ["rwkv7-g1-0.1b", "rwkv7-g1-0.4b", "rwkv7-g1-1.5b", "rwkv7-g1-2.9b"]);
  const e = CATALOG["rwkv7-g1-0.1b"];
  assert.equal(e.url, "https://huggingface.co/BlinkDL/rwkv7-g1/resolve/main/rwkv7-g1-0.1b-20250307-ctx4096.pth");
  assert.equal(e.bytes, 382231495);
  for (const entry of Object.values(CATALOG)) assert.match(entry.sha256, /^[0-9a-f]{64}$/);
  const home = freshHome();
  assert.throws(() => resolveModelArg("rwkv7-g1-0.1b", home), /not downloaded yet: run "rwkv pull rwkv7-g1-0\.1b" first/);
  assert.equal(resolveModelArg("no-such-thing", home), "no-such-thing", "left to the loader, which names the missing file");
  assert.equal(modelHomeFromEnv({ RWKV_HOME: "/x/y" }).dir, "/x/y");
  assert.match(modelHomeFromEnv({}).dir, /\.cache\/rwkv-ts$/);
});

test("a pulled name works as MODEL in other commands (info, generate)", async (t) => {
  const tiny = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!tiny) return;
  files.set("/m/tiny-rwkv.bin", readFileSync(tiny));
  reset();
  const home = freshHome();
  let out = "", err = "";
  const io = { stdout: (s: string) => { out += s; }, stderr: (s: string) => { err += s; } };
  assert.equal(await runCli(["pull", `${base}/m/tiny-rwkv.bin`, "--name", "tiny7"], io, { home }), 0, err);
  assert.equal(out.trim(), join(home.dir, "models", "tiny7", "tiny-rwkv.bin"));
  assert.match(err, /tiny7 ready/);
  out = "";
  assert.equal(await runCli(["info", "tiny7", "--json"], io, { home }), 0, err);
  assert.equal(JSON.parse(out).config.nEmbd, 64);
  out = "";
  assert.equal(await runCli(["generate", "tiny7", "--prompt", "ab", "--max-tokens", "3", "--greedy"], io, { home }), 0, err);
  assert.ok(out.length >= 1);
  // A name is looked up only in this home: another home does not know it.
  err = "";
  assert.equal(await runCli(["info", "tiny7"], io, { home: freshHome() }), 1);
  assert.match(err, /tiny7: no such file/);
  writeFileSync(join(home.dir, "models", "tiny7", "notes.txt"), "side files do not confuse the lookup");
  assert.equal(resolveModelArg("tiny7", home), join(home.dir, "models", "tiny7", "tiny-rwkv.bin"));
});

test("pull by catalog name: the model and its tokenizer file, both checked, side by side", async () => {
  const vocab = Buffer.from("1 'a' 1\n2 'b' 1\n");
  files.set("/hf/cat-model.pth", PAYLOAD);
  files.set("/gh/rwkv_vocab_v20230424.txt", vocab);
  const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
  const entry: CatalogEntry = {
    name: "cat-0.1b", file: "cat-model.pth", url: `${base}/hf/cat-model.pth`, bytes: PAYLOAD.length, sha256: SHA, tokenizer: "world",
    sideFiles: [{ file: "rwkv_vocab_v20230424.txt", url: `${base}/gh/rwkv_vocab_v20230424.txt`, bytes: vocab.length, sha256: sha(vocab) }],
    description: "test entry",
  };
  const home = freshHome();
  reset();
  const r = await pullModel("cat-0.1b", home, { catalog: { [entry.name]: entry } });
  assert.equal(r.path, join(home.dir, "models", "cat-0.1b", "cat-model.pth"));
  assert.equal(r.downloaded.length, 2);
  assert.equal(findTokenizerFile("world", { modelPath: r.path }), join(home.dir, "models", "cat-0.1b", "rwkv_vocab_v20230424.txt"));
  assert.equal(resolveModelArg("cat-0.1b", home), r.path);
  // A side file that fails its check fails the pull, and is not installed.
  const bad: CatalogEntry = { ...entry, name: "cat-bad", sideFiles: [{ ...entry.sideFiles[0], sha256: "0".repeat(64) }] };
  await assert.rejects(pullModel("cat-bad", home, { catalog: { [bad.name]: bad } }), /rwkv_vocab_v20230424\.txt: the download is corrupt/);
  assert.ok(!existsSync(join(home.dir, "models", "cat-bad", "rwkv_vocab_v20230424.txt")));
});
