import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

/*
 * The kernel layer (src/core/backend: both halves of the kernel table, inference and training)
 * sits below training (src/core/train: the graph, trainer, optimizer), and neither folder's
 * modules import each other in a cycle (type imports included). Read from the TypeScript sources,
 * since the compiled JavaScript drops type-only imports.
 */

const CORE = join(import.meta.dirname, "..", "..", "src", "core");
const TRAIN_SRC = join(CORE, "train");
const BACKEND_SRC = join(CORE, "backend");

/** Sibling modules each file of `dir` imports (`from "./x.js"`, type-only or not), by file name. */
function importGraph(dir: string): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const f of readdirSync(dir).filter((n) => n.endsWith(".ts"))) {
    const src = readFileSync(join(dir, f), "utf8");
    const deps = [...src.matchAll(/^(?:import|export)\b[^;]*?\bfrom\s+"\.\/([\w-]+)\.js"/gms)].map((m) => `${m[1]}.ts`);
    graph.set(f, deps);
  }
  return graph;
}

/** One cycle (as a path a -> … -> a) or null, by depth-first search. */
function findCycle(graph: Map<string, string[]>): string[] | null {
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (n: string): string[] | null => {
    if (state.get(n) === "done") return null;
    if (state.get(n) === "open") return [...path.slice(path.indexOf(n)), n];
    state.set(n, "open");
    path.push(n);
    for (const d of graph.get(n) ?? []) {
      const c = visit(d);
      if (c) return c;
    }
    path.pop();
    state.set(n, "done");
    return null;
  };
  for (const n of graph.keys()) {
    const c = visit(n);
    if (c) return c;
  }
  return null;
}

test("the cycle finder finds a cycle where there is one (a -> b -> c -> a) and none in a chain", () => {
  assert.deepEqual(findCycle(new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]]])), ["a", "b", "c", "a"]);
  assert.equal(findCycle(new Map([["a", ["b"]], ["b", ["c"]], ["c", []]])), null);
});

test("src/core/train and src/core/backend have no import cycle (type imports included)", () => {
  const train = importGraph(TRAIN_SRC), backend = importGraph(BACKEND_SRC);
  assert.ok(train.has("graph.ts") && backend.has("buffers.ts"), `sources not found in ${CORE}`);
  assert.ok(backend.get("train-kernels.ts")!.includes("train-ops.ts"), "the import parser missed train-kernels.ts -> train-ops.ts");
  assert.deepEqual(backend.get("buffers.ts"), [], "buffers.ts must import nothing from backend/");
  // wasm-tensors.ts is the tensor half of the WasmBackend class in wasm.ts (it takes the backend
  // instance and its job ids): one module in two files, so that pair's mutual import is the one
  // left out here; any other cycle fails.
  assert.ok(backend.get("wasm-tensors.ts")!.includes("wasm.ts") && backend.get("wasm.ts")!.includes("wasm-tensors.ts"));
  backend.set("wasm-tensors.ts", backend.get("wasm-tensors.ts")!.filter((d) => d !== "wasm.ts"));
  for (const graph of [train, backend]) {
    const cycle = findCycle(graph);
    assert.equal(cycle, null, `import cycle: ${cycle?.join(" -> ")}`);
  }
});

test("the kernel layer imports nothing from training: src/core/backend never imports src/core/train", () => {
  for (const f of readdirSync(BACKEND_SRC, { recursive: true }).map(String).filter((n) => n.endsWith(".ts"))) {
    const src = readFileSync(join(BACKEND_SRC, f), "utf8");
    assert.doesNotMatch(src, /\bfrom\s+"[./]*\/train\//, `backend/${f} imports from train/`);
  }
  assert.match('import { x } from "../train/graph.js";', /\bfrom\s+"[./]*\/train\//, "the pattern finds such an import");
});

test("one worker spawner: under src/node, only threads/spawn.ts starts kernel workers (inference and training alike)", () => {
  const threads = join(import.meta.dirname, "..", "..", "src", "node", "threads");
  const starters = readdirSync(threads).filter((f) => f.endsWith(".ts") && /new Worker\(/.test(readFileSync(join(threads, f), "utf8")));
  assert.deepEqual(starters, ["spawn.ts"]);
  // One pool: the inference backends and their training kernel sets are made in pool.ts alone.
  assert.deepEqual(readdirSync(threads).filter((f) => f.endsWith(".ts")).sort(), ["pool.ts", "spawn.ts", "worker.ts"]);
  const pool = readFileSync(join(threads, "pool.ts"), "utf8");
  assert.match(pool, /spawn: spawnKernelWorker/, "pool.ts does not start its workers through spawn.ts");
  assert.match(pool, /trainingKernels\(/, "pool.ts does not make the training kernels from its backends");
});
