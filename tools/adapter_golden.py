#!/usr/bin/env python3
"""Golden fixtures for adapter merging (run once; outputs are committed under test/fixtures/adapters).

For the golden v6 and v7 models of ../shared, makes random adapters of every kind with RWKV-PEFT's
tensor names and shapes, and the merged tensors computed the way RWKV-PEFT's merge scripts
(merge/merge.py, merge_lora.py, merge_disha.py, merge_bone.py) compute them, re-implemented here
in NumPy (float64, then float32), independently of the TypeScript code under test.

usage: python3 tools/adapter_golden.py [SHARED_DIR]   (needs numpy: apt-get install python3-numpy)
"""
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")
OUT = os.path.join(ROOT, "test", "fixtures", "adapters")
LORA_ALPHA = 24.0  # not RWKV-PEFT's default, so a test that forgets to pass it fails
PEFT_ALPHA = 8.0


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"]).astype(np.float64)
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for k, v in tensors.items():
        b = np.ascontiguousarray(v, dtype="<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ---- RWKV-PEFT's merge formulas (re-implemented) -------------------------------------------

def merge_lora(w, A, B, alpha):
    r = B.shape[1]
    return w + B @ A * (alpha / r)


def merge_pissa(w, A, B, A0, B0):
    return (w - B0 @ A0) + B @ A


def merge_disha_bone(w, D):
    # merge_disha.py, 2-D case: D (r, out); blocks of r input columns, the ragged tail separately
    r = D.shape[0]
    w = w.copy()
    out_f, in_f = w.shape
    n_block = in_f // r
    nb = n_block * r
    head = w[:, :nb].reshape(-1, n_block, r).transpose(1, 2, 0) + D
    w[:, :nb] = head.transpose(2, 0, 1).reshape(out_f, nb)
    if in_f % r:
        w[:, nb:] = w[:, nb:] + D.T[:, : in_f % r]
    return w


def merge_disha_bat(w, D):
    # merge_disha.py, 3-D case: rearrange '(a r1) (b r2) -> a b r1 r2', X @ D + D, and back
    b, r, _ = D.shape
    out_f, in_f = w.shape
    a = out_f // r
    x = w.reshape(a, r, b, r).transpose(0, 2, 1, 3)
    y = x @ D + D
    return w + y.transpose(0, 2, 1, 3).reshape(out_f, in_f)


def make(version, seed):
    base = read_safetensors(os.path.join(SHARED, "golden", version, "model.safetensors"))
    rng = np.random.default_rng(seed)
    rnd = lambda *shape: rng.standard_normal(shape) * 0.05
    d = os.path.join(OUT, version)
    os.makedirs(os.path.join(d, "peft"), exist_ok=True)
    expected = {}

    # LoRA (rank 4) on two matrices, plus a full ln_out replacement as RWKV-PEFT saves with train_parts=ln
    lora = {}
    for name in ["blocks.0.att.receptance", "blocks.2.att.output"]:
        out_f, in_f = base[name + ".weight"].shape
        lora[name + ".lora_A"] = rnd(4, in_f)
        lora[name + ".lora_B"] = rnd(out_f, 4)
        expected["lora/" + name + ".weight"] = merge_lora(base[name + ".weight"], lora[name + ".lora_A"], lora[name + ".lora_B"], LORA_ALPHA)
    lora["ln_out.weight"] = 1 + rnd(base["ln_out.weight"].shape[0])
    expected["lora/ln_out.weight"] = lora["ln_out.weight"]
    write_safetensors(os.path.join(d, "lora.safetensors"), lora)

    # PiSSA: the trained A/B and the init file's init_lora_A/B
    name = "blocks.1.att.key"
    out_f, in_f = base[name + ".weight"].shape
    pissa = {name + ".lora_A": rnd(4, in_f), name + ".lora_B": rnd(out_f, 4)}
    init = {name + ".init_lora_A": rnd(4, in_f), name + ".init_lora_B": rnd(out_f, 4)}
    expected["pissa/" + name + ".weight"] = merge_pissa(base[name + ".weight"], pissa[name + ".lora_A"], pissa[name + ".lora_B"], init[name + ".init_lora_A"], init[name + ".init_lora_B"])
    write_safetensors(os.path.join(d, "pissa.safetensors"), pissa)
    write_safetensors(os.path.join(d, "pissa_init.safetensors"), init)

    # DiSHA Bone form (r, out) with r = 7, which divides neither 96 nor 128 (the ragged branch)
    name = "blocks.1.att.value"
    out_f, in_f = base[name + ".weight"].shape
    bone = {name + ".disha": rnd(7, out_f)}
    expected["bone/" + name + ".weight"] = merge_disha_bone(base[name + ".weight"], bone[name + ".disha"])
    write_safetensors(os.path.join(d, "disha_bone.safetensors"), bone)

    # DiSHA Bat form (in/r, r, r) with r = 8
    name = "blocks.2.att.receptance"
    out_f, in_f = base[name + ".weight"].shape
    bat = {name + ".disha": rnd(in_f // 8, 8, 8)}
    expected["bat/" + name + ".weight"] = merge_disha_bat(base[name + ".weight"], bat[name + ".disha"])
    write_safetensors(os.path.join(d, "disha_bat.safetensors"), bat)

    # HuggingFace peft directory (LoRA rank 4, alpha in adapter_config.json)
    name = "blocks.0.ffn.key" if version == "v6" else "blocks.0.att.key"
    out_f, in_f = base[name + ".weight"].shape
    A, B = rnd(4, in_f), rnd(out_f, 4)
    write_safetensors(os.path.join(d, "peft", "adapter_model.safetensors"), {
        "base_model.model." + name + ".lora_A.weight": A, "base_model.model." + name + ".lora_B.weight": B})
    with open(os.path.join(d, "peft", "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 4, "lora_alpha": PEFT_ALPHA, "target_modules": [name.split(".", 2)[2]]}, f, indent=1)
    expected["peft/" + name + ".weight"] = merge_lora(base[name + ".weight"], A, B, PEFT_ALPHA)

    write_safetensors(os.path.join(d, "expected.safetensors"), expected)
    print(version, "->", d, sorted(expected))


make("v6", 6)
make("v7", 7)
