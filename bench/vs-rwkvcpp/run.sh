#!/usr/bin/env bash
# Side by side with rwkv.cpp and llama.cpp on the same files (README.md beside this script):
#
#   bench/vs-rwkvcpp/run.sh [--rounds 3] [--threads 1,2] [--formats FP32,FP16,Q8_0,Q5_1,Q4_0]
#                           [--gguf F16,Q8_0,Q4_0 | --no-llama] [--layers 12 --embd 768 --vocab 65536]
#                           [--prefill 64,512] [--decode 64] [--reps 3] [--json OUT.json]
#
# Scratch directory: $RWKV_VS_WORK (default ${TMPDIR:-/tmp}/rwkv-vs-rwkvcpp), kept between runs so the
# rwkv.cpp build, the model files and node-llama-cpp are made once. Needs cmake, a C compiler,
# /usr/bin/python3 with numpy (Debian python3-numpy) and the npm registry (node-llama-cpp).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=$(cd "${RWKV_SHARED:-$repo/../shared}" && pwd)
work=${RWKV_VS_WORK:-${TMPDIR:-/tmp}/rwkv-vs-rwkvcpp}
llama_version=${NODE_LLAMA_CPP_VERSION:-3.22.1}
mkdir -p "$work"

args=() llama=1
for a in "$@"; do
  if [ "$a" = "--no-llama" ]; then llama=0; else args+=("$a"); fi
done

echo "== building rwkv-ts" >&2
[ -f "$repo/dist/src/node/bin.js" ] || (cd "$repo" && npm run build >/dev/null)

echo "== building rwkv.cpp into $work/rwkvcpp" >&2
"$shared/bench/build-rwkvcpp.sh" "$work/rwkvcpp" >/dev/null

llama_args=()
if [ "$llama" = 1 ]; then
  echo "== node-llama-cpp@$llama_version in $work/llama (not in the project)" >&2
  if [ ! -f "$work/llama/node_modules/node-llama-cpp/package.json" ] \
     || ! grep -q "\"version\": \"$llama_version\"" "$work/llama/node_modules/node-llama-cpp/package.json"; then
    mkdir -p "$work/llama"
    (cd "$work/llama" && echo '{"name":"rwkv-vs-llama","private":true,"type":"module"}' > package.json \
      && npm install "node-llama-cpp@$llama_version" --no-audit --no-fund --loglevel=error >&2)
  fi
  cp "$here/llama.mjs" "$work/llama/"
  llama_args=(--llama "$work/llama")
fi

node "$here/run.mjs" --repo "$repo" --shared "$shared" --work "$work" --rwkvcpp "$work/rwkvcpp" "${llama_args[@]}" "${args[@]}"
