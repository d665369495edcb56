#!/usr/bin/env python3
"""ai00 / web-rwkv LoRA files, re-implemented from their published behaviour, to check ours against.

  * convert: what ai00_server's assets/scripts/convert_safetensors.py makes of a RWKV-PEFT checkpoint
    (every tensor to f16; substring renames time_faaaa->time_first, time_maa->time_mix,
    lora_A->lora.0, lora_B->lora.1, then lower-case; names containing one of TRANSPOSED get their
    last two axes swapped; metadata {"format": "pt"}).
  * blend: what web-rwkv's loader does with such a file at load with its default blend (factor
    alpha on att/ffn Linear weights, 1 elsewhere): W[o][i] += (alpha / r) * sum_k X[i][k] Y[o][k]
    with X = lora.0 (in, r), Y = lora.1 (out, r), in f32 on the f16 factors; a same-named vector
    replaces the model's (t = 1 * t' + 0 * t).

Both are written here from that description, independently of the TypeScript code under test.

usage:
  python3 tools/ai00_check.py fixtures [SHARED]
      makes test/fixtures/adapters/{v6,v7}/ai00_lora.st from the committed lora.safetensors, blends
      it into the golden model and compares with expected.safetensors (RWKV-PEFT's merge).
  python3 tools/ai00_check.py check ADAPTER OURS_AI00 BASE MERGED ALPHA
      ADAPTER: a RWKV-PEFT adapter (.pth or .safetensors, e.g. `rwkv train --lora`'s adapter.pth);
      OURS_AI00: `rwkv convert-adapter ADAPTER OURS_AI00 --to ai00`; BASE: the f32 model;
      MERGED: `rwkv merge BASE ADAPTER MERGED --alpha ALPHA` (f32 safetensors). Checks our ai00 file
      is exactly this script's conversion, and that web-rwkv's blend of it equals our merge within
      f16 rounding of the factors.

The bound: f16 keeps 11 significant bits, so each factor value v is stored as v(1 + d), |d| <= u = 2^-11
(plus at most 2^-25 absolute for subnormals); the blended delta then differs from the exact one by at
most (alpha / r) * sum_k |x_ik||y_ok| (2u + u^2) plus the subnormal and f32 summation terms, computed
elementwise below; a replaced vector by |v| u.
"""
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "test", "fixtures", "adapters")
LORA_ALPHA = 24.0  # tools/adapter_golden.py's alpha for lora.safetensors

RENAMES = [("time_faaaa", "time_first"), ("time_maa", "time_mix"), ("lora_A", "lora.0"), ("lora_B", "lora.1")]
TRANSPOSED = ["time_mix_w1", "time_mix_w2", "time_decay_w1", "time_decay_w2",
              "w1", "w2", "a1", "a2", "g1", "g2", "v1", "v2", "time_state", "lora.0"]
U = 2.0 ** -11          # f16 unit roundoff
SUBNORMAL = 2.0 ** -25  # half the f16 subnormal spacing
F32 = 2.0 ** -23        # f32 epsilon, for the summation in f32
MATRICES = r"blocks\.([0-9]+)\.(att|ffn)\.(key|value|receptance|gate|output)\.weight"

ST_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            raw = np.frombuffer(data[a:b], dtype="<u2").astype(np.uint32) << 16
            arr = raw.view("<f4")
        else:
            arr = np.frombuffer(data[a:b], dtype=ST_DTYPES[v["dtype"]])
        out[k] = arr.reshape(v["shape"])
    return out, meta


