import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { Page } from "playwright-core";
import { startWebServer, type WebServer } from "../src/node/commands/web.js";
import { type Chromium, launchChromium, WEBGPU_ARGS } from "./chromium.js";

/*
 * The page `rwkv web` serves, driven like a user would (keyboard, buttons, file pickers) with the
 * bundled model: chat streams and answers, stop ends a reply, a saved conversation (file and
 * browser storage) continues exactly as the original did, bad files leave a message and a working
 * page. Code passed to page.evaluate as strings runs in the page (this build has no DOM types).
 */

const MODEL = join(import.meta.dirname, "..", "..", "models", "rwkv7-shakespeare.safetensors");
const TIMEOUT_MS = 60_000;
/** Where the screenshot goes (look at it after a run); RWKV_SCREENSHOT overrides. */
const SCREENSHOT = process.env.RWKV_SCREENSHOT ?? join(tmpdir(), "rwkv-web-page.png");
/** A main thread that never waits on the model answers a 10 ms timer within this, even on a busy 2-core machine. */
const MAX_TIMER_GAP_MS = 250;

const text = (page: Page, sel: string) => page.locator(sel).textContent().then((t) => t ?? "");
const history = (page: Page) => page.evaluate<string>("document.getElementById('transcript').dataset.history ?? ''");

/** Sends `message` with the keyboard and waits for the reply to finish; returns it and the timer gaps seen. */
async function chat(page: Page, message: string): Promise<{ reply: string; stats: string; updates: number; maxGapMs: number }> {
  await page.evaluate(`(() => {
    const t = document.getElementById("transcript");
    window.__updates = 0;
    window.__obs?.disconnect();
    window.__obs = new MutationObserver((ms) => { window.__updates += ms.filter((m) => m.type === "characterData" || m.type === "childList").length; });
    window.__obs.observe(t, { subtree: true, childList: true, characterData: true });
    let last = performance.now();
    window.__maxGap = 0;
    clearInterval(window.__timer);
    window.__timer = setInterval(() => { const now = performance.now(); window.__maxGap = Math.max(window.__maxGap, now - last); last = now; }, 10);
  })()`);
  await page.locator("#prompt").fill(message);
  await page.locator("#prompt").press("Enter");
  await page.waitForFunction("document.body.getAttribute('aria-busy') === 'false' && /tokens/.test(document.getElementById('stats').textContent)");
  const replies = page.locator(".msg.assistant .body");
  const r = {
    reply: (await replies.last().textContent()) ?? "", stats: await text(page, "#stats"),
    updates: await page.evaluate<number>("window.__updates"), maxGapMs: await page.evaluate<number>("(clearInterval(window.__timer), window.__maxGap)"),
  };
  assert.equal(await text(page, "#error"), "", "no error after a chat turn");
  return r;
}

async function applySettings(page: Page, values: Record<string, string>): Promise<void> {
  for (const [k, v] of Object.entries(values)) await page.locator(`#${k}`).fill(v);
  await page.locator("#apply-settings").click();
  await page.waitForFunction("document.getElementById('stats').textContent === 'Settings applied.'");
}

