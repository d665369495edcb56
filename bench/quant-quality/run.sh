#!/bin/sh
# Bits per byte of the tiny rwkv.cpp models in ../shared in every storage type, against FP32.
# Usage (from the repository root, after `npm run build`):  bench/quant-quality/run.sh [DOCS]
# Writes converted models and the text under ${TMPDIR:-/tmp}/rwkv-quant-quality (never into the repo)
# and prints one Markdown table per model to stdout. DOCS: how many Wikipedia articles (default 20).
set -eu
SHARED=${RWKV_SHARED:-../shared}
DOCS=${1:-20}
WORK=${TMPDIR:-/tmp}/rwkv-quant-quality
RWKV="node dist/src/node/bin.js"
mkdir -p "$WORK"

# The text: the first $DOCS English Wikipedia articles of uncheatable_eval, joined by blank lines,
# reduced to ASCII so that the same characters also make a valid UTF-16LE file (the 6v0-1m model
# was trained on UTF-16LE bytes: on UTF-8 text it scores worse than chance).
node -e '
const fs = require("fs");
const docs = JSON.parse(fs.readFileSync(process.argv[1], "utf8")).slice(0, Number(process.argv[2]));
const text = docs.join("\n\n").replace(/[^\x00-\x7f]/g, "");
fs.writeFileSync(process.argv[3] + "/text-utf8.txt", text);
fs.writeFileSync(process.argv[3] + "/text-utf16le.txt", Buffer.from(text, "utf16le"));
' "$SHARED/data/uncheatable_eval/wikipedia_english_20240601to20240615.json" "$DOCS" "$WORK"

field() { node -e 'const r = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(r[process.argv[1]])' "$1"; }

for m in 4v0-660K 5v1-730K 5v2-730K 6v0-1m 7v0-834K; do
  src="$SHARED/rwkv.cpp/tiny-rwkv-$m-FP32.bin"
  text="$WORK/text-utf8.txt"
  [ "$m" = 6v0-1m ] && text="$WORK/text-utf16le.txt"
  echo "### tiny-rwkv-$m ($(wc -c < "$text" | tr -d ' ') bytes of $(basename "$text"))"
  echo
  echo "| format | how | file bytes | bits/byte | vs FP32 |"
  echo "|---|---|--:|--:|--:|"
  base=""
  for t in f32 f16 bf16 int8 q8_0 q5_1 q5_0 q4_1 q4_0; do
    case $t in
      f32|int8) file="$src"; how="the FP32 file"; [ $t = int8 ] && how="the FP32 file, \`eval --int8\`" ;;
      bf16) file="$WORK/$m-bf16.safetensors"; how="\`convert --dtype bf16\` (safetensors)" ;;
      *) file="$WORK/$m-$t.bin"; how="\`convert --dtype $t\` (rwkv.cpp .bin)" ;;
    esac
    [ "$file" != "$src" ] && $RWKV convert "$src" "$file" --dtype $t > /dev/null
    flags=""; [ $t = int8 ] && flags="--int8"
    bpb=$($RWKV eval "$file" --text "$text" $flags | field bitsPerByte)
    [ -z "$base" ] && base=$bpb
    bytes=$(wc -c < "$file" | tr -d ' ')
    node -e '
const [t, how, bytes, bpb, base] = process.argv.slice(1);
const d = Number(bpb) - Number(base);
const signed = (x, digits) => { const s = x.toFixed(digits); return Number(s) === 0 ? (0).toFixed(digits) : (x > 0 ? "+" : "") + s; };
const name = { f32: "FP32", f16: "FP16", bf16: "bf16", int8: "int8 (per row)" }[t] ?? t.toUpperCase();
const size = t === "int8" ? "- (quantized at load)" : Number(bytes).toLocaleString("en-US");
console.log(`| ${name} | ${how} | ${size} | ${Number(bpb).toFixed(4)} | ${t === "f32" ? "-" : `${signed(d, 4)} (${signed(100 * d / Number(base), 2)}%)`} |`);
' "$t" "$how" "$bytes" "$bpb" "$base"
  done
  echo
done
