#!/bin/bash
# Side by side: this checkout against another commit's build, on the same machine in the same hour.
# Every cell (dtype x threads of rwkv bench on a random RWKV-7 0.1B shape; training tokens/s of v4, v5.2,
# v6, v7 at 4 x 128) runs as a pair of processes, base and now back to back, the order swapped each
# round; table.py prints the medians and the median of the pairs' ratios.
#   bench/commits/run.sh BASE_DIR [OUT_DIR] [ROUNDS]
# BASE_DIR: a built checkout of the other commit, e.g.
#   git worktree add /tmp/base <commit> && (cd /tmp/base && npm ci)
# DTYPES, THREADS and TRAIN_VERSIONS (empty: no training) narrow the cells, e.g. to rerun some.
# Run on a quiet machine (no builds or tests beside it). Why pairs and pinning: on this VM one of the two
# vCPUs runs at about 60% of the other's speed for long stretches (q8_0 decode, 1 thread, `taskset -c`:
# 100-111 tok/s on cpu 0, 53-70 on cpu 1, both engines alike), so an unpinned 1-thread process lands on
# a fast or a slow core by chance; 1-thread cells therefore run under `taskset -c $BENCH_CPU` (default 0),
# and a pair of processes seconds apart shares whatever else the machine is doing.
set -euo pipefail
base=$(cd "$1" && pwd); here=$(cd "$(dirname "$0")/../.." && pwd)
out=${2:-/tmp/rwkv-commits}; rounds=${3:-5}
data=${RWKV_SHARED:-$here/../shared}/data/tinyshakespeare/input.txt
mkdir -p "$out"
order() { if [ $(($1 % 2)) = 1 ]; then echo "base now"; else echo "now base"; fi; }
for round in $(seq "$rounds"); do
  for dtype in ${DTYPES:-f32 f16 int8 q8_0}; do
    for threads in ${THREADS:-1 2}; do
      for eng in $(order "$round"); do
        dir=$base; [ $eng = now ] && dir=$here
        pin=""; [ "$threads" = 1 ] && pin="taskset -c ${BENCH_CPU:-0}"
        (cd "$dir" && $pin node dist/src/node/bin.js bench --random 7 --layers 12 --embd 768 --vocab 65536 \
          --dtype $dtype --threads $threads --prefill 64 --runs 3 --decode-tokens 32 --probe-mib 16 --json --no-retry) \
          > "$out/infer-$eng-$dtype-$threads-$round.json" 2> "$out/infer-$eng-$dtype-$threads-$round.err"
      done
    done
  done
  echo "$(date +%T) rwkv bench, round $round"
done
for round in $(seq "$rounds"); do
  for v in ${TRAIN_VERSIONS-4 5.2 6 7}; do
    for eng in $(order "$round"); do
      dir=$base; [ $eng = now ] && dir=$here
      (cd "$dir" && taskset -c "${BENCH_CPU:-0}" node --experimental-wasm-relaxed-simd dist/bench/train/throughput.js --data "$data" \
        --version $v --threads 1 --steps 6 --warmup 1) > "$out/train-$eng-$v-$round.txt" 2>&1
    done
  done
  echo "$(date +%T) training throughput, round $round"
done
python3 "$here/bench/commits/table.py" "$out"
