#!/usr/bin/env bash
# Models past one WebAssembly memory (4 GiB), on random RWKV-7 models of real release shapes:
# G1 2.9B (32 x 2560) in f16, bf16, q8_0, int8, q4_0 and 7.2B (32 x 4096) in q8_0, q4_0, vocabulary
# 65536, each built in memory and loaded from a file our own writers made (rwkv.cpp .bin; .pth for
# bf16) in a scratch directory, deleted once loaded. One process per row, one row at a time; a row
# is skipped when the machine has less memory available than it needs. Per row (bench/large/run.ts):
# decode tok/s, peak RSS, how the weights spread over the memories, finite logits, real-shape
# matrices in further memories equal to one memory bit for bit, and for the in-memory models one
# memory can hold (split on purpose by --per-memory) the whole model's first logits against one memory.
#
#   bench/large/run.sh [--threads 2] [--tokens 8] [--only REGEX]     e.g. --only '2560 f16'
#
# Scratch: $RWKV_LARGE_WORK (default ${TMPDIR:-/tmp}/rwkv-large), emptied at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${RWKV_LARGE_WORK:-${TMPDIR:-/tmp}/rwkv-large}
threads=2 tokens=8 only=.
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -f "$repo/dist/bench/large/run.js" ] || (cd "$repo" && npm run build >/dev/null)
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

# embd dtype source need-GiB [extra flags]: need = weights (twice with --whole) + ~2 GiB of
# embedding, generation buffers and the slice check.
cases=(
  "2560 f16 memory 8"   "2560 f16 file 8"
  "2560 bf16 memory 8"  "2560 bf16 file 8"
  "2560 q8_0 memory 9 --per-memory 1.5 --whole" "2560 q8_0 file 6"
  "2560 int8 memory 9 --per-memory 1.5 --whole" "2560 int8 file 6"
  "2560 q4_0 memory 6 --per-memory 0.75 --whole" "2560 q4_0 file 4"
  "4096 q8_0 memory 11" "4096 q8_0 file 11"
  "4096 q4_0 memory 7"  "4096 q4_0 file 7"
)
for c in "${cases[@]}"; do
  [[ "$c" =~ $only ]] || continue
  read -r embd dtype source need extra <<<"$c" || true
  avail=$(awk '/MemAvailable/ { printf "%d", $2 / 1048576 }' /proc/meminfo)
  if [ "$avail" -lt "$need" ]; then
    echo "{\"shape\":\"32x$embd\",\"dtype\":\"$dtype\",\"source\":\"$source\",\"skipped\":\"needs ${need} GiB, ${avail} available\"}"
    continue
  fi
  # shellcheck disable=SC2086
  node --expose-gc "$repo/dist/bench/large/run.js" --layers 32 --embd "$embd" --dtype "$dtype" --source "$source" \
    --threads "$threads" --tokens "$tokens" --scratch "$work" $extra || echo "{\"shape\":\"32x$embd\",\"dtype\":\"$dtype\",\"source\":\"$source\",\"failed\":$?}"
  rm -f "$work"/*
done
