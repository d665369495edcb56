#!/usr/bin/env python3
"""Checks `rwkv train --lora` exports the way RWKV-PEFT consumes them (run by hand; needs torch).

RWKV-PEFT merges a trained LoRA with merge/merge_lora.py (or merge/merge.py --type lora): both files are
read with torch.load; every tensor of the adapter file is put into the base's state dict (so full
tensors it carries, e.g. ln_out, replace the base's); then each `<prefix>.weight` that has
`<prefix>.lora_A` (r, in) and `<prefix>.lora_B` (out, r) becomes W + (B @ A) * (alpha / r), r read
from B's second axis (which must equal A's first), computed in the base tensor's own dtype; tensors
whose name contains "lora" are dropped; the rest is kept in order; torch.save writes the result.
PiSSA (merge_pissa.py) is W' = bf16(W - B0 @ A0) + B @ A with B0, A0 from the init file.

This file re-implements that procedure (written from the scripts' behaviour, not copied), runs it on
our exported adapter.pth, and compares the result with the checkpoint `rwkv merge` wrote.

usage: python3 tools/peft_merge_check.py BASE.pth ADAPTER.pth ALPHA OURS.pth [--pissa-init INIT.pth]
Prints each merged tensor's max |difference| and exits 1 if any tensor differs by more than the
base dtype's rounding (f32: 1e-6 relative to the tensor's largest value; bf16: one ulp).
"""
import sys

import torch


def peft_merge(base, adapter, alpha, init=None):
    w = dict(base)
    order = list(base.keys())
    for k, v in adapter.items():
        if k not in w:
            order.append(k)
        w[k] = v
    out = {}
    merged = []
    for k in order:
        if k.endswith(".weight"):
            p = k[: -len(".weight")]
            a, b = p + ".lora_A", p + ".lora_B"
            if a in w:
                assert b in w, f"{a} without {b}"
                A, B = w[a], w[b]
                assert B.shape[1] == A.shape[0], f"{b} {tuple(B.shape)} vs {a} {tuple(A.shape)}"
                r = B.shape[1]
                W = w[k].clone()
                if init is None:
                    W += (B @ A).to(W.dtype) * (alpha / r)
                else:
                    W = (W - init[p + ".init_lora_B"] @ init[p + ".init_lora_A"]).to(torch.bfloat16)
                    W += (B @ A).to(W.dtype)
                out[k] = W
                merged.append(k)
                continue
        if "lora" not in k:
            out[k] = w[k].clone()
    return out, merged


def main():
    args = sys.argv[1:]
    init = None
    if "--pissa-init" in args:
        i = args.index("--pissa-init")
        init = torch.load(args[i + 1], map_location="cpu")
        del args[i : i + 2]
    base_path, adapter_path, alpha, ours_path = args[0], args[1], float(args[2]), args[3]
    base = torch.load(base_path, map_location="cpu")
    adapter = torch.load(adapter_path, map_location="cpu")
    ours = torch.load(ours_path, map_location="cpu")
    want, merged = peft_merge(base, adapter, alpha, init)
    bad = 0
    if list(want.keys()) != list(ours.keys()):
        print("tensor names differ:", sorted(set(want) ^ set(ours)))
        bad += 1
    print(f"{len(merged)} LoRA pairs merged by the re-implementation; {len(adapter)} adapter tensors")
    for k in want:
        if k not in ours:
            continue
        x, y = want[k].double(), ours[k].double()
        if tuple(x.shape) != tuple(y.shape):
            print(f"{k}: shape {tuple(y.shape)} vs {tuple(x.shape)}")
            bad += 1
            continue
        d = (x - y).abs().max().item()
        scale = max(x.abs().max().item(), 1e-30)
        tol = scale * (2 ** -7 if want[k].dtype == torch.bfloat16 else 1e-6)
        if k in merged or d > 0:
            print(f"{k}: {ours[k].dtype} max|diff| {d:.3g} (max|w| {scale:.3g}, tolerance {tol:.3g}){'' if d <= tol else '  <-- differs'}")
        if d > tol:
            bad += 1
    print("OK" if bad == 0 else f"{bad} tensors differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
