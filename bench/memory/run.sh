#!/usr/bin/env bash
# bench/memory/run.sh [MIB] [THREADS...] | overlap [K...]: builds stream.c (or overlap.c) into a scratch directory and prints the
# memory read rate with 512-bit (where the CPU has AVX-512) and 128-bit loads, per thread count.
# Needs gcc with OpenMP (Debian: gcc). See README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${RWKV_VS_WORK:-/tmp/rwkv-vs-rwkvcpp}/memory"
mkdir -p "$work"
if [ "${1:-}" = overlap ]; then # bench/memory/run.sh overlap [K...]: overlap.c, one thread
  shift
  ks=("$@")
  [ ${#ks[@]} -gt 0 ] || ks=(0 2 4 6)
  gcc -O2 -march=native -fopenmp "$here/overlap.c" -o "$work/overlap"
  exec taskset -c 0 "$work/overlap" "${ks[@]}"
fi
mib="${1:-512}"
shift || true
threads=("$@")
[ ${#threads[@]} -gt 0 ] || threads=(1 2)
for t in "${threads[@]}"; do
  [[ "$t" =~ ^[1-9][0-9]*$ ]] || { echo "bench/memory/run.sh: THREADS must be positive integers, got '$t'" >&2; exit 2; }
done
gcc -O2 -march=native -fopenmp "$here/stream.c" -o "$work/stream"
for t in "${threads[@]}"; do OMP_NUM_THREADS="$t" OMP_PROC_BIND=spread "$work/stream" "$mib"; done
