import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { test } from "node:test";
import { openCheckpoint } from "../src/core/formats/open.js";
import type { ModelConfig } from "../src/core/model/model.js";
import { checkpointShapes } from "../src/core/model/shapes.js";
import { detectFromNames, VERSIONS, versionModule } from "../src/core/model/versions.js";
import { loadCheckpoint } from "../src/node/load.js";
import { FileSource } from "../src/node/file-source.js";
import { readJson, sharedPath } from "./shared.js";

/*
 * The version registry: version knowledge lives in the version modules only (a grep over src, as
 * issue 12 states it), and the registry detects and sizes every golden model as its manifest says.
 */

const SRC = join(import.meta.dirname, "..", "..", "src");
/** The version modules, the only places allowed to name a version. */
const VERSION_MODULE_DIR = /^core\/model\/v\d[^/]*\//;
/** The registry itself lists the modules. */
const REGISTRY = "core/model/versions.ts";
/** Issue 12's acceptance grep. */
const VERSION_COMPARISON = /version\s*[!=]==|case "(4|5\.1|5\.2|6|7)"/;
/** A list of version ids written out (e.g. ["4", "5.2", "6", "7"]). */
const VERSION_LIST = /"(4|5\.1|5\.2|6|7)"\s*,\s*"(4|5\.1|5\.2|6|7)"/;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? sourceFiles(p) : /\.(ts|mjs|js)$/.test(n) ? [p] : [];
  });
}

test("no version comparison, version case or version list outside the version modules", () => {
  const files = sourceFiles(SRC);
  assert.ok(files.length > 50, `found ${files.length} source files under ${SRC}`);
  const hits: string[] = [];
  let scanned = 0;
  for (const file of files) {
    const rel = relative(SRC, file).split("\\").join("/");
    if (VERSION_MODULE_DIR.test(rel) || rel === REGISTRY) continue;
    scanned++;
    readFileSync(file, "utf8").split("\n").forEach((line, i) => {
      if (VERSION_COMPARISON.test(line) || VERSION_LIST.test(line)) hits.push(`src/${rel}:${i + 1}: ${line.trim()}`);
    });
  }
  assert.ok(scanned > 50);
  assert.deepEqual(hits, [], "version knowledge belongs in src/core/model/vN/ (see versions.ts)");
});

test("the grep finds what it is meant to find (it is not vacuous)", () => {
  assert.ok(VERSION_COMPARISON.test(`if (cfg.version === "7") {`));
  assert.ok(VERSION_COMPARISON.test(`    case "5.2": H = 1;`));
  assert.ok(VERSION_LIST.test(`const V = ["4", "5.2", "6"];`));
  assert.ok(!VERSION_COMPARISON.test(`if (fileVersion !== FORMAT_VERSION)`));
});

test("registry: ids unique, every module's detection claims only its own kind of names", () => {
  const ids = VERSIONS.map((v) => v.id);
  assert.deepEqual([...new Set(ids)], ids);
  assert.deepEqual([...ids].sort(), ["4", "5.1", "5.2", "6", "7", "7a", "7b", "8", "8-hybrid"]);
  for (const v of VERSIONS) assert.equal(versionModule(v.id), v);
  // A module's own layout is detected as that module (the newest-first order resolves overlaps).
  for (const v of VERSIONS) {
    if (!v.layout) continue;
    const cfg: ModelConfig = { version: v.id, nLayer: 2, nEmbd: 128, vocabSize: 64, dimAtt: 128, dimFfn: v.defaultDimFfn(128), nHead: v.heads ? 2 : 1, headSize: v.heads ? 64 : 128 };
    const names = new Set(v.layout(cfg).map((t) => t.name));
    assert.equal(detectFromNames((n) => names.has(n), "layout").id, v.id);
  }
  assert.throws(() => detectFromNames(() => false, "empty"), /emb\.weight/);
  assert.throws(() => detectFromNames((n) => n === "emb.weight", "bare"), /unrecognised RWKV checkpoint/);
});

interface GoldenManifest {
  version: string;
  config: { n_layer: number; n_embd: number; dim_att: number; dim_ffn: number; vocab_size: number; head_size?: number; n_head?: number };
  checkpoint: { tensors: Array<{ name: string; shape: number[] }> };
}

/** The id the manifest's version means ("6.0" is 6). */
const GOLDEN_VERSION: Record<string, string> = { "4": "4", "5.2": "5.2", "6.0": "6", "7": "7" };

