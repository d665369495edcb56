import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import type { Model } from "../src/core/model/model.js";
import { loadModel } from "../src/node/load.js";
import { RwkvServer } from "../src/node/server/server.js";
import { loadServedAdapters } from "../src/node/server/adapter-loading.js";
import { type ServedAdapter, UNMERGED } from "../src/node/server/adapters.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { runCaptured } from "./run-cli.js";
import { compare, sharedPath } from "./shared.js";

/*
 * rwkv serve --adapter: requests name "base+NAME" and get exactly that adapter's outputs, also
 * when requests for different adapters run at the same time (seeded sampling, compared with the
 * same requests run one at a time, and with a server whose only model is the merged adapter).
 */

const FIXTURES = join(import.meta.dirname, "..", "..", "test", "fixtures", "adapters", "v6");
const NAME = "golden";
const servers: RwkvServer[] = [];
after(async () => { for (const s of servers) await s.shutdown(0); });

async function start(model: Model, adapters: Map<string, ServedAdapter>): Promise<string> {
  const server = new RwkvServer({ model, adapters, tokenizer: loadTokenizer({ kind: "bytes" }), modelName: NAME, port: 0, slots: 4 });
  servers.push(server);
  const { port } = await server.listen();
  return `http://127.0.0.1:${port}`;
}

async function complete(url: string, model: string, seed: number): Promise<string> {
  const r = await fetch(`${url}/v1/completions`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model, prompt: "First Citizen:", max_tokens: 24, seed, temperature: 1.2, top_p: 1 }),
  });
  const body = await r.json() as { choices?: Array<{ text: string }>; model?: string; error?: { message: string } };
  assert.equal(r.status, 200, JSON.stringify(body));
  assert.equal(body.model, model);
  return body.choices![0].text;
}

test("server: two adapters hot-swapped across concurrent requests give each request exactly its adapter's outputs", async (t) => {
  const v6 = sharedPath(t, "golden", "v6", "model.safetensors");
  if (!v6) return;
  const lora = { path: join(FIXTURES, "lora.safetensors"), alpha: 24 }, bat = { path: join(FIXTURES, "disha_bat.safetensors") };
  const mk = (a: Array<{ path: string; alpha?: number }>) => loadModel(v6, { backend: "reference", adapters: a });
  const url = await start(await loadModel(v6, { backend: "reference" }), new Map([["lora", await mk([lora])], ["bat", await mk([bat])]]));
  const ids = [NAME, `${NAME}+lora`, `${NAME}+bat`];
  const seeds = [1, 2, 3];
  const single = new Map<string, string>();
  for (const id of ids) for (const seed of seeds) single.set(`${id}/${seed}`, await complete(url, id, seed));
  // The adapters change the outputs (else this test could not tell them apart).
  for (const seed of seeds) assert.ok(new Set(ids.map((id) => single.get(`${id}/${seed}`))).size === 3, `seed ${seed}: outputs coincide`);
  // All nine at once, interleaved, twice over.
  const jobs = [...seeds, ...seeds].flatMap((seed) => ids.map((id) => ({ id, seed })));
  const texts = await Promise.all(jobs.map((j) => complete(url, j.id, j.seed)));
  jobs.forEach((j, i) => assert.equal(texts[i], single.get(`${j.id}/${j.seed}`), `${j.id} seed ${j.seed} under concurrency`));
  // "golden+lora" is the LoRA-merged model: the same text as a server whose only model is that merge.
  const alone = await start(await mk([lora]), new Map());
  assert.equal(await complete(alone, NAME, 2), single.get(`${NAME}+lora/2`));

  const list = await (await fetch(`${url}/v1/models`)).json() as { data: Array<{ id: string }> };
  assert.deepEqual(list.data.map((m) => m.id), ids);
  const bad = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model: `${NAME}+nope`, prompt: "a" }) });
  assert.equal(bad.status, 404);
  const err = await bad.json() as { error: { message: string; param: string } };
  assert.equal(err.error.param, "model");
  assert.match(err.error.message, /`golden\+nope` does not exist \(this server serves `golden`, `golden\+lora`, `golden\+bat`\)/);
});

