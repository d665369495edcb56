#!/usr/bin/python3
"""Checks `rwkv train --export rwkv-lm` against RWKV-LM's own model code.

For each version asked (7, 6): trains a tiny model with rwkv-ts for a few steps, exports it with
`rwkv train --out DIR --export rwkv-lm`, then
  1. loads DIR/rwkv-lm/rwkv-init.pth with torch.load and checks every tensor is bf16 (as RWKV-LM's
     train.py saves under --precision bf16) and that names, order and shapes equal the official
     model's state_dict(); load_state_dict(strict=True) into the official model class;
  2. runs the official model's forward on CPU in fp32 and compares its logits with rwkv-ts's
     logits on the same file (tools/rwkv-lm-check/our-logits.mjs): max |diff| must be <= 1e-4;
  3. reads the exported data with RWKV-LM's own MMapIndexedDataset (src/binidx.py) and checks the
     tokens and train.sh's --magic_prime against dataset.py's assertions.

Model code used:
  v7: RWKV-LM's RWKV-v7/train_temp/src/model.py from ../shared/reference/rwkv-lm/train_temp, the
      classes RWKV_Tmix_x070, RWKV_CMix_x070, Block and RWKV taken unchanged from the file (by AST);
      only the fused CUDA ops they call are replaced by CPU functions with the same math (each
      one is the "slow pytorch version" printed in the comments beside the call, or the loop the
      CUDA kernel runs): tmix_mix6_bf16_v5, tmix_vres_gate_bf16_v3, tmix_a_gate_bf16,
      tmix_kk_pre_bf16_v5 (F.normalize, eps 1e-12), RWKV7_CLAMPW_CUDA (decay
      exp(-exp(-0.5)*sigmoid(w)), state update s = s*w + sa*b + k*v, y = s@r),
      tmix_lnx_rkvres_xg_bf16_v1 (GroupNorm eps 64e-5 + r*k*r_k residual, times g) and
      _CmixLayerV2Fn (x + (shift(x)-x)*x_k, relu(.)^2, value). pytorch_lightning is replaced by a
      stub (LightningModule = nn.Module); nothing else is touched. The swap is itself checked:
      the same classes reproduce the official logits of ../shared/golden/v7 (computed with
      RWKV-LM's x070 classes) before our file is tested.
  v6: /work/shared holds no RWKV-6 model class (only RWKV-7's trainer). Used instead: a
      transcription of RWKV-LM RWKV-v5/src/model.py's RWKV_Tmix_x060 / RWKV_CMix_x060 / Block /
      RWKV (@524481d, the version the golden files name) in rwkv6_model.py beside this script,
      with a plain-loop WKV6. It is first checked against ../shared/golden/v6 (logits computed by
      the official x060 classes, training forward, fp32) before our file is tested.

Run (Debian python3-torch, no PyPI needed), from the repository root after `npm run build`:
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 /usr/bin/python3 tools/rwkv-lm-check/check.py
"""

