import { execFileSync } from "node:child_process";
import { closeSync, existsSync, openSync, readSync, renameSync, statSync, writeSync } from "node:fs";
import { crc32 } from "../../src/core/crc32.js";
import { pthChunks } from "../../src/core/formats/pth-writer.js";
import { randomCheckpoint } from "../../src/core/model/random.js";
import { loadModel } from "../../src/node/load.js";

// node dist/bench/load-verify/run.js FILE.pth [RUNS]
// What the load-time integrity checks cost (bench/fuzz/README.md): writes FILE.pth once (a
// random RWKV-7, 12 layers x 768, vocabulary 65536, f32: 764 MB), then loads it RUNS times
// (default 5) with checks on and off, alternating, each in a fresh process (the wasm backend's
// memory is not returned between loads), and prints medians; plus CRC-32 alone over the file.

const SPEC = { version: "7", nLayer: 12, nEmbd: 768, vocabSize: 65536, seed: 1 } as const;
const CHUNK = 64 * 1024 * 1024;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function writeModel(path: string): void {
  const ckpt = randomCheckpoint(SPEC);
  const tensors = [...ckpt.tensors.values()].map((t) => ({ name: t.name, shape: t.shape, dtype: "f32" as const, data: () => new Uint8Array(t.toFloat32().buffer) }));
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, "w");
  try {
    for (const c of pthChunks(tensors)) for (let o = 0; o < c.length;) o += writeSync(fd, c, o, c.length - o);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

function crcSeconds(path: string): number {
  const fd = openSync(path, "r");
  const buf = new Uint8Array(CHUNK);
  let crcTime = 0, pos = 0, c = 0;
  try {
    for (let n; (n = readSync(fd, buf, 0, CHUNK, pos)) > 0; pos += n) {
      const t = performance.now();
      c = crc32(buf.subarray(0, n), c);
      crcTime += performance.now() - t;
    }
  } finally {
    closeSync(fd);
  }
  return crcTime / 1000;
}

/** Seconds one load takes in a child process (default backend, 1 thread). */
function timedLoad(path: string, verify: boolean): number {
  const out = execFileSync(process.execPath, [process.argv[1], "--one", path, String(verify)], { encoding: "utf8" });
  return Number(out.trim());
}

async function main(): Promise<void> {
  if (process.argv[2] === "--one") {
    const t = performance.now();
    await loadModel(process.argv[3], { verify: process.argv[4] === "true", threads: 1 });
    process.stdout.write(`${(performance.now() - t) / 1000}\n`);
    return;
  }
  const [path, runsArg] = process.argv.slice(2);
  if (!path) { process.stderr.write("usage: node dist/bench/load-verify/run.js FILE.pth [RUNS]\n"); process.exit(2); }
  const runs = Number(runsArg ?? 5);
  if (!existsSync(path)) writeModel(path);
  const mb = statSync(path).size / 1e6;
  const on: number[] = [], off: number[] = [], crc: number[] = [];
  for (let i = 0; i < runs; i++) {
    for (const verify of i % 2 ? [false, true] : [true, false]) (verify ? on : off).push(timedLoad(path, verify));
    crc.push(crcSeconds(path));
  }
  const f = (x: number) => x.toFixed(2);
  process.stdout.write(`${path}: ${mb.toFixed(0)} MB, ${runs} runs each, medians\n`);
  process.stdout.write(`  load, checks on (CRC-32 + NaN pass + first step): ${f(median(on))} s   [${on.map(f).join(" ")}]\n`);
  process.stdout.write(`  load, --no-verify:                                ${f(median(off))} s   [${off.map(f).join(" ")}]\n`);
  process.stdout.write(`  CRC-32 alone over the file:                       ${f(median(crc))} s (${(mb / median(crc)).toFixed(0)} MB/s)\n`);
}

await main();