for (const ver of ["v4", "v5", "v6", "v7"]) {
  test(`golden ${ver}: the registry detects its version and infers the manifest's config; its layout lists the same tensors`, (t) => {
    const dir = sharedPath(t, "golden", ver);
    if (!dir) return;
    const g = readJson<GoldenManifest>(join(dir, "golden.json"));
    const src = new FileSource(join(dir, "model.safetensors"));
    try {
      const ckpt = openCheckpoint(src);
      const m = detectFromNames((n) => ckpt.tensors.has(n), ckpt.source);
      assert.equal(m.id, GOLDEN_VERSION[g.version]);
      const cfg = m.inferConfig(checkpointShapes(ckpt));
      const c = g.config;
      const H = c.n_head ?? 1;
      assert.deepEqual(cfg, {
        version: m.id, nLayer: c.n_layer, nEmbd: c.n_embd, vocabSize: c.vocab_size, dimAtt: c.dim_att, dimFfn: c.dim_ffn,
        nHead: H, headSize: c.head_size ?? c.dim_att,
      });
      // Names in RWKV-LM's state-dict order; shapes too, except v7's LoRA widths (the golden model picks its own).
      const layout = m.layout!(cfg);
      assert.deepEqual(layout.map((x) => x.name), g.checkpoint.tensors.map((x) => x.name));
      for (const [i, x] of layout.entries()) {
        if (m.id === "7" && /\.att\.[wavg][12]$/.test(x.name)) continue;
        assert.deepEqual([...x.shape], g.checkpoint.tensors[i].shape, x.name);
      }
    } finally {
      src.close();
    }
  });
}

/** The generations after RWKV-7, from the official demo files (test/fixtures/golden, in the repository). */
const NEXT_GEN_FIXTURES = join(import.meta.dirname, "..", "..", "test", "fixtures", "golden");
/** The id each fixture's `generation` means. */
const NEXT_GEN_VERSION: Record<string, string> = { v7a: "7a", v7b: "7b", v8: "8", "v8-hybrid": "8-hybrid" };

interface NextGenManifest {
  generation: string;
  config: { n_layer: number; n_embd: number; dim_ffn: number; vocab_size: number; head_size: number; n_head: number };
}

test("every golden fixture of test/fixtures/golden is detected by the registry as its generation, with the manifest's config and the module's layout", () => {
  const dirs = readdirSync(NEXT_GEN_FIXTURES).filter((d) => statSync(join(NEXT_GEN_FIXTURES, d)).isDirectory());
  assert.deepEqual(dirs.sort(), Object.keys(NEXT_GEN_VERSION).sort(), "a fixture without an expected version (or one missing)");
  let checked = 0;
  for (const gen of dirs) {
    for (const shape of readdirSync(join(NEXT_GEN_FIXTURES, gen))) {
      const dir = join(NEXT_GEN_FIXTURES, gen, shape);
      const g = readJson<NextGenManifest>(join(dir, "golden.json"));
      assert.equal(g.generation, gen);
      const { checkpoint: ckpt, close } = loadCheckpoint(join(dir, "model.safetensors"));
      try {
        const m = detectFromNames((n) => ckpt.tensors.has(n), ckpt.source);
        assert.equal(m.id, NEXT_GEN_VERSION[gen], `${gen}/${shape}`);
        assert.equal(m.preview, true, `${gen} is a research preview`);
        const cfg = m.inferConfig(checkpointShapes(ckpt));
        const c = g.config;
        assert.deepEqual(cfg, {
          version: m.id, nLayer: c.n_layer, nEmbd: c.n_embd, vocabSize: c.vocab_size, dimAtt: c.n_embd, dimFfn: c.dim_ffn, nHead: c.n_head, headSize: c.head_size,
        });
        // The layout has the file's tensors, shapes included (but RWKV-7's LoRA widths, which the demo picks);
        // as a set: the fixtures were saved with ln0 first, RWKV-LM's state dict (the layout's order) after ln1/ln2.
        const layout = new Map(m.layout!(cfg).map((x) => [x.name, x.shape]));
        assert.deepEqual([...layout.keys()].sort(), [...ckpt.tensors.keys()].sort(), `${gen}/${shape} tensor names`);
        for (const [name, t] of ckpt.tensors) {
          if (/\.att\.[wavg][12]$/.test(name)) continue;
          assert.deepEqual([...layout.get(name)!], [...t.shape], `${gen}/${shape} ${name}`);
        }
        // Random models of it are built from that layout (rwkv bench --random goes through the registry).
        assert.ok(m.randomRange && m.randomOverride, `${gen}: random models`);
        assert.equal(m.gguf, undefined, `${gen}: no GGUF architecture (refused by name)`);
        checked++;
      } finally {
        close();
      }
    }
  }
  assert.equal(checked, 8);
});