import argparse
import ast
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("RWKV_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
TRAIN_TEMP = os.path.join(SHARED, "reference", "rwkv-lm", "train_temp")
DATA = os.path.join(SHARED, "data", "tinyshakespeare", "input.txt")
BIN = os.path.join(ROOT, "dist", "src", "node", "bin.js")
TOLERANCE = 1e-4
GOLDEN_TOLERANCE = 1e-4
TRAIN_STEPS = 30
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"

sys.path.insert(0, HERE)


def run(cmd):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stdout


# ---------------------------------------------------------------- v7: the official classes, CPU ops

def _shift(x):
    return F.pad(x, (0, 0, 1, -1))  # previous token, zeros at t = 0 (nn.ZeroPad2d((0, 0, 1, -1)))


class _Cpu:
    head_size = 64

    @staticmethod
    def tmix_mix6_bf16_v5(x, x_r, x_w, x_k, x_v, x_a, x_g):
        xx = _shift(x) - x
        return tuple(x + xx * m for m in (x_r, x_w, x_k, x_v, x_a, x_g))

    @staticmethod
    def tmix_vres_gate_bf16_v3(v, v_first, v0, v12):
        return v + (v_first - v) * torch.sigmoid(v0 + v12)

    @staticmethod
    def tmix_a_gate_bf16(a0, a12):
        return torch.sigmoid(a0 + a12)

    @staticmethod
    def tmix_kk_pre_bf16_v5(k, k_k, a, k_a):
        B, T, C = k.shape
        kk = F.normalize((k * k_k).view(B, T, -1, _Cpu.head_size), dim=-1, p=2.0).view(B, T, C)
        return k * (1 + (a - 1) * k_a), -kk, kk * a

    @staticmethod
    def RWKV7_CLAMPW_CUDA(r, w, k, v, a, b):
        B, T, C = r.shape
        N = _Cpu.head_size
        H = C // N
        decay = torch.exp(-math.exp(-0.5) * torch.sigmoid(w.float()))  # W_SCALE = -exp(-0.5) in the kernel
        r, k, v, a, b = [t.float().view(B, T, H, N) for t in (r, k, v, a, b)]
        decay = decay.view(B, T, H, N)
        s = torch.zeros(B, H, N, N, dtype=torch.float32)  # s[b, h, value i, key j]
        y = torch.empty(B, T, H, N, dtype=torch.float32)
        for t in range(T):
            sa = (s * a[:, t, :, None, :]).sum(-1, keepdim=True)
            s = s * decay[:, t, :, None, :] + sa * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
            y[:, t] = (s * r[:, t, :, None, :]).sum(-1)
        return y.view(B, T, C)

    @staticmethod
    def tmix_lnx_rkvres_xg_bf16_v1(x, r, k, v, r_k, weight, bias, g):
        B, T, C = x.shape
        N = _Cpu.head_size
        H = C // N
        y = F.group_norm(x.view(B * T, C), H, weight, bias, eps=64e-5).view(B, T, C)
        y = y + ((r.view(B, T, H, N) * k.view(B, T, H, N) * r_k).sum(dim=-1, keepdim=True) * v.view(B, T, H, N)).view(B, T, C)
        return y * g


class _CmixLayerV2Fn:
    @staticmethod
    def apply(x, x_k, key_weight, value_weight):
        mixed = x + (_shift(x) - x) * x_k
        return (torch.relu(mixed @ key_weight.t()) ** 2) @ value_weight.t()


def official_v7_classes():
    """RWKV-LM train_temp's RWKV_Tmix_x070, RWKV_CMix_x070, Block, RWKV, exec'd with CPU ops."""
    path = os.path.join(TRAIN_TEMP, "src", "model.py")
    tree = ast.parse(open(path).read(), path)
    wanted = ["RWKV_Tmix_x070", "RWKV_CMix_x070", "Block", "RWKV"]
    nodes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in wanted]
    assert [n.name for n in nodes] == wanted, [n.name for n in nodes]
    pl = types.SimpleNamespace(LightningModule=nn.Module)
    os.environ["RWKV_HEAD_L2WRAP_CE_CHUNK"] = "0"  # the class body picks the plain head + CE forward
    ns = {
        "os": os, "math": math, "torch": torch, "nn": nn, "F": F, "pl": pl,
        "MyModule": nn.Module, "MyFunction": lambda f: f, "_CmixLayerV2Fn": _CmixLayerV2Fn,
        "tmix_mix6_bf16_v5": _Cpu.tmix_mix6_bf16_v5, "tmix_vres_gate_bf16_v3": _Cpu.tmix_vres_gate_bf16_v3,
        "tmix_a_gate_bf16": _Cpu.tmix_a_gate_bf16, "tmix_kk_pre_bf16_v5": _Cpu.tmix_kk_pre_bf16_v5,
        "RWKV7_CLAMPW_CUDA": _Cpu.RWKV7_CLAMPW_CUDA, "tmix_lnx_rkvres_xg_bf16_v1": _Cpu.tmix_lnx_rkvres_xg_bf16_v1,
    }
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), ns)
    return ns["RWKV"]


