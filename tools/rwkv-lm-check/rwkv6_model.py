"""RWKV-6 as RWKV-LM's trainer defines it (RWKV-v5/src/model.py, RWKV_MY_TESTING="x060"), for check.py.

../shared holds no RWKV-6 model class, so this is a transcription of the official classes'
parameters (same names, shapes and registration order, so state_dict() keys come out in RWKV-LM's
order) and forward math (jit_func / jit_func_2 / the channel mix), with the CUDA WKV6 kernel
written as its plain loop. Initial values are left at zero: every parameter is loaded. check.py
verifies this file against ../shared/golden/v6, whose logits were computed by the official
classes, before using it.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

D_MIX_LORA = 32
D_DECAY_LORA = 64
HEAD_SIZE_DIVISOR = 8


def wkv6(r, k, v, w, u, H):
    """RUN_CUDA_RWKV6: per head, y_t[i] = sum_j r[j] (u[j] k[j] v[i] + S[j,i]); S[j,i] <- S[j,i] exp(-exp(w[j])) + k[j] v[i]."""
    B, T, C = r.shape
    N = C // H
    r, k, v, w = [x.float().view(B, T, H, N) for x in (r, k, v, w)]
    decay = torch.exp(-torch.exp(w))
    u = u.float().view(1, H, N, 1)
    s = torch.zeros(B, H, N, N)  # s[b, h, key j, value i]
    y = torch.empty(B, T, H, N)
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        y[:, t] = (r[:, t, :, :, None] * (u * kv + s)).sum(2)
        s = s * decay[:, t, :, :, None] + kv
    return y.view(B, T, C)


class Tmix_x060(nn.Module):
    def __init__(self, C, H, N):
        super().__init__()
        self.n_head = H
        z = lambda *shape: nn.Parameter(torch.zeros(*shape))
        self.time_maa_x, self.time_maa_w, self.time_maa_k = z(1, 1, C), z(1, 1, C), z(1, 1, C)
        self.time_maa_v, self.time_maa_r, self.time_maa_g = z(1, 1, C), z(1, 1, C), z(1, 1, C)
        self.time_maa_w1 = z(C, D_MIX_LORA * 5)
        self.time_maa_w2 = z(5, D_MIX_LORA, C)
        self.time_decay = z(1, 1, C)
        self.time_decay_w1 = z(C, D_DECAY_LORA)
        self.time_decay_w2 = z(D_DECAY_LORA, C)
        self.time_faaaa = z(H, N)
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=(1e-5) * (HEAD_SIZE_DIVISOR ** 2))

    def forward(self, x):
        B, T, C = x.size()
        xx = self.time_shift(x) - x
        xxx = x + xx * self.time_maa_x
        xxx = torch.tanh(xxx @ self.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
        xxx = torch.bmm(xxx, self.time_maa_w2).view(5, B, T, -1)
        mw, mk, mv, mr, mg = xxx.unbind(dim=0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        g = F.silu(self.gate(xg))
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        x = wkv6(r, k, v, w, self.time_faaaa, self.n_head)
        x = self.ln_x(x.view(B * T, C)).view(B, T, C)
        return self.output(x * g)


class Cmix_x060(nn.Module):
    def __init__(self, C, F_):
        super().__init__()
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, F_, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(F_, C, bias=False)

    def forward(self, x):
        xx = self.time_shift(x) - x
        xk = x + xx * self.time_maa_k
        xr = x + xx * self.time_maa_r
        k = torch.relu(self.key(xk)) ** 2
        return torch.sigmoid(self.receptance(xr)) * self.value(k)


class Block(nn.Module):
    def __init__(self, i, C, F_, H, N):
        super().__init__()
        self.layer_id = i
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        if i == 0:
            self.ln0 = nn.LayerNorm(C)
        self.att = Tmix_x060(C, H, N)
        self.ffn = Cmix_x060(C, F_)

    def forward(self, x):
        if self.layer_id == 0:
            x = self.ln0(x)
        x = x + self.att(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class RWKV6(nn.Module):
    def __init__(self, n_layer, n_embd, dim_ffn, head_size, vocab_size):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, n_embd)
        self.blocks = nn.ModuleList([Block(i, n_embd, dim_ffn, n_embd // head_size, head_size) for i in range(n_layer)])
        self.ln_out = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_out(x))
