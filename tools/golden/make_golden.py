#!/usr/bin/env python3
"""Golden data for RWKV-7a, RWKV-7b, RWKV-8 rc00 and the RWKV-8 rc00 hybrid, from the official code.

For each generation and each of two shapes (head size 64 and 32), builds a tiny random model in the
official checkpoint layout, runs the official demo file of ../shared/reference/rwkv-lm on the CPU and
saves what it computes. The demo files are not re-implemented: each is read, a short listed set of
text substitutions (PATCHES below: fp32 on the CPU, the CUDA WKV kernel replaced by the file's own
"cuda-free" loop, the model path and sizes, the demo's sampling/LAMBADA driver cut off) is applied,
and the patched file is imported as a module. NOTES.md holds the diff against the originals.

Outputs, per model, in test/fixtures/golden/<v7a|v7b|v8|v8-hybrid>/<head64|head32>/:
  model.safetensors   the checkpoint (F16: every value is drawn on the f16 grid, so the f32 model the
                      demo runs is exactly this file upcast)
  golden.safetensors  F32 logits of every token: rnn (one token per call, the file's recurrent path),
                      seq (the whole sequence in one call, full_output), chunked (two calls split
                      after token SPLIT); the final state of each path, per layer, as
                      {rnn,seq,chunked}.L<i>.<att_x_prev|att_kv|ffn_x_prev> and for the attention
                      generations {..}.L<i>.<k_cache|v_cache|q_prev> (growing caches: (T, 32) each)
  golden.json         config, tokens, split, tensor names

usage: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=1 /usr/bin/python3 tools/golden/make_golden.py [SHARED_DIR]
"""
import copy
import difflib
import importlib.util
import json
import os
import re
import struct
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")
REF = os.path.join(SHARED, "reference", "rwkv-lm")
OUT = os.path.join(ROOT, "test", "fixtures", "golden")

# Vocabulary 32, not 512, and n_embd 64: DeepEmbed stores a (V, 1024) table per layer plus a (1024, C)
# fold matrix, so V = 512 or C = 128 would make each 7a/7b fixture several MB; 32 ids exercise the
# same row lookups. Head size 64 is then a single head (the multi-head path is the head-32 shape).
V = 32
L = 3
SHAPES = {"head64": dict(C=64, N=64), "head32": dict(C=64, N=32)}
LORA = dict(w=16, a=16, v=16, g=16)
TOKENS = [0, 5, 17, 31, 2, 20, 9, 9, 30, 1, 28, 12, 27, 14, 3, 20, 29, 7, 19, 26, 11, 25, 6]  # tokens[15] == tokens[5]
SPLIT = 9
# The DeepEmbed widths the demo files hard-code: 32x32 per-token FFN gate, 256-wide q/k, 32-wide kv cache.
SEMB = 32
QK = 256
KV = 32

GENERATIONS = {
    "v7a": "rwkv_v7a_demo.py",
    "v7b": "rwkv_v7b_demo.py",
    "v8": "rwkv_v8_rc00_demo.py",
    "v8-hybrid": "rwkv_v8_rc00_hybrid_demo.py",
}

# ---- the patch step ----------------------------------------------------------------------------

CUDA_FREE_OP = '''def RWKV7_OP(state, r, w, k, v, a, b):
    # [golden patch] the file's own "cuda-free method" loop with the kernel's arguments
    # (w = log(-log(decay)), a = -kk, b = kk*a); updates state in place like the kernel
    T = r.shape[0]
    H = state.shape[0]
    N = state.shape[1]
    y = torch.empty_like(r)
    s = state.clone()
    for t in range(T):
        w_ = torch.exp(-torch.exp(w[t].float()))
        vk = v[t].view(H,N,1) @ k[t].view(H,1,N)
        ab = a[t].view(H,N,1) @ b[t].view(H,1,N)
        s = s * w_.view(H,1,N) + s @ ab.float() + vk.float()
        y[t] = (s.to(dtype=r.dtype) @ r[t].view(H,N,1)).view(H*N)
    state.copy_(s)
    return y
'''