test("rwkv web page: chat with the bundled model, stop, save/restore, bad files, accessibility", { timeout: 180_000 }, async (t) => {
  const chromium: Chromium | null = await launchChromium(t);
  if (!chromium) return;
  let web: WebServer | null = null;
  try {
    web = await startWebServer({ modelPath: MODEL, port: 0 });
    const { page, errors } = await chromium.page();
    page.setDefaultTimeout(TIMEOUT_MS);
    await page.goto(web.url);
    const info = await page.evaluate<{ backend: string; threads: number; crossOriginIsolated: boolean; tokenizer: string } | null>("window.rwkvPage.ready");
    const cores = await page.evaluate<number>("navigator.hardwareConcurrency");
    assert.ok(info, "the page loaded the served model");
    assert.deepEqual({ ...info, backend: info.backend, threads: info.threads }, { ...info, backend: "wasm", threads: cores, crossOriginIsolated: true, tokenizer: "bytes" });
    // This Chromium runs without WebGPU (no --enable-unsafe-webgpu): the page says why it is on wasm.
    assert.match(await text(page, "#model-info"), /^rwkv7-shakespeare\.safetensors: RWKV-7, 4 layers × 128, vocabulary 256 \(bytes tokenizer\) · wasm backend, \d threads? · no WebGPU: [^·]+ · loaded in \d+ ms$/);

    await t.test("every control has a label", async () => {
      const unlabeled = await page.evaluate<string[]>(`[...document.querySelectorAll("input, textarea, select, button")]
        .filter((e) => !(e.labels?.length || e.getAttribute("aria-label") || (e.tagName === "BUTTON" && e.textContent.trim())))
        .map((e) => e.id || e.outerHTML)`);
      assert.deepEqual(unlabeled, []);
    });

    let savedFile = "";
    let afterFirst = "";
    let second = { reply: "", history: "" };
    await t.test("chat answers with streamed text and tokens/s, the page never blocked", async () => {
      await applySettings(page, { seed: "7", max_tokens: "60", temperature: "1" });
      const r = await chat(page, "Good morrow, sir. What news?");
      assert.ok(r.reply.trim().length > 0, "a non-empty reply");
      assert.match(r.stats, /^\d+ tokens · \d+\.\d tokens\/s · (done|reached max tokens)$/);
      assert.ok(r.updates > 3, `the reply arrived in pieces (${r.updates} updates)`);
      t.diagnostic(`first reply: ${JSON.stringify(r.reply)} (${r.stats}; ${r.updates} updates; longest timer gap ${r.maxGapMs.toFixed(0)} ms)`);
      assert.ok(r.maxGapMs < MAX_TIMER_GAP_MS, `the main thread was blocked for ${r.maxGapMs.toFixed(0)} ms`);
      afterFirst = await history(page);
      assert.equal(afterFirst.startsWith("User: Good morrow, sir. What news?\n\nAssistant:"), true, JSON.stringify(afterFirst));
    });

    await t.test("a saved conversation (file and browser storage) continues exactly as the original", async () => {
      const download = page.waitForEvent("download");
      await page.locator("#save-file").click();
      savedFile = join(tmpdir(), `rwkv-page-${process.pid}.rwkvstate`);
      await (await download).saveAs(savedFile);
      assert.equal(readFileSync(savedFile).subarray(0, 8).toString("latin1"), "RWKVSTF1");
      await page.locator("#save-browser").click();
      await page.waitForFunction("/^Saved in /.test(document.getElementById('state-info').textContent)");
      const r2 = await chat(page, "Speak on.");
      second = { reply: r2.reply, history: await history(page) };
      t.diagnostic(`second reply: ${JSON.stringify(r2.reply)}`);
      assert.ok(r2.reply.trim().length > 0, "a non-empty second reply");
      assert.notEqual(second.history, afterFirst);

      await page.locator("#load-file").setInputFiles(savedFile);
      await page.waitForFunction("/^Restored /.test(document.getElementById('state-info').textContent)");
      assert.equal(await history(page), afterFirst, "the file restores the transcript");
      const again = await chat(page, "Speak on.");
      assert.equal(again.reply, second.reply, "same reply after restoring the file (state, random stream, penalties)");
      assert.equal(await history(page), second.history);

      await page.locator("#load-browser").click();
      await page.waitForFunction("/^Restored from /.test(document.getElementById('state-info').textContent)");
      assert.equal(await history(page), afterFirst, "browser storage restores the transcript");
      assert.equal((await chat(page, "Speak on.")).reply, second.reply, "same reply after restoring from browser storage");
    });

    await t.test("Escape stops a long completion; reset clears the conversation", async () => {
      await applySettings(page, { max_tokens: "5000" });
      await page.locator("#mode-completion").check();
      await page.locator("#prompt").fill("ROMEO:");
      await page.locator("#prompt").press("Enter");
      await page.waitForFunction("/^generating… [1-9]/.test(document.getElementById('stats').textContent)");
      await page.keyboard.press("Escape");
      await page.waitForFunction("document.body.getAttribute('aria-busy') === 'false'");
      const stats = await text(page, "#stats");
      const m = /^(\d+) tokens .* stopped$/.exec(stats);
      assert.ok(m, `stopped: ${stats}`);
      t.diagnostic(`stopped after: ${stats}`);
      assert.ok(Number(m[1]) < 5000);
      assert.ok((await history(page)).includes("ROMEO:"));
      await page.locator("#reset").click();
      await page.waitForFunction("document.getElementById('transcript').children.length === 0");
      assert.equal(await history(page), "");
      await page.locator("#mode-chat").check();
    });

    await t.test("bad files and URLs: a clear message, the page keeps working; a model by URL loads", async () => {
      await page.locator("#model-file").setInputFiles({ name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("Just some notes, not a model.\n".repeat(20)) });
      await page.waitForFunction("document.getElementById('error').textContent !== ''");
      assert.equal(await text(page, "#error"), "notes.txt: unknown file format (not .pth zip, safetensors, rwkv.cpp .bin or GGUF)");
      const bytes = readFileSync(MODEL);
      await page.locator("#model-file").setInputFiles({ name: "cut.safetensors", mimeType: "application/octet-stream", buffer: bytes.subarray(0, bytes.length >> 1) });
      await page.waitForFunction("/^cut\\.safetensors: /.test(document.getElementById('error').textContent)");
      assert.match(await text(page, "#error"), /^cut\.safetensors: tensor \S+: data_offsets point past the end of the file/);
      await page.locator("#load-file").setInputFiles({ name: "junk.rwkvstate", mimeType: "application/octet-stream", buffer: Buffer.from("not a state") });
      await page.waitForFunction("/^junk\\.rwkvstate: /.test(document.getElementById('error').textContent)");
      assert.equal(await text(page, "#error"), "junk.rwkvstate: not an RWKV state file (bad magic)");
      assert.match(await text(page, "#model-info"), /^rwkv7-shakespeare\.safetensors: RWKV-7/);
      await page.locator("#model-url").fill("/no-such-model.pth");
      await page.locator("#load-url").click();
      await page.waitForFunction("/404/.test(document.getElementById('error').textContent)");
      assert.match(await text(page, "#error"), /^http:\/\/127\.0\.0\.1:\d+\/no-such-model\.pth: HTTP 404 Not Found$/);
      // A model by URL (the served one, under its URL): loaded afresh, the conversation starts over.
      await page.locator("#model-url").fill("/model");
      await page.locator("#load-url").click();
      await page.waitForFunction("/^\\/model: RWKV-7, 4 layers/.test(document.getElementById('model-info').textContent)");
      assert.equal(await text(page, "#error"), "");
      const r = await chat(page, "Are you still there?");
      assert.ok(r.reply.trim().length > 0);
    });

    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    t.diagnostic(`screenshot: ${SCREENSHOT}`);
    assert.deepEqual(errors, []);
  } finally {
    await chromium.close();
    await web?.close();
  }
});

