#!/bin/bash
# Side by side: this checkout against another commit's build, on the same machine in the same hour,
# alternating engine every run (rwkv bench on a random RWKV-7 0.1B shape; training tokens/s of
# v4, v5.2, v6, v7 at 4 x 128), then the table of medians and ratios (table.py).
#   bench/commits/run.sh BASE_DIR [OUT_DIR] [ROUNDS]
# BASE_DIR: a built checkout of the other commit, e.g.
#   git worktree add /tmp/base <commit> && (cd /tmp/base && npm ci)
# Run on a quiet machine (no builds or tests beside it).
set -euo pipefail
base=$(cd "$1" && pwd); here=$(cd "$(dirname "$0")/../.." && pwd)
out=${2:-/tmp/rwkv-commits}; rounds=${3:-3}
data=${RWKV_SHARED:-$here/../shared}/data/tinyshakespeare/input.txt
mkdir -p "$out"
for round in $(seq "$rounds"); do
  for eng in base now; do
    dir=$base; [ $eng = now ] && dir=$here
    (cd "$dir" && node dist/src/node/bin.js bench --random 7 --layers 12 --embd 768 --vocab 65536 \
      --dtype f32,f16,int8,q8_0 --threads 1,2 --prefill 64 --runs 3 --decode-tokens 32 --json --no-retry) \
      > "$out/infer-$eng-$round.json" 2> "$out/infer-$eng-$round.err"
    echo "$(date +%T) rwkv bench: $eng, round $round"
  done
done
for round in $(seq 2); do
  for eng in base now; do
    dir=$base; [ $eng = now ] && dir=$here
    for v in 4 5.2 6 7; do
      (cd "$dir" && node --experimental-wasm-relaxed-simd dist/bench/train/throughput.js --data "$data" \
        --version $v --threads 1 --steps 6 --warmup 1) > "$out/train-$eng-$v-$round.txt" 2>&1
    done
    echo "$(date +%T) training throughput: $eng, round $round"
  done
done
python3 "$here/bench/commits/table.py" "$out"