def patches(model_path, C, N):
    """(why, regex, replacement, expected count or None for any): every change made to an original demo file."""
    return [
        ("fp32 instead of fp16 (CPU golden data)", r"DTYPE = torch\.half", "DTYPE = torch.float", 1),
        ("load on the CPU", r"map_location='cuda'", "map_location='cpu'", 1),
        ("state tensors on the CPU", r'device="cuda"', 'device="cpu"', None),
        ("the tiny model's path", r'args\.MODEL_NAME = "[^"]*"', f'args.MODEL_NAME = "{model_path}"', 1),
        ("the tiny model's sizes", r"args\.n_layer = \d+", f"args.n_layer = {L}", 1),
        ("", r"args\.n_embd = \d+", f"args.n_embd = {C}", 1),
        ("", r"args\.vocab_size = [^\n]+", f"args.vocab_size = {V}", 1),
        ("", r"args\.head_size = \d+", f"args.head_size = {N}", 1),
        ("no CUDA kernel: its build and op replaced by the file's cuda-free loop",
         r'load\(name="wkv7s".*?return WKV_7\.apply\(state, r, w, k, v, a, b\)\n', CUDA_FREE_OP, 1),
        ("token id cache as int64: CPU torch indexes only with long tensors", r"dtype=torch\.int\b", "dtype=torch.long", None),
        ("the demo's driver (tokenizer, sampling, LAMBADA) cut off: the model is called directly",
         r"\n#+\n#\n# The testing code.*\Z", "\n", 1),
    ]


def patched_source(name, model_path, C, N):
    with open(os.path.join(REF, name), encoding="utf-8") as f:
        text = f.read().replace("\r\n", "\n")  # the hybrid file has CRLF line ends
    original = text
    for why, pat, rep, count in patches(model_path, C, N):
        text, n = re.subn(pat, lambda _m, rep=rep: rep, text, flags=re.S)
        if count is not None and n != count:
            raise SystemExit(f"{name}: patch {pat!r} matched {n} times, expected {count}")
        if count is None and n == 0 and "cuda" in pat:
            raise SystemExit(f"{name}: patch {pat!r} did not match")
    return original, text


def load_demo(name, model_path, C, N, tmp):
    _, text = patched_source(name, model_path, C, N)
    path = os.path.join(tmp, name.replace(".py", "_golden.py"))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)  # TorchScript reads the functions' source from the file
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- tiny random checkpoints in the official layout ---------------------------------------------

class Init:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def _f16(self, t):
        return t.half().float()  # on the f16 grid: the F16 file holds exactly what the demo computes with

    def normal(self, *shape, std=1.0, mean=0.0):
        return self._f16(torch.randn(*shape, generator=self.g) * std + mean)

    def uniform(self, *shape, lo=0.0, hi=1.0):
        return self._f16(torch.rand(*shape, generator=self.g) * (hi - lo) + lo)

    def mat(self, out, inp):
        return self.normal(out, inp, std=inp ** -0.5)