def write_safetensors(path, tensors, metadata):
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for k in sorted(tensors):  # safetensors' serializer orders same-dtype tensors by name
        v = tensors[k]
        b = np.ascontiguousarray(v).tobytes()
        header[k] = {"dtype": "F16", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_adapter(path):
    if path.endswith(".safetensors") or path.endswith(".st"):
        return {k: v.astype(np.float32) for k, v in read_safetensors(path)[0].items()}
    import torch
    sd = torch.load(path, map_location="cpu")
    sd = sd.get("state_dict", sd)
    return {k: v.float().numpy() for k, v in sd.items()}


# ---- convert_safetensors.py, re-implemented ---------------------------------------------------

def ai00_name(name):
    for a, b in RENAMES:
        if a in name:
            name = name.replace(a, b)
    return name.lower()


def convert(sd):
    out = {}
    for k, v in sd.items():
        n = ai00_name(k)
        h = v.astype(np.float16)  # round to nearest even, as torch's .half()
        if h.ndim >= 2 and any(t in n for t in TRANSPOSED):
            h = np.swapaxes(h, -2, -1)
        out[n] = np.ascontiguousarray(h)
    return out


# ---- web-rwkv's load-time blend, re-implemented ------------------------------------------------

def blend(base, lora, alpha):
    """The model tensors web-rwkv's default blend changes, and each change's rounding bound."""
    import re
    out, bounds = {}, {}
    for name, w in base.items():
        if re.fullmatch(MATRICES, name):  # (the nominal 1.0 pattern would hit others; no LoRA there here)
            prefix = name[: -len(".weight")]
            x, y = lora.get(prefix + ".lora.0"), lora.get(prefix + ".lora.1")
            if x is None or y is None:
                continue
            x32, y32 = x.astype(np.float32), y.astype(np.float32)
            r = x.shape[1]
            out[name] = (w.astype(np.float32) + np.float32(alpha / r) * (y32 @ x32.T)).astype(np.float32)
            ax, ay = np.abs(x32.astype(np.float64)), np.abs(y32.astype(np.float64))
            mag = (alpha / r) * (ay @ ax.T)
            bounds[name] = mag * (2 * U + U * U) * 1.0001 + (alpha / r) * SUBNORMAL * (ay.sum(1)[:, None] + ax.sum(1)[None, :]) \
                + (np.abs(w) + mag) * 4 * F32
        elif name in lora:  # a vector: the nominal factor 1.0 replaces it
            out[name] = lora[name].astype(np.float32).reshape(w.shape)
            bounds[name] = np.abs(out[name]) * U + SUBNORMAL
    return out, bounds


def compare(label, got, want, bound):
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    ratio = float((d / bound).max())
    print(f"  {label}: max |diff| {d.max():.3e}, max bound {bound.max():.3e}, max diff/bound {ratio:.3f}")
    return ratio <= 1.0


def fixtures(shared):
    ok = True
    for version in ["v6", "v7"]:
        d = os.path.join(FIXTURES, version)
        sd = {k: v.astype(np.float32) for k, v in read_safetensors(os.path.join(d, "lora.safetensors"))[0].items()}
        conv = convert(sd)
        write_safetensors(os.path.join(d, "ai00_lora.st"), conv, {"format": "pt"})
        base = {k: v.astype(np.float32) for k, v in read_safetensors(os.path.join(shared, "golden", version, "model.safetensors"))[0].items()}
        expected = read_safetensors(os.path.join(d, "expected.safetensors"))[0]
        got, bounds = blend(base, conv, LORA_ALPHA)
        print(f"{version}: ai00_lora.st ({len(conv)} tensors) blended with alpha {LORA_ALPHA} vs RWKV-PEFT's merge")
        for name in sorted(got):
            ok &= compare(name, got[name], expected["lora/" + name], bounds[name])
    return ok


def check(adapter, ours, base_path, merged_path, alpha):
    ok = True
    sd = read_adapter(adapter)
    want = convert(sd)
    got, meta = read_safetensors(ours)
    print(f"{ours} vs convert_safetensors.py of {adapter}:")
    if meta != {"format": "pt"}:
        print(f"  metadata {meta} != {{'format': 'pt'}}")
        ok = False
    if sorted(got) != sorted(want):
        print(f"  names differ: ours {sorted(got)}, script {sorted(want)}")
        return False
    for k in sorted(want):
        same = got[k].dtype == want[k].dtype and got[k].shape == want[k].shape and got[k].tobytes() == want[k].tobytes()
        if not same:
            print(f"  {k}: ours {got[k].dtype} {got[k].shape}, script {want[k].dtype} {want[k].shape}, bytes {'equal' if got[k].tobytes() == want[k].tobytes() else 'differ'}")
            ok = False
    print(f"  {len(want)} tensors: {'identical (names, f16 bytes, shapes)' if ok else 'DIFFERENT'}")
    base = {k: v.astype(np.float32) for k, v in read_safetensors(base_path)[0].items()}
    merged = read_safetensors(merged_path)[0]
    blended, bounds = blend(base, got, alpha)
    print(f"web-rwkv's blend of {ours} (alpha {alpha}) vs {merged_path}:")
    for name in sorted(blended):
        ok &= compare(name, blended[name], merged[name], bounds[name])
    return ok


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "fixtures":
        good = fixtures(sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "..", "shared"))
    elif len(sys.argv) == 7 and sys.argv[1] == "check":
        good = check(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]))
    else:
        sys.exit(__doc__)
    print("OK" if good else "FAILED")
    sys.exit(0 if good else 1)
