#!/bin/sh
# The WebGPU backend's speed on a machine with a GPU (issue 17): `rwkv bench --backend webgpu` in Node
# through the user-installed `webgpu` package (Dawn), on random RWKV-7 models of the released shapes
#   0.1B (12 x 768), 1.5B (24 x 2048), 2.9B (32 x 2560), vocabulary 65536,
# in f16, int8 and Q4_0: decode tok/s at batch 1, 16 and 64 (model.stepBatch), prefill of 512 tokens,
# and decode's share of the GPU's memory bandwidth (weight bytes per token x tok/s over the peak).
#
#   npm run build && npm install --no-save webgpu     # Dawn for Node: not a dependency of rwkv-ts
#   sh bench/gpu/run.sh [OUT_DIR]                     # default bench/gpu/results-<date>
#
# RWKV_GPU_BANDWIDTH_GBS sets the peak bandwidth in GB/s; without it the script looks the GPU up in the
# table below by its nvidia-smi name (and leaves the share out for an unknown one). SHAPES, DTYPES,
# BATCH, RUNS, VOCAB (65536) and PREFILL (512) override the defaults (a smoke test on a software adapter:
# SHAPES=2x128 DTYPES=f16 BATCH=4 RUNS=1 VOCAB=256 PREFILL=16). It stops with the reason when there is no adapter.
set -eu
cd "$(dirname "$0")/../.."
RWKV="node dist/src/node/bin.js"
OUT=${1:-bench/gpu/results-$(date -u +%Y%m%d-%H%M)}
SHAPES=${SHAPES:-"12x768 24x2048 32x2560"}
DTYPES=${DTYPES:-f16,int8,q4_0}
BATCH=${BATCH:-16,64}
RUNS=${RUNS:-3}
VOCAB=${VOCAB:-65536}
PREFILL=${PREFILL:-512}

[ -f dist/src/node/bin.js ] || { echo "bench/gpu: build first (npm run build)" >&2; exit 1; }
# The adapter: rwkv says whether "webgpu" can run here, and if not why (no package, no adapter...).
line=$($RWKV info --backends | grep '^webgpu ')
case "$line" in
  *"not available"*) echo "bench/gpu: no WebGPU adapter here, nothing measured: $(echo "$line" | sed 's/^webgpu *not available: //')" >&2; exit 1 ;;
esac
echo "bench/gpu: $line"

BW=${RWKV_GPU_BANDWIDTH_GBS:-}
if [ -z "$BW" ] && command -v nvidia-smi >/dev/null 2>&1; then
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
  # Peak memory bandwidth from the vendor's data sheets, GB/s.
  case "$name" in
    *H200*) BW=4800 ;;
    *"H100 NVL"*) BW=3900 ;;
    *H100*PCIe*) BW=2000 ;;
    *H100*) BW=3350 ;;
    *A100*80GB*) BW=2039 ;;
    *A100*) BW=1555 ;;
    *L40S*|*L40*) BW=864 ;;
    *"RTX 4090"*) BW=1008 ;;
    *"RTX 3090"*) BW=936 ;;
  esac
  echo "bench/gpu: GPU $name, peak bandwidth ${BW:-unknown} GB/s"
fi

mkdir -p "$OUT"
for shape in $SHAPES; do
  layers=${shape%x*}; embd=${shape#*x}
  echo "bench/gpu: RWKV-7 $layers x $embd, $DTYPES" >&2
  $RWKV bench --random 7 --layers "$layers" --embd "$embd" --vocab "$VOCAB" --backend webgpu --threads 1 \
    --dtype "$DTYPES" --batch "$BATCH" --prefill "$PREFILL" --runs "$RUNS" --probe-mib 16 \
    ${BW:+--bandwidth "$BW"} --json > "$OUT/v7-$shape.json"
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    for (const x of r.rows) console.log([process.argv[2], x.dtype, "decode", x.decode.median.toFixed(1),
      ...Object.entries(x.batchDecode ?? {}).map(([b, s]) => `batch${b} ${s.median.toFixed(1)}`),
      `prefill${process.argv[3]}`, x.prefill[process.argv[3]].median.toFixed(1), "tok/s",
      x.peakFraction === undefined ? "" : `${(100 * x.peakFraction).toFixed(0)}% of peak bandwidth`].join(" "));
  ' "$OUT/v7-$shape.json" "$shape" "$PREFILL"
done
echo "bench/gpu: results in $OUT"
