import assert from "node:assert/strict";
import { test } from "node:test";
import { referenceBackend } from "../src/core/backend/reference.js";
import { benchModel } from "../src/node/bench/measure.js";
import { RwkvServer } from "../src/node/server/server.js";
import { loadTokenizer } from "../src/node/tokenizer.js";

/*
 * The server stays responsive while it generates: the scheduler awaits each model call and gives
 * the event loop a turn between batched steps, so /health and /v1/models are answered while a
 * long completion is still streaming, not after it. Model: a random RWKV-7 over the byte
 * vocabulary (no stop token, so the completion runs to max_tokens).
 */

const TOKENS = 1000;

test("/health and /v1/models answer while another request is generating", async () => {
  const model = benchModel({ random: { version: "7", nLayer: 1, nEmbd: 64, vocabSize: 256, seed: 9 } }, "f32", referenceBackend);
  const server = new RwkvServer({ model, tokenizer: loadTokenizer({ kind: "bytes" }), modelName: "random", port: 0, maxTokensLimit: TOKENS });
  const { port } = await server.listen();
  const url = `http://127.0.0.1:${port}`;
  try {
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "random", prompt: "Once", max_tokens: TOKENS, stream: true, seed: 3 }),
    });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    let streamed = 0, finished = false;
    await reader.read(); // the first chunk: generation is under way
    const drain = (async () => {
      for (;;) {
        const r = await reader.read();
        if (r.done) break;
        streamed += r.value.length;
      }
      finished = true;
    })();

    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    const healthWhileRunning = !finished;
    const models = await fetch(`${url}/v1/models`);
    assert.equal(models.status, 200);
    const ids = ((await models.json()) as { data: Array<{ id: string }> }).data.map((m) => m.id);
    const modelsWhileRunning = !finished;
    await drain;
    assert.ok(ids.includes("random"), `models: ${ids.join(", ")}`);
    assert.ok(healthWhileRunning, "/health was answered only after the completion had finished");
    assert.ok(modelsWhileRunning, "/v1/models was answered only after the completion had finished");
    assert.ok(streamed > TOKENS, `the completion streamed ${streamed} bytes for ${TOKENS} tokens`);
  } finally {
    await server.shutdown(0);
  }
});
