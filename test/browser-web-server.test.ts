import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { BROWSER_DIR, startWebServer } from "../src/node/commands/web.js";
import { runCaptured } from "./run-cli.js";

/* `rwkv web`'s server and command line, without a browser. */

const MODEL = join(import.meta.dirname, "..", "..", "models", "rwkv7-shakespeare.safetensors");

/** A raw GET (fetch would normalize "/../" away before it reaches the server). */
function get(url: string, path: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = request({ host: u.hostname, port: u.port, path, method: "GET" }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("rwkv web server: the page, the model and config with COOP/COEP; nothing outside its files", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-web-"));
  writeFileSync(join(dir, "a.txt"), "mounted");
  const web = await startWebServer({ modelPath: MODEL, port: 0, mounts: { "/m/": dir } });
  try {
    const page = await get(web.url, "/");
    assert.equal(page.status, 200);
    assert.equal(page.headers["cross-origin-opener-policy"], "same-origin");
    assert.equal(page.headers["cross-origin-embedder-policy"], "require-corp");
    assert.match(String(page.headers["content-type"]), /^text\/html/);
    assert.equal(page.body.toString(), readFileSync(join(BROWSER_DIR, "index.html"), "utf8"));
    const lib = await get(web.url, "/rwkv.js");
    assert.match(String(lib.headers["content-type"]), /^text\/javascript/);
    assert.equal(lib.headers["cross-origin-embedder-policy"], "require-corp");
    assert.deepEqual(JSON.parse((await get(web.url, "/config.json")).body.toString()), { model: { url: "model", name: "rwkv7-shakespeare.safetensors" }, tokenizer: null });
    assert.ok((await get(web.url, "/model")).body.equals(readFileSync(MODEL)));
    assert.equal((await get(web.url, "/m/a.txt")).body.toString(), "mounted");
    for (const bad of ["/m/../b.txt", "/m/%2e%2e/%2e%2e/package.json", "/tokenizer", "/../package.json", "/nope"]) {
      assert.equal((await get(web.url, bad)).status, 404, bad);
    }
  } finally {
    await web.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const plain = await startWebServer({ modelPath: null, port: 0, isolated: false });
  try {
    const r = await get(plain.url, "/");
    assert.equal(r.headers["cross-origin-embedder-policy"], undefined);
    assert.deepEqual(JSON.parse((await get(plain.url, "/config.json")).body.toString()), { model: null, tokenizer: null });
  } finally {
    await plain.close();
  }
});

test("rwkv web: bad input is one line and a non-zero exit, before anything is served", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rwkv-web-"));
  try {
    const notes = join(dir, "notes.txt");
    writeFileSync(notes, "not a model at all, just text\n");
    const r = await runCaptured(["web", notes, "--port", "0"]);
    assert.deepEqual([r.code, r.err], [1, `rwkv: ${notes}: unknown file format (not .pth zip, safetensors, rwkv.cpp .bin or GGUF)\n`]);
    const missing = await runCaptured(["web", join(dir, "none.safetensors")]);
    assert.deepEqual([missing.code, missing.err], [1, `rwkv: ${join(dir, "none.safetensors")}: no such file\n`]);
    const port = await runCaptured(["web", "--port", "99999"]);
    assert.equal(port.code, 2);
    assert.match(port.err, /^rwkv: --port must be a number in \[0, 65535\], got "99999"\n/);
    const kind = await runCaptured(["web", MODEL, "--tokenizer-kind", "klingon"]);
    assert.equal(kind.code, 2);
    assert.match(kind.err, /^rwkv: --tokenizer-kind must be world, 20b or bytes, got "klingon"\n/);
    const world = await runCaptured(["web", MODEL, "--tokenizer-kind", "world"]);
    assert.equal(world.code, 1);
    assert.match(world.err, /^rwkv: rwkv_vocab_v20230424\.txt: the world tokenizer needs this file .*--tokenizer PATH\n$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
