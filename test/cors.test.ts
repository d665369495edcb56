import assert from "node:assert/strict";
import { after, test, type TestContext } from "node:test";
import { loadModel } from "../src/node/load.js";
import { parseCorsOrigins } from "../src/node/server/cors.js";
import { RwkvServer } from "../src/node/server/server.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { runCaptured as run } from "./run-cli.js";
import { sharedPath } from "./shared.js";

/* The CORS headers themselves (what the browser test relies on), checked with plain fetch. */

const KEY = "cors-key";
const APP = "http://localhost:5173";
const servers: RwkvServer[] = [];

after(async () => { await Promise.all(servers.map((s) => s.shutdown(0))); });

async function start(t: TestContext, origins: string[] | null): Promise<string | null> {
  const p = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!p) return null;
  const server = new RwkvServer({ model: await loadModel(p), tokenizer: loadTokenizer({ kind: "bytes" }), modelName: "tiny", port: 0, apiKey: KEY,
    cors: origins ? { origins } : undefined });
  servers.push(server);
  return `http://127.0.0.1:${(await server.listen()).port}`;
}

const preflight = (url: string, origin: string, method = "POST", path = "/v1/chat/completions") => fetch(url + path, {
  method: "OPTIONS", headers: { Origin: origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os" },
});

test("--cors: preflight answered without the key, the origin echoed (never *), errors readable, other origins refused", async (t) => {
  const url = await start(t, [APP]);
  if (!url) return;
  const pre = await preflight(url, APP);
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get("access-control-allow-origin"), APP);
  assert.equal(pre.headers.get("access-control-allow-methods"), "POST");
  assert.equal(pre.headers.get("access-control-allow-headers"), "authorization,content-type,x-stainless-os");
  assert.equal(pre.headers.get("access-control-allow-credentials"), null, "no credentials mode");
  assert.match(pre.headers.get("vary") ?? "", /Origin/);
  // The real request still needs the key; its 401 carries the CORS headers so the page can read it.
  const noKey = await fetch(`${url}/v1/models`, { headers: { Origin: APP } });
  assert.equal(noKey.status, 401);
  assert.equal(noKey.headers.get("access-control-allow-origin"), APP);
  const ok = await fetch(`${url}/v1/models`, { headers: { Origin: APP, Authorization: `Bearer ${KEY}` } });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("access-control-allow-origin"), APP);
  assert.match(ok.headers.get("access-control-expose-headers") ?? "", /X-Request-Id/);
  // Another origin: no CORS headers on a request, 403 on a preflight; a bad method or path is refused too.
  const other = await fetch(`${url}/v1/models`, { headers: { Origin: "http://evil.example", Authorization: `Bearer ${KEY}` } });
  assert.equal(other.headers.get("access-control-allow-origin"), null);
  const otherPre = await preflight(url, "http://evil.example");
  assert.equal(otherPre.status, 403);
  assert.match(((await otherPre.json()) as { error: { message: string } }).error.message, /origin http:\/\/evil\.example is not allowed/);
  assert.equal((await preflight(url, APP, "DELETE")).status, 403);
  assert.equal((await preflight(url, APP, "POST", "/v1/nope")).status, 403);
});

test("without --cors: no CORS headers and no preflight answer; --cors '*' echoes any origin", async (t) => {
  const url = await start(t, null);
  if (!url) return;
  const pre = await preflight(url, APP);
  assert.equal(pre.status, 405);
  assert.equal(pre.headers.get("access-control-allow-origin"), null);
  const res = await fetch(`${url}/v1/models`, { headers: { Origin: APP, Authorization: `Bearer ${KEY}` } });
  assert.equal(res.headers.get("access-control-allow-origin"), null);
  const any = await start(t, ["*"]);
  const anyPre = await preflight(any!, "http://anything.example:8080");
  assert.equal(anyPre.status, 204);
  assert.equal(anyPre.headers.get("access-control-allow-origin"), "http://anything.example:8080");
});

test("--cors values are checked: origins only, one clear line", async () => {
  assert.deepEqual(parseCorsOrigins("http://localhost:3000, https://app.example.com"), ["http://localhost:3000", "https://app.example.com"]);
  assert.deepEqual(parseCorsOrigins("*"), ["*"]);
  assert.throws(() => parseCorsOrigins("http://x.com/path"), /is not an origin \(scheme:\/\/host\[:port\], no path\)/);
  assert.throws(() => parseCorsOrigins("*,http://a.com"), /cannot be combined/);
  assert.throws(() => parseCorsOrigins("localhost:3000"), /is not an origin/);
  assert.throws(() => parseCorsOrigins(" , "), /at least one origin/);
  const r = await run(["serve", "--cors", "ftp://x.com"]);
  assert.equal(r.code, 2);
  assert.match(r.err, /^rwkv: --cors "ftp:\/\/x\.com" is not an origin/);
});