test("rwkv web page on WebGPU: the page picks the GPU where the browser has one, says so, and chats; ?backend=wasm overrides", { timeout: 180_000 }, async (t) => {
  const chromium = await launchChromium(t, WEBGPU_ARGS);
  if (!chromium) return;
  let web: WebServer | null = null;
  try {
    web = await startWebServer({ modelPath: MODEL, port: 0 });
    const { page, errors } = await chromium.page();
    page.setDefaultTimeout(TIMEOUT_MS);
    await page.goto(web.url);
    const info = await page.evaluate<{ backend: string; adapter: string | null } | null>("window.rwkvPage.ready");
    assert.equal(info?.backend, "webgpu");
    assert.match(info?.adapter ?? "", /swiftshader/);
    assert.match(await text(page, "#model-info"), /· webgpu backend \(GPU: [^)]*swiftshader[^)]*\) · loaded in \d+ ms$/);
    const turn = await chat(page, "Hello");
    assert.ok(turn.reply.length > 0, "a reply streamed from the GPU model");
    // The conversation's state lives on the GPU: saving reads it back (State.sync); the saved state
    // continues on the GPU exactly as the live one does (greedy-free sampling is seeded per turn).
    await page.locator("#save-browser").click();
    await page.waitForFunction("/^Saved in /.test(document.getElementById('state-info').textContent)");
    const before = await history(page);
    const live = await chat(page, "Speak on.");
    await page.locator("#load-browser").click();
    await page.waitForFunction(`document.getElementById('transcript').dataset.history === ${JSON.stringify(before)}`);
    const restored = await chat(page, "Speak on.");
    assert.equal(restored.reply, live.reply, "the restored GPU state continues as the live one did");

    await page.goto(`${web.url}?backend=wasm`);
    const cpu = await page.evaluate<{ backend: string } | null>("window.rwkvPage.ready");
    assert.equal(cpu?.backend, "wasm", "?backend=wasm overrides the GPU");
    assert.deepEqual(errors, []);
  } finally {
    await web?.close();
    await chromium.close();
  }
});
