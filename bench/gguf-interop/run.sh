#!/usr/bin/env bash
# GGUF interop check: writes GGUF files with `rwkv convert`, loads them in llama.cpp through
# node-llama-cpp (installed into a throw-away directory, never into this project), and compares
# llama.cpp's next-token logits with this project's for the same tokens. See README.md.
#
#   bench/gguf-interop/run.sh [NODE_LLAMA_CPP_VERSION]      (default 3.22.1)
#
# Needs network access to the npm registry (node-llama-cpp ships prebuilt llama.cpp binaries as
# npm packages) and ../shared (or RWKV_SHARED) for the models.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${RWKV_SHARED:-$repo/../shared}
version=${1:-3.22.1}
work=$(mktemp -d "${TMPDIR:-/tmp}/rwkv-gguf-interop.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== building rwkv-ts"
(cd "$repo" && npx tsc -p .)
rwkv() { node "$repo/dist/src/node/bin.js" "$@"; }

echo "== writing GGUF files into $work"
# Golden random models (vocab 512: byte-level tokens plus unused padding ids).
for v in v6 v7; do
  for d in f32 q8_0; do rwkv convert "$shared/golden/$v/model.safetensors" "$work/golden-$v-$d.gguf" --dtype "$d" 2>/dev/null; done
done
node -e 'process.stdout.write(JSON.stringify(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).tokens))' \
  "$shared/golden/v7/golden.json" > "$work/golden-tokens.json"
# Trained tiny rwkv.cpp models (byte vocabulary), every output type.
for m in 6v0-1m 7v0-834K; do
  for d in f32 f16 bf16 q8_0 q5_1 q5_0 q4_1 q4_0; do
    rwkv convert "$shared/rwkv.cpp/tiny-rwkv-$m-FP32.bin" "$work/tiny-$m-$d.gguf" --dtype "$d" 2>/dev/null
  done
done
printf '"in the beginning was' | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.stringify([...Buffer.from(s)])))' > "$work/byte-tokens.json"

echo "== installing node-llama-cpp@$version into $work (not into the project)"
(cd "$work" && echo '{"name":"rwkv-gguf-interop","private":true,"type":"module"}' > package.json \
  && npm install "node-llama-cpp@$version" --no-audit --no-fund --loglevel=error)
cp "$here/compare.mjs" "$work/"

echo "== golden models (random weights), tokens from golden.json"
(cd "$work" && node compare.mjs "$repo/dist" golden-tokens.json golden-*.gguf)
echo "== trained rwkv.cpp models, tokens = the bytes of '\"in the beginning was'"
(cd "$work" && node compare.mjs "$repo/dist" byte-tokens.json tiny-*.gguf)
