/* global process, console */
// The side-by-side benchmark against rwkv.cpp and llama.cpp (see README.md). run.sh builds the
// tools and calls this with their paths; this makes the model files, runs every (format, threads)
// row for each engine in its own process, engines and formats alternating, several rounds, and
// prints the medians and the ratios ours / theirs.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: o } = parseArgs({
  options: {
    repo: { type: "string" }, shared: { type: "string" }, work: { type: "string" }, rwkvcpp: { type: "string" }, llama: { type: "string" },
    rounds: { type: "string", default: "3" }, threads: { type: "string", default: "1,2" },
    formats: { type: "string", default: "FP32,FP16,Q8_0,Q5_1,Q4_0" }, gguf: { type: "string", default: "F16,Q8_0,Q4_0" },
    layers: { type: "string", default: "12" }, embd: { type: "string", default: "768" }, vocab: { type: "string", default: "65536" },
    prefill: { type: "string", default: "64,512" }, decode: { type: "string", default: "64" }, reps: { type: "string", default: "3" },
    json: { type: "string" },
  },
});
for (const k of ["repo", "shared", "work", "rwkvcpp"]) if (!o[k]) { console.error(`run.mjs: --${k} is required (use run.sh)`); process.exit(2); }
const list = (s) => (s ? s.split(",").map((x) => x.trim()).filter(Boolean) : []);
const rounds = Number(o.rounds), threadsList = list(o.threads).map(Number), prefill = list(o.prefill).map(Number);
const decode = Number(o.decode), reps = Number(o.reps);
const shape = { layers: Number(o.layers), embd: Number(o.embd), vocab: Number(o.vocab) };
const formats = list(o.formats), ggufTypes = o.llama ? list(o.gguf) : [];
const QUANT = new Set(["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]);
for (const f of formats) if (f !== "FP32" && f !== "FP16" && !QUANT.has(f)) { console.error(`run.mjs: unknown format ${f}`); process.exit(2); }

const models = join(o.work, "models");
mkdirSync(models, { recursive: true });
const base = `v7-${shape.layers}x${shape.embd}-v${shape.vocab}`;
const file = (f) => join(models, `${base}-${f}.bin`);
const bin = join(o.repo, "dist/src/node/bin.js");
const log = (s) => process.stderr.write(s + "\n");

// ---- model files: numpy writes FP32/FP16, rwkv.cpp's quantizer the rest, `rwkv convert` the GGUFs.
function make(f) {
  const out = file(f);
  if (existsSync(out)) return out;
  if (f === "FP32" || f === "FP16") {
    log(`making ${out}`);
    execFileSync(process.env.PYTHON ?? "/usr/bin/python3", [join(o.shared, "bench/make_random_model.py"), "--arch", "7", "--n_layer", String(shape.layers),
      "--n_embd", String(shape.embd), "--vocab", String(shape.vocab), "--head_size", "64", "--seed", "1234", "--dtype", f, "--out", out + ".tmp"], { stdio: "pipe" });
  } else {
    log(`quantizing ${out}`);
    execFileSync(join(o.rwkvcpp, "quantize"), [make("FP32"), out + ".tmp", f], { stdio: "pipe" });
  }
  execFileSync("mv", [out + ".tmp", out]);
  return out;
}
function makeGguf(t) {
  const out = join(models, `${base}-${t}.gguf`);
  if (existsSync(out)) return out;
  log(`converting ${out}`);
  const args = [bin, "convert", make("FP32"), out, "--dtype", t.toLowerCase()];
  if (shape.vocab === 65536) args.push("--tokenizer", join(o.shared, "tokenizers/rwkv_vocab_v20230424.txt"));
  execFileSync(process.execPath, args, { stdio: "pipe" });
  return out;
}

/** Tokens per second with two significant digits at least (a 2.9B model decodes at 3-8). */
const tokS = (x) => x.toFixed(x < 10 ? 1 : 0);

// ---- one measurement = one process; each returns { decode, prefill: {len: tok/s}, rssMb }.
// A 1-thread run is pinned to one vCPU (BENCH_CPU, default 0) for every engine: on this VM one of the
// two vCPUs runs at ~60% of the other's speed for long stretches, and an unpinned process lands on
// either by chance (bench/commits/README.md).
function runJson(threads, cmd, args, cwd) {
  if (threads === 1) [cmd, args] = ["taskset", ["-c", process.env.BENCH_CPU ?? "0", cmd, ...args]];
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status ?? r.signal}):\n${r.stderr.slice(-2000)}`);
  const out = r.stdout.trim();
  try { return JSON.parse(out); } catch { return JSON.parse(out.split("\n").pop()); } // one document, or a last JSON line
}
function rwkvcpp(path, threads) {
  // One call for decode and the first prefill length, one per further length (bench_rwkv takes one).
  const prefillTokS = {};
  let decodeTokS = 0, rssMb = 0;
  prefill.forEach((len, i) => {
    const j = runJson(threads, join(o.rwkvcpp, "bench_rwkv"), [path, String(threads), String(i === 0 ? decode : 0), String(len), String(reps), "0", "0", "0"]);
    if (j.nonfinite_logits !== 0) throw new Error(`rwkv.cpp: ${j.nonfinite_logits} non-finite logits on ${path}`);
    if (i === 0) decodeTokS = j.serial_tok_s;
    prefillTokS[len] = j.seq_tok_s;
    rssMb = Math.max(rssMb, j.max_rss_mb);
  });
  return { decode: decodeTokS, prefill: prefillTokS, rssMb };
}
function ours(path, threads) {
  const j = runJson(threads, process.execPath, [bin, "bench", path, "--dtype", "stored", "--threads", String(threads), "--runs", String(reps),
    "--decode-tokens", String(decode), "--prefill", prefill.join(","), "--json"]);
  const row = j.rows[0];
  return { decode: row.decode.median, prefill: Object.fromEntries(prefill.map((n) => [n, row.prefill[String(n)].median])), rssMb: row.peakRssBytes / 1e6 };
}
function llama(path, threads) {
  const j = runJson(threads, process.execPath, [join(o.llama, "llama.mjs"), path, String(threads), String(decode), prefill.join(","), String(reps), String(shape.vocab)], o.llama);
  return { decode: j.decodeTokS, prefill: j.prefillTokS, rssMb: j.peakRssMb };
}

// ---- the rounds: rows (file x threads) in turn; within a row the engines alternate who goes first.
const tables = [
  { name: "rwkv.cpp", them: rwkvcpp, rows: formats.map((f) => ({ label: f, path: make(f) })) },
  { name: "llama.cpp", them: llama, rows: ggufTypes.map((t) => ({ label: `GGUF ${t}`, path: makeGguf(t) })) },
].filter((t) => t.rows.length > 0);
const results = {}; // key -> { ours: [...], them: [...] }
const key = (table, label, threads) => `${table}|${label}|${threads}`;
for (let r = 0; r < rounds; r++) {
  for (const table of tables) {
    const rows = r % 2 === 0 ? table.rows : [...table.rows].reverse();
    for (const row of rows) {
      for (const threads of threadsList) {
        const k = key(table.name, row.label, threads);
        results[k] ??= { ours: [], them: [] };
        const runs = [["ours", () => ours(row.path, threads)], ["them", () => table.them(row.path, threads)]];
        if ((r + threadsList.indexOf(threads)) % 2 === 1) runs.reverse();
        for (const [who, fn] of runs) {
          const res = fn();
          results[k][who].push(res);
          log(`round ${r + 1}/${rounds} ${table.name} ${row.label} ${threads} thr ${who === "ours" ? "rwkv-ts" : table.name}: decode ${res.decode.toFixed(1)}, ` +
            prefill.map((n) => `prefill${n} ${res.prefill[n].toFixed(1)}`).join(", ") + `, RSS ${res.rssMb.toFixed(0)} MB`);
        }
      }
    }
  }
}

// ---- medians and the table.
const median = (v) => { const s = [...v].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const summary = [];
for (const table of tables) {
  console.log(`\n## rwkv-ts vs ${table.name} (random v7 ${shape.layers} x ${shape.embd}, vocab ${shape.vocab}; ${rounds} rounds, medians; ratio = ours / ${table.name} tok/s)\n`);
  const cols = threadsList.flatMap((t) => [`decode ${t} thr`, ...prefill.map((n) => `prefill-${n} ${t} thr`)]);
  console.log(`| format | ${cols.join(" | ")} | peak RSS ours / ${table.name} (MB) | file (MB) |`);
  console.log(`|---|${cols.map(() => "---").join("|")}|---|---|`);
  for (const row of table.rows) {
    const cells = [];
    let rssOurs = 0, rssThem = 0;
    for (const threads of threadsList) {
      const res = results[key(table.name, row.label, threads)];
      const m = (who, pick) => median(res[who].map(pick));
      const metrics = [["decode", (x) => x.decode], ...prefill.map((n) => [`prefill${n}`, (x) => x.prefill[n]])];
      for (const [name, pick] of metrics) {
        const a = m("ours", pick), b = m("them", pick);
        cells.push(`${(a / b).toFixed(2)}x (${tokS(a)} / ${tokS(b)})`);
        summary.push({ table: table.name, format: row.label, threads, metric: name, ours: a, them: b, ratio: a / b });
      }
      rssOurs = Math.max(rssOurs, ...res.ours.map((x) => x.rssMb));
      rssThem = Math.max(rssThem, ...res.them.map((x) => x.rssMb));
    }
    const fileMb = Number(execFileSync("stat", ["-c", "%s", row.path], { encoding: "utf8" })) / 1e6;
    console.log(`| ${row.label} | ${cells.join(" | ")} | ${rssOurs.toFixed(0)} / ${rssThem.toFixed(0)} | ${fileMb.toFixed(0)} |`);
    summary.push({ table: table.name, format: row.label, metric: "peakRssMb", ours: rssOurs, them: rssThem, fileMb });
  }
}
const behind = summary.filter((s) => s.ratio !== undefined && s.ratio < 1);
console.log(`\ncells behind (< 1.0x): ${behind.length} of ${summary.filter((s) => s.ratio !== undefined).length}`);
if (o.json) writeFileSync(o.json, JSON.stringify({ date: new Date().toISOString(), shape, rounds, threads: threadsList, prefill, decode, reps, results, summary }, null, 2));
