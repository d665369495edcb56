import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, test, type TestContext } from "node:test";
import type { Model } from "../src/core/model/model.js";
import type { Tokenizer } from "../src/core/tokenizer/types.js";
import { loadModel } from "../src/node/load.js";
import { RwkvServer, type ServerOptions } from "../src/node/server/server.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { type Chromium, launchChromium } from "./chromium.js";
import { sharedPath } from "./shared.js";

/*
 * rwkv serve --cors from a real browser: a page served from one local port streams a chat completion
 * from the API on another port (another origin). With --cors naming the page's origin it works (and
 * the API key is still required); without --cors, or for another origin, Chromium blocks it.
 */

const KEY = "browser-key";
const NAME = "tiny";

let model: Model;
let tok: Tokenizer;
const servers: RwkvServer[] = [];
let pageServer: Server | null = null;
let browser: Chromium | null = null;

after(async () => {
  await browser?.close();
  await Promise.all(servers.map((s) => s.shutdown(0)));
  if (pageServer) { pageServer.closeAllConnections(); await new Promise((r) => pageServer!.close(r)); }
});

async function api(options: Partial<ServerOptions>): Promise<string> {
  const server = new RwkvServer({ model, tokenizer: tok, modelName: NAME, port: 0, ...options });
  servers.push(server);
  const { port } = await server.listen();
  return `http://127.0.0.1:${port}`;
}

/** The web app's origin: a page with nothing on it but its origin. */
async function appOrigin(): Promise<string> {
  pageServer = createServer((_req, res) => {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    res.end("<!doctype html><title>web app</title><p>a page on another origin</p>");
  });
  await new Promise<void>((resolve) => pageServer!.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(pageServer.address() as AddressInfo).port}`;
}

interface PageResult { ok: boolean; status?: number; text?: string; error?: string }

/** Runs in the page: POSTs a streaming chat completion and reads the event stream as it arrives. */
async function streamFromPage(b: Chromium, origin: string, apiUrl: string, key: string | null): Promise<PageResult> {
  const { page } = await b.page();
  try {
    await page.goto(origin);
    return await page.evaluate(async ({ apiUrl, key, name }) => {
      try {
        const headers: Record<string, string> = { "Content-Type": "application/json" };
        if (key) headers.Authorization = `Bearer ${key}`;
        const res = await fetch(`${apiUrl}/v1/chat/completions`, {
          method: "POST", headers,
          body: JSON.stringify({ model: name, messages: [{ role: "user", content: "Hello" }], stream: true, max_tokens: 12, seed: 7 }),
        });
        if (!res.body) return { ok: false, status: res.status, text: "" };
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let text = "";
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          text += decoder.decode(value, { stream: true });
        }
        return { ok: res.ok, status: res.status, text };
      } catch (e) {
        return { ok: false, error: String(e) };
      }
    }, { apiUrl, key, name: NAME });
  } finally {
    await page.close();
  }
}

/** The reply text assembled from an event stream's deltas. */
function content(sse: string): string {
  let out = "";
  for (const line of sse.split("\n")) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const chunk = JSON.parse(line.slice(6)) as { choices: Array<{ delta?: { content?: string } }> };
    out += chunk.choices[0]?.delta?.content ?? "";
  }
  return out;
}

async function setup(t: TestContext): Promise<Chromium | null> {
  const p = sharedPath(t, "rwkv.cpp", "tiny-rwkv-7v0-834K-FP32.bin");
  if (!p) return null;
  model = await loadModel(p);
  tok = loadTokenizer({ kind: "bytes" });
  browser = await launchChromium(t);
  return browser;
}

test("Chromium: a page on another origin streams a chat completion through --cors; without it the browser blocks", async (t) => {
  const b = await setup(t);
  if (!b) return;
  const origin = await appOrigin();
  const withCors = await api({ apiKey: KEY, cors: { origins: [origin] } });
  const without = await api({ apiKey: KEY });
  const otherOrigin = await api({ apiKey: KEY, cors: { origins: ["http://localhost:1"] } });

  const r = await streamFromPage(b, origin, withCors, KEY);
  assert.equal(r.error, undefined, r.error);
  assert.equal(r.status, 200);
  assert.match(r.text!, /"object":"chat\.completion\.chunk"/);
  assert.ok(r.text!.trimEnd().endsWith("data: [DONE]"), "the stream ran to its end");
  // The same request outside the browser gives the same reply: the page really got the stream.
  const direct = await fetch(`${withCors}/v1/chat/completions`, {
    method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ model: NAME, messages: [{ role: "user", content: "Hello" }], max_tokens: 12, seed: 7 }),
  });
  const reply = ((await direct.json()) as { choices: Array<{ message: { content: string } }> }).choices[0].message.content;
  assert.ok(reply.length > 0);
  assert.equal(content(r.text!), reply);

  // The key is still required from the page: a readable 401, not a pass.
  const noKey = await streamFromPage(b, origin, withCors, null);
  assert.equal(noKey.status, 401);
  assert.match(noKey.text!, /You didn't provide an API key/);

  // No --cors, or --cors for another origin: Chromium refuses to let the page see the response.
  for (const url of [without, otherOrigin]) {
    assert.equal((await fetch(`${url}/health`)).status, 200, "the server itself is up: only the browser refuses");
    const blocked = await streamFromPage(b, origin, url, KEY);
    assert.equal(blocked.ok, false);
    assert.match(blocked.error ?? "", /TypeError: Failed to fetch/, `${url}: ${JSON.stringify(blocked)}`);
  }
});