def build_checkpoint(gen, C, N, seed):
    r = Init(seed)
    H, F = C // N, 2 * C
    z = {"emb.weight": r.normal(V, C)}
    if gen != "v8-hybrid":  # the hybrid demo never applies ln0 (and its checkpoints have none)
        z["blocks.0.ln0.weight"] = r.normal(C, std=0.1, mean=1.0)
        z["blocks.0.ln0.bias"] = r.normal(C, std=0.1)
    for i in range(L):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            z[b + ln + ".weight"] = r.normal(C, std=0.1, mean=1.0)
            z[b + ln + ".bias"] = r.normal(C, std=0.1)
        a = b + "att."
        for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            z[a + x] = r.uniform(1, 1, C)
        z[a + "w0"] = r.uniform(1, 1, C, lo=-3.0, hi=1.0)
        z[a + "a0"] = r.normal(1, 1, C, std=0.5)
        z[a + "v0"] = r.normal(1, 1, C, std=0.5, mean=0.5)
        for n, D in LORA.items():
            z[a + f"{n}1"] = r.normal(C, D, std=0.3 * C ** -0.5)
            z[a + f"{n}2"] = r.normal(D, C, std=0.3 * D ** -0.5)
        z[a + "k_k"] = r.uniform(1, 1, C, lo=0.7, hi=1.0)
        z[a + "k_a"] = r.uniform(1, 1, C, lo=0.8, hi=1.2)
        z[a + "r_k"] = r.normal(H, N, std=0.3)
        for m in ("receptance", "key", "value", "output"):
            z[a + m + ".weight"] = r.mat(C, C)
        z[a + "ln_x.weight"] = r.normal(C, std=0.1, mean=1.0)
        z[a + "ln_x.bias"] = r.normal(C, std=0.1)
        f = b + "ffn."
        z[f + "x_k"] = r.uniform(1, 1, C)
        z[f + "key.weight"] = r.mat(F, C)
        z[f + "value.weight"] = r.mat(C, F)
        if gen in ("v7a", "v7b"):  # DeepEmbed: a per-token 32x32 gate for the FFN hidden layer
            z[f + "s_emb.weight"] = r.normal(V, SEMB * SEMB, std=0.1)
            z[f + "s_emb_x.weight"] = r.normal(SEMB * SEMB, C, std=0.1 * C ** -0.5)
            z[f + "s1"] = r.normal(C, SEMB, std=C ** -0.5)
            z[f + "s2"] = r.normal(SEMB, F, std=0.3 * SEMB ** -0.5)
            z[f + "s0"] = r.normal(F, std=0.1, mean=1.0)
        if gen in ("v8", "v8-hybrid"):  # the per-token output scale
            z[f + "enn.weight"] = r.normal(V, C, std=0.2, mean=1.0)
        q = b + "qkv."
        if gen == "v7b":
            z[q + "qq.weight"] = r.mat(QK, C)
            z[q + "k1"] = r.normal(C, KV, std=C ** -0.5)
            z[q + "k2"] = r.normal(KV, QK, std=KV ** -0.5)
            z[q + "k_emb.weight"] = r.normal(V, QK, std=0.1, mean=1.0)
            z[q + "k_emb_x.weight"] = r.normal(QK, C, std=0.1 * C ** -0.5)
            z[q + "v1"] = r.normal(C, KV, std=C ** -0.5)
            z[q + "v2"] = r.normal(KV, C, std=KV ** -0.5)
            z[q + "v_emb.weight"] = r.normal(V, C, std=0.1, mean=1.0)
            z[q + "v_emb_x.weight"] = r.normal(C, C, std=0.1 * C ** -0.5)
            z[q + "x_q"] = r.uniform(1, 1, QK)
            z[q + "x_k"] = r.uniform(1, 1, QK)
            z[q + "x_v"] = r.uniform(1, 1, C)
        if gen == "v8-hybrid":
            z[q + "qq.weight"] = r.mat(QK, C)
            z[q + "kk.weight"] = r.mat(KV, C)
            z[q + "kkup.weight"] = r.mat(QK, KV)
            z[q + "ennk.weight"] = r.normal(V, QK, std=0.1, mean=1.0)
            z[q + "vv.weight"] = r.mat(KV, C)
            z[q + "vvup.weight"] = r.mat(C, KV)
            z[q + "emm.weight"] = r.normal(V, C, std=0.1, mean=1.0)
        if gen in ("v7b", "v8-hybrid"):
            for ln, n in (("lnq", QK), ("lnk", QK), ("lnv", C)):
                z[q + ln + ".weight"] = r.normal(n, std=0.1, mean=1.0)
                z[q + ln + ".bias"] = r.normal(n, std=0.1)
    z["ln_out.weight"] = r.normal(C, std=0.1, mean=1.0)
    z["ln_out.bias"] = r.normal(C, std=0.1)
    z["head.weight"] = r.mat(V, C)
    return z


# ---- files --------------------------------------------------------------------------------------

