import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { type TensorToWrite, writeSafetensors } from "../src/core/formats/safetensors.js";
import { runCli } from "../src/node/cli.js";
import { loadCheckpoint } from "../src/node/load.js";
import { loadTokenizer } from "../src/node/tokenizer.js";
import { sharedPath } from "./shared.js";

const WORLD_V = 65536;

test("a GGUF with llama.cpp's rwkv tokenizer needs no vocabulary file", async (t) => {
  const golden = sharedPath(t, "golden", "v7", "model.safetensors");
  const vocabFile = sharedPath(t, "tokenizers", "rwkv_vocab_v20230424.txt");
  if (!golden || !vocabFile) return;
  const dir = mkdtempSync(join(tmpdir(), "rwkv-gguf-tok-"));
  // The golden v7 model with its embedding and head widened to the World vocabulary.
  const { checkpoint, close } = loadCheckpoint(golden);
  let seed = 1;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * 0.1;
  const tensors: TensorToWrite[] = [...checkpoint.tensors.values()].map((e) => {
    let data = e.toFloat32(), shape = e.shape;
    if (e.name === "emb.weight" || e.name === "head.weight") { shape = [WORLD_V, e.shape[1]]; data = new Float32Array(WORLD_V * e.shape[1]).map(rand); }
    return { name: e.name, dtype: "f32", shape, data: new Uint8Array(data.buffer) };
  });
  close();
  const st = join(dir, "world.safetensors");
  writeFileSync(st, Buffer.concat(writeSafetensors(tensors)));
  const gguf = join(dir, "world.gguf");
  const io = { stdout: () => {}, stderr: (s: string) => { err += s; } };
  let err = "";
  assert.equal(await runCli(["convert", st, gguf, "--dtype", "f16", "--tokenizer", vocabFile], io), 0, err);

  // No --tokenizer, and no vocabulary file beside the .gguf: the embedded one is used.
  const embedded = loadTokenizer({ vocabSize: WORLD_V, modelPath: gguf });
  const reference = loadTokenizer({ kind: "world", path: vocabFile });
  for (const text of ["Hello world", "User: 你好\n\nAssistant:", "naïve café 🙂 <|endoftext|>"]) {
    assert.deepEqual(embedded.encode(text), reference.encode(text), text);
    assert.equal(embedded.decode(reference.encode(text)), text);
  }
  let out = "";
  err = "";
  const code = await runCli(["generate", gguf, "--prompt", "Hello", "--max-tokens", "3", "--greedy"], { stdout: (s) => { out += s; }, stderr: (s) => { err += s; } });
  assert.equal(code, 0, err);
  assert.ok(out.length > 0);
});