test("server: adapters kept unmerged in one base model are hot-swapped per request, batched together, each exactly its adapter's output", async (t) => {
  const v6 = sharedPath(t, "golden", "v6", "model.safetensors");
  if (!v6) return;
  const base = await loadModel(v6, { backend: "reference" });
  const notes: string[] = [];
  const lora = join(FIXTURES, "lora.safetensors"), bat = join(FIXTURES, "disha_bat.safetensors");
  // PiSSA through its flag (--pissa-adapter NAME=ADAPTER:INIT), as `rwkv serve` passes it.
  const pissaFlag = `pissa=${join(FIXTURES, "pissa.safetensors")}:${join(FIXTURES, "pissa_init.safetensors")}`;
  const adapters = await loadServedAdapters(base, v6, { backend: "reference" }, [`lora=${lora}:24`, `bat=${bat}`], (n) => notes.push(n), [pissaFlag]);
  // One base model: the LoRA and the PiSSA live in it (no model of their own); only the DiSHA
  // adapter, which cannot be kept unmerged, became a merged copy, and the note says why.
  assert.equal(adapters.get("lora"), UNMERGED);
  assert.equal(adapters.get("pissa"), UNMERGED);
  assert.notEqual(adapters.get("bat"), UNMERGED);
  assert.notEqual(adapters.get("bat"), base);
  assert.match(notes.join("\n"), /adapter bat: .*is a DiSHA tensor.*serving it as a merged copy of the model/);
  assert.deepEqual([...adapters.keys()], ["lora", "bat", "pissa"]);
  const server = new RwkvServer({ model: base, adapters, tokenizer: loadTokenizer({ kind: "bytes" }), modelName: NAME, port: 0, slots: 8 });
  servers.push(server);
  const url = `http://127.0.0.1:${(await server.listen()).port}`;
  const ids = [NAME, `${NAME}+lora`, `${NAME}+bat`, `${NAME}+pissa`];
  const seeds = [4, 5];
  const single = new Map<string, string>();
  for (const id of ids) for (const seed of seeds) single.set(`${id}/${seed}`, await complete(url, id, seed));
  for (const seed of seeds) assert.equal(new Set(ids.map((id) => single.get(`${id}/${seed}`))).size, ids.length, `seed ${seed}: outputs coincide`);
  const before = server.scheduler.metrics.largestBatch;
  const jobs = [...seeds, ...seeds].flatMap((seed) => ids.map((id) => ({ id, seed })));
  const texts = await Promise.all(jobs.map((j) => complete(url, j.id, j.seed)));
  jobs.forEach((j, i) => assert.equal(texts[i], single.get(`${j.id}/${j.seed}`), `${j.id} seed ${j.seed} under concurrency`));
  // The base, LoRA and PiSSA requests (12 of the 16) shared the base's scheduler: batches larger than any one model's 4 requests.
  assert.ok(before === 1 && server.scheduler.metrics.largestBatch > 4, `largest batch ${server.scheduler.metrics.largestBatch}`);
  // Each unmerged adapter's text is that of a server whose only model has it merged.
  const merged = await start(await loadModel(v6, { backend: "reference", adapters: [{ path: lora, alpha: 24 }] }), new Map());
  assert.equal(await complete(merged, NAME, 5), single.get(`${NAME}+lora/5`));
  const mergedPissa = await start(await loadModel(v6, { backend: "reference", adapters: [{ path: join(FIXTURES, "pissa.safetensors"), kind: "pissa", init: join(FIXTURES, "pissa_init.safetensors") }] }), new Map());
  assert.equal(await complete(mergedPissa, NAME, 4), single.get(`${NAME}+pissa/4`));
  // Embeddings run with the adapter too (the base model's hidden state under its factors).
  const embed = async (u: string, model: string) => {
    const r = await fetch(`${u}/v1/embeddings`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model, input: "First Citizen:" }) });
    assert.equal(r.status, 200);
    return ((await r.json()) as { data: Array<{ embedding: number[] }> }).data[0].embedding;
  };
  const eLora = await embed(url, `${NAME}+lora`), eMerged = await embed(merged, NAME), eBase = await embed(url, NAME);
  assert.ok(compare(eLora, eMerged, 1e-5, 0).ok, "unmerged LoRA embedding differs from the merged model's");
  assert.ok(!compare(eLora, eBase, 1e-3, 0).ok, "the LoRA did not change the embedding");
  // A repeated prompt hits its own adapter's prefix cache, never another's.
  const usage = async (model: string) => {
    const r = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ model, prompt: "Second Citizen: we", max_tokens: 1, seed: 1 }) });
    return ((await r.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } }).usage.prompt_tokens_details.cached_tokens;
  };
  assert.equal(await usage(`${NAME}+lora`), 0);
  assert.equal(await usage(`${NAME}+pissa`), 0, "pissa reused lora's cached state");
  assert.equal(await usage(NAME), 0, "the base reused an adapter's cached state");
  assert.ok(await usage(`${NAME}+lora`) > 0, "lora's own prompt was not cached");
});

test("rwkv serve --adapter: bad flags and adapters for another model stop with one line before listening", async (t) => {
  const v7 = sharedPath(t, "golden", "v7", "model.safetensors");
  if (!v7) return;
  const cases: Array<[string, RegExp]> = [
    ["noequals", /--adapter: expected NAME=PATH, got "noequals"/],
    ["bad name=x", /--adapter: name "bad name" must be/],
    [`a=${join(FIXTURES, "lora.safetensors")}`, /v6\/lora\.safetensors: tensor blocks\.0\.att\.receptance\.lora_A has shape \[4, 96\]/],
  ];
  const pissa = join(FIXTURES, "pissa.safetensors"), init = join(FIXTURES, "pissa_init.safetensors");
  const pissaCases: Array<[string[], RegExp]> = [
    [["--pissa-adapter", "noequals"], /--pissa-adapter: expected NAME=ADAPTER:INIT, got "noequals"/],
    [["--pissa-adapter", "p="], /--pissa-adapter: no ADAPTER:INIT after "p="/],
    [["--pissa-adapter", `p=${pissa}`], /--pissa-adapter: expected ADAPTER:INIT \(the trained file and its init_lora file\)/],
    [["--adapter", `p=${join(FIXTURES, "lora.safetensors")}`, "--pissa-adapter", `p=${pissa}:${init}`], /--pissa-adapter: name "p" is given twice/],
    [["--pissa-adapter", `p=${pissa}:${init}`], /v6\/pissa\.safetensors: tensor blocks\.\d+\.att\.\w+\.lora_A has shape/],
  ];
  for (const [flags, re] of [...cases.map(([f, re]): [string[], RegExp] => [["--adapter", f], re]), ...pissaCases]) {
    const r = await runCaptured(["serve", v7, "--port", "0", ...flags]);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, re);
    assert.equal(r.err.trim().split("\n").length, 1, r.err);
  }
});