def write_safetensors(path, tensors, dtype):
    np_type, st_type = {"F16": ("<f2", "F16"), "F32": ("<f4", "F32")}[dtype]
    header, blobs, off = {}, [], 0
    for k, v in tensors.items():
        b = np.ascontiguousarray(v.detach().float().numpy(), dtype=np_type).tobytes()
        header[k] = {"dtype": st_type, "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def state_tensors(prefix, state, gen):
    """The demo's state list as named tensors (the engine's per-layer names)."""
    out = {}
    for i in range(L):
        out[f"{prefix}.L{i}.att_x_prev"] = state[i * 3 + 0]
        out[f"{prefix}.L{i}.att_kv"] = state[i * 3 + 1]  # (H, N value, N key)
        out[f"{prefix}.L{i}.ffn_x_prev"] = state[i * 3 + 2]
        if gen in ("v7b", "v8-hybrid"):
            out[f"{prefix}.L{i}.k_cache"] = state[L * 3 + 1 + i * 2]  # (T, 32) raw k projections
            out[f"{prefix}.L{i}.v_cache"] = state[L * 3 + 1 + i * 2 + 1]  # (T, 32) raw v projections
            if gen == "v7b":
                out[f"{prefix}.L{i}.q_prev"] = state[L * 3 + 1 + 24 + i]  # (256) the token shift of q
    return out


def run(gen, shape, tmp):
    C, N = SHAPES[shape]["C"], SHAPES[shape]["N"]
    seed = 1000 * list(GENERATIONS).index(gen) + C + N
    z = build_checkpoint(gen, C, N, seed)
    pth = os.path.join(tmp, f"{gen}-{shape}")
    torch.save(z, pth + ".pth")
    mod = load_demo(GENERATIONS[gen], pth, C, N, tmp)
    model = mod.RWKV_x070(mod.args)
    with torch.no_grad():
        rnn, state = [], None
        for t in TOKENS:
            out, state = model.forward(t, state)  # one token per call (7b/hybrid: forward_seq([t]), the file's only path)
            rnn.append(out.float().clone())
            state = copy.deepcopy(state)
        rnn_state = state
        seq, seq_state = model.forward(TOKENS, None, full_output=True)
        seq, seq_state = seq.clone(), copy.deepcopy(seq_state)
        c1, st = model.forward(TOKENS[:SPLIT], None, full_output=True)
        c1, st = c1.clone(), copy.deepcopy(st)
        c2, st = model.forward(TOKENS[SPLIT:], st, full_output=True)
        chunked = torch.cat([c1, c2.clone()])
        chunked_state = copy.deepcopy(st)
    if gen in ("v7b", "v8-hybrid"):
        for s in (rnn_state, seq_state, chunked_state):
            assert s[L * 3].tolist() == TOKENS, "the token id cache holds the context"
    out = {"rnn.logits": torch.stack(rnn), "seq.logits": seq, "chunked.logits": chunked}
    out.update(state_tensors("rnn", rnn_state, gen))
    out.update(state_tensors("seq", seq_state, gen))
    out.update(state_tensors("chunked", chunked_state, gen))
    d = os.path.join(OUT, gen, shape)
    os.makedirs(d, exist_ok=True)
    write_safetensors(os.path.join(d, "model.safetensors"), z, "F16")
    write_safetensors(os.path.join(d, "golden.safetensors"), out, "F32")
    diffs = {
        "rnn_vs_seq": float((out["rnn.logits"] - seq).abs().max()),
        "seq_vs_chunked": float((seq - chunked).abs().max()),
    }
    meta = {
        "generation": gen, "demo": GENERATIONS[gen],
        "config": {"n_layer": L, "n_embd": C, "head_size": N, "n_head": C // N, "dim_ffn": 2 * C, "vocab_size": V},
        "tokens": TOKENS, "split": SPLIT, "max_abs_diff": diffs, "golden": sorted(out),
    }
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(gen, shape, diffs, "logit range", float(seq.abs().max()))


def write_notes(tmp):
    lines = ["# Golden data for RWKV-7a / 7b / 8 rc00 / 8 rc00 hybrid: how the official files were run", "",
             "Made by `tools/golden/make_golden.py` (see its docstring for the outputs and how to rerun it).",
             "Each official demo of `../shared/reference/rwkv-lm/` was patched by these substitutions only,",
             "then imported and called directly (`model.forward(token, state)` per token; `forward(tokens, None,",
             f"full_output=True)`; the same in two calls split after token {SPLIT}):", ""]
    for why, pat, _rep, _c in patches("<tmp>/<generation>-<shape>", 0, 0):
        if why:
            lines.append(f"- {why}: `{pat}`")
    lines += ["", "The hybrid file's CRLF line ends are read as LF. Below: the diff of each original against the",
              "patched file (shape head64).", ""]
    for gen, name in GENERATIONS.items():
        original, text = patched_source(name, f"<tmp>/{gen}-head64", SHAPES["head64"]["C"], SHAPES["head64"]["N"])
        cut = re.search(r"\n#+\n#\n# The testing code", original)
        kept = original[: cut.start() + 1]  # the driver section is dropped whole: shown as one line, not its diff
        diff = difflib.unified_diff(kept.splitlines(), text.splitlines(), f"reference/rwkv-lm/{name}", f"patched/{name}", lineterm="", n=1)
        cut_line = kept.count("\n") + 1
        total = original.count("\n") + 1
        lines += [f"## {name}", "", f"Lines {cut_line}-{total} (the testing code) dropped; the rest:", "", "```diff", *diff, "```", ""]
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "NOTES.md"), "w") as f:
        f.write("\n".join(lines))


def main():
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for gen in GENERATIONS:
            for shape in SHAPES:
                run(gen, shape, tmp)
        write_notes(tmp)


if __name__ == "__main__":
    main()