def v7_model(cfg, shapes=None):
    RWKV = official_v7_classes()
    _Cpu.head_size = cfg["head_size"]
    args = types.SimpleNamespace(
        n_embd=cfg["n_embd"], n_layer=cfg["n_layer"], vocab_size=cfg["vocab_size"], dim_att=cfg["n_embd"],
        dim_ffn=cfg.get("dim_ffn", 4 * cfg["n_embd"]), head_size=cfg["head_size"], my_testing="x070",
        ctx_len=4096, grad_cp=0)
    model = RWKV(args)
    if shapes:  # golden files use other LoRA widths than the trainer's formula: resize those parameters only
        own = model.state_dict()
        for name, shape in shapes.items():
            if tuple(own[name].shape) != tuple(shape):
                mod_name, attr = name.rsplit(".", 1)
                setattr(model.get_submodule(mod_name), attr, nn.Parameter(torch.empty(shape)))
    return model.float().eval()


def v6_model(cfg):
    from rwkv6_model import RWKV6
    return RWKV6(cfg["n_layer"], cfg["n_embd"], cfg["dim_ffn"], cfg["head_size"], cfg["vocab_size"]).float().eval()


def logits_of(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens], dtype=torch.long))[0].float()


# ---------------------------------------------------------------- the checks

