import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

/*
 * The modules of src/core/train import each other without a cycle (type imports included): the
 * storage primitives (buffers.ts) sit below the ops, the WKV recurrences and the parameters, and
 * the kernel sets sit above them. Read from the TypeScript sources, since the compiled JavaScript
 * drops type-only imports.
 */

const TRAIN_SRC = join(import.meta.dirname, "..", "..", "src", "core", "train");

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

test("src/core/train has no import cycle (type imports included)", () => {
  const graph = importGraph(TRAIN_SRC);
  assert.ok(graph.has("kernels.ts") && graph.has("buffers.ts"), `sources not found in ${TRAIN_SRC}`);
  assert.ok(graph.get("kernels.ts")!.includes("ops.ts"), "the import parser missed kernels.ts -> ops.ts");
  assert.deepEqual(graph.get("buffers.ts"), [], "buffers.ts must import nothing from train/");
  const cycle = findCycle(graph);
  assert.equal(cycle, null, `import cycle: ${cycle?.join(" -> ")}`);
});

test("one worker spawner: under src/node, only threads/spawn.ts starts kernel workers (inference and training alike)", () => {
  const threads = join(import.meta.dirname, "..", "..", "src", "node", "threads");
  const starters = readdirSync(threads).filter((f) => f.endsWith(".ts") && /new Worker\(/.test(readFileSync(join(threads, f), "utf8")));
  assert.deepEqual(starters, ["spawn.ts"]);
  for (const f of ["pool.ts", "train-pool.ts"]) {
    assert.match(readFileSync(join(threads, f), "utf8"), /spawn: spawnKernelWorker/, `${f} does not start its workers through spawn.ts`);
  }
});
