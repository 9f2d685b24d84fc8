"""A minimal GPT in nanoGPT's architecture, the eager-speed yardstick of the training benchmark.

Written for the benchmark in plain PyTorch, no options: token and learned position embeddings,
pre-LayerNorm blocks with one fused query/key/value projection, causal SDPA, an exact-GELU MLP
of width 4 d_model, a final LayerNorm and a readout tied to the token embedding, biases
everywhere except the readout, no dropout. Same shapes and parameter count as phaselab's GPT
with `tie_embeddings=True`, so the two steps do the same arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.fc, self.proj = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        # [B, T, C] -> [B, heads, T, C / heads]
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(z.transpose(1, 2).reshape(B, T, C))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, d_vocab: int, n_ctx: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.embed = nn.Embedding(d_vocab, d_model)
        self.pos_embed = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        for p in self.parameters():  # GPT-2's init (the speed does not depend on it)
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, T] -> logits [B, T, d_vocab]."""
        x = self.embed(tokens) + self.pos_embed.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.embed.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def reference(d_vocab: int, n_ctx: int, d_model: int, n_layers: int, n_heads: int) -> ReferenceGPT:
    torch.manual_seed(0)
    return ReferenceGPT(d_vocab, n_ctx, d_model, n_layers, n_heads)