def check_golden(version):
    """The model code reproduces the official logits of ../shared/golden/vN (a check of the CPU swap / transcription)."""
    gdir = os.path.join(SHARED, "golden", f"v{version}")
    g = json.load(open(os.path.join(gdir, "golden.json")))
    sd = torch.load(os.path.join(gdir, "model.pth"), map_location="cpu")
    cfg = dict(g["config"])
    model = v7_model(cfg, {k: v.shape for k, v in sd.items()}) if version == "7" else v6_model(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    got = logits_of(model, g["tokens"])
    want = torch.tensor(g["train_gpt"]["logits_fp32"], dtype=torch.float32)
    diff = (got - want).abs().max().item()
    print(f"v{version} model code vs official logits of shared/golden/v{version} ({len(g['tokens'])} tokens): max |diff| {diff:.3g}")
    return diff <= GOLDEN_TOLERANCE


def check_export(version, keep):
    work = keep or tempfile.mkdtemp(prefix=f"rwkv-lm-check-v{version}-")
    out = os.path.join(work, "run")
    if os.path.exists(os.path.join(out, "checkpoint.rwkvtrain")):
        raise SystemExit(f"{out} already holds a run; give another --keep")
    run(["node", BIN, "train", "--data", DATA, "--out", out, "--version", version, "--layers", "2", "--embd", "128",
         "--head-size", "64", "--ctx", "64", "--batch", "4", "--steps", str(TRAIN_STEPS), "--val-every", "0", "--lr", "3e-3"])
    print(run(["node", BIN, "train", "--out", out, "--export", "rwkv-lm"]).split("continue on GPUs")[0].rstrip())
    exp = os.path.join(out, "rwkv-lm")
    pth = os.path.join(exp, "rwkv-init.pth")
    tokens = list(TEXT.encode())

    sd = torch.load(pth, map_location="cpu")
    not_bf16 = [k for k, v in sd.items() if v.dtype != torch.bfloat16]
    C = sd["emb.weight"].shape[1]
    cfg = {"n_layer": 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")), "n_embd": C,
           "vocab_size": sd["emb.weight"].shape[0], "head_size": 64, "dim_ffn": sd["blocks.0.ffn.key.weight"].shape[0]}
    model = v7_model(cfg) if version == "7" else v6_model(cfg)
    own = model.state_dict()
    same_order = list(own.keys()) == list(sd.keys())
    bad_shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    model.load_state_dict(sd, strict=True)  # copies bf16 into the fp32 parameters
    got = logits_of(model, tokens)
    ours = json.loads(run(["node", os.path.join(HERE, "our-logits.mjs"), pth, ",".join(map(str, tokens))]))
    diff = (got - torch.tensor(ours["logits"], dtype=torch.float32)).abs().max().item()
    print(f"v{version} export {pth}: {len(sd)} tensors, all bf16: {not not_bf16 and True}{'' if not not_bf16 else ' ' + str(not_bf16[:3])}; "
          f"names+order = official state_dict: {same_order}; shapes differ: {bad_shapes or 'none'}; strict load: ok")
    print(f"v{version} logits over {len(tokens)} tokens, official model (CPU fp32) vs rwkv-ts ({ours['backend']}): "
          f"max |diff| {diff:.3g} (limit {TOLERANCE:g}); logits range [{got.min().item():.2f}, {got.max().item():.2f}]")
    data_ok = check_data(exp, out)
    back_ok = check_back(model, tokens, got, work)
    return not not_bf16 and same_order and not bad_shapes and diff <= TOLERANCE and data_ok and back_ok


def check_back(model, tokens, official, work):
    """The way back: a checkpoint as RWKV-LM's trainer saves it (torch.save of the bf16 state_dict, here
    with DeepSpeed's "_forward_module." prefix too) starts `rwkv train --init-from`; one step at lr 0
    leaves the weights as loaded, and rwkv-ts's logits on the run's model.pth equal the official model's."""
    final = os.path.join(work, "rwkv-final.pth")
    torch.save({"_forward_module." + k: v.bfloat16() for k, v in model.state_dict().items()}, final)
    back = os.path.join(work, "back")
    run(["node", BIN, "train", "--data", DATA, "--out", back, "--init-from", final, "--ctx", "64", "--batch", "2",
         "--steps", "1", "--val-every", "0", "--lr", "0", "--lr-final", "0"])
    ours = json.loads(run(["node", os.path.join(HERE, "our-logits.mjs"), os.path.join(back, "model.pth"), ",".join(map(str, tokens))]))
    diff = (official - torch.tensor(ours["logits"], dtype=torch.float32)).abs().max().item()
    print(f"back: rwkv train --init-from {final} (torch.save'd, DeepSpeed-prefixed names): rwkv-ts logits on its model.pth vs official: max |diff| {diff:.3g}")
    return diff <= TOLERANCE


def check_data(exp, out):
    """RWKV-LM's MMapIndexedDataset reads our binidx; train.sh's magic_prime passes dataset.py's asserts."""
    sys.path.insert(0, os.path.join(TRAIN_TEMP, "src"))
    from binidx import MMapIndexedDataset
    ds = MMapIndexedDataset(os.path.join(exp, "data", "train"))
    size = len(ds._bin_buffer) // ds._index._dtype_size
    script = open(os.path.join(exp, "train.sh")).read()
    ctx = int(re.search(r"--ctx_len (\d+)", script).group(1))
    prime = int(re.search(r"--magic_prime (\d+)", script).group(1))
    head = ds.get(idx=0, offset=0, length=200).astype(int).tolist()
    text = open(DATA, "rb").read()
    slot = size // ctx
    is_prime = prime > 1 and all(prime % d for d in range(2, int(prime ** 0.5) + 1))
    ok = head == list(text[:200]) and is_prime and prime % 3 == 2 and 0.9 < prime / slot <= 1
    print(f"binidx: {size} tokens read by RWKV-LM's MMapIndexedDataset, first 200 = the data's first bytes: {head == list(text[:200])}; "
          f"magic_prime {prime}: prime {is_prime}, %3 == 2 {prime % 3 == 2}, / slots {prime / slot:.4f} in (0.9, 1]")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", choices=["7", "6", "all"], default="all")
    p.add_argument("--keep", help="work in this directory (kept) instead of a temporary one")
    a = p.parse_args()
    torch.manual_seed(0)
    ok = True
    for v in (["7", "6"] if a.version == "all" else [a.version]):
        golden = check_golden(v)
        export = check_export(v, os.path.join(a.keep, f"v{v}") if a.keep else None)
        print(f"v{v}: {'PASS' if golden and export else 'FAIL'}\n")
        ok = ok and golden and export
    print("ALL PASS" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
