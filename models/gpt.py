"""GPT: the decoder-only transformer every phaselab experiment trains.

Pre-norm blocks (attention, then an optional MLP) on a residual stream, in the spirit of
nanoGPT, with the switches the experiments vary: norm type, position encoding, attention-only
blocks, tied embeddings, standard or muP parametrization. Three forward paths share the weights:

- training path, `model(tokens, start=0)`: attention through `F.scaled_dot_product_attention`;
  `start` drops the final layer's work on positions whose logits nobody reads;
- inspection path, `model(tokens, cache=True)` and/or `model(tokens, hooks={name: fn})`: the
  same computation with activations recorded and/or replaced at TransformerLens hook points
  (models/hooks.py lists them and builds ablations and patches); attention is computed
  explicitly where its pattern is read, through SDPA everywhere else;
- decoding path, `model(tokens, past=kv)` with a `KVCache`: the tokens continue the positions
  already in `kv`, attend to their stored keys and values and append their own, so greedy
  generation costs one position per new token.

Shapes: B batch, T positions, Q query positions, K key positions, H heads, D d_head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum
from torch import Tensor, nn

from models.config import GPTConfig
from models.hooks import Hook, HookPoints, check_names, hook_names
from models.ladder import flops_per_token


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.d_model, bias=cfg.bias)
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=1e-5)  # fixed eps: the dtype default is large in bf16
    return nn.Identity()


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """F.dropout, skipped where it does nothing: the smallest models are bound by per-call
    overhead, not arithmetic."""
    return F.dropout(x, p) if p and training else x


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021), rotating the two halves of each head."""

    def __init__(self, d_head: int, n_ctx: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
        angles = torch.outer(torch.arange(n_ctx, dtype=torch.float32), inv_freq)  # [n_ctx, D/2]
        angles = torch.cat([angles, angles], dim=-1)  # [n_ctx, D]
        # Recomputable from the config, so kept out of the state dict.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, offset: int) -> Tensor:
        """x [B, H, T, D] holding positions offset..offset+T-1 -> rotated x."""
        positions = slice(offset, offset + x.shape[-2])
        cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache:
    """Keys and values of every layer at positions 0 .. len-1, for incremental decoding.

    Buffers [B, H, n_ctx, D] per layer are allocated on first use, in the dtype the keys are
    computed in (bfloat16 under autocast), and written in place: no per-token concatenation.
    `GPT.forward(tokens, past=kv)` stores the new positions and advances `len`.
    """

    def __init__(self, n_ctx: int):
        self.n_ctx, self.len = n_ctx, 0
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [B, H, T, D] at positions len .. len+T-1 of `layer`; returns the keys and
        values [B, H, len+T, D] of every position so far."""
        if layer not in self.k:
            B, H, _, D = k.shape
            self.k[layer] = k.new_empty(B, H, self.n_ctx, D)
            self.v[layer] = v.new_empty(B, H, self.n_ctx, D)
        end = self.len + k.shape[2]
        self.k[layer][:, :, self.len : end] = k
        self.v[layer][:, :, self.len : end] = v
        if self.len == 0:
            return k, v  # the fresh tensors: a prefill computes exactly what model(tokens) does
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def crop(self, length: int) -> None:
        """Forget positions from `length` on; the next call writes over them."""
        if not 0 <= length <= self.len:
            raise ValueError(f"crop({length}): must be in [0, {self.len}]")
        self.len = length


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.d_attn = d_attn = cfg.n_heads * cfg.d_head
        # Rows: queries, then keys, then values. One matmul where every query is read; with
        # `start`, queries and keys/values are two matmuls on views of it (see forward).
        self.qkv = nn.Linear(cfg.d_model, 3 * d_attn, bias=cfg.bias)
        self.out = nn.Linear(d_attn, cfg.d_model, bias=cfg.bias)
        self.rotary = Rotary(cfg.d_head, cfg.n_ctx) if cfg.pos == "rotary" else None
        # muP scales logits by 1/d_head: once q and k correlate, q.k grows like d_head, not
        # its square root (Yang et al. 2022, Tensor Programs V, Sec. 4).
        self.scale = 1 / cfg.d_head if cfg.parametrization == "mup" else 1 / math.sqrt(cfg.d_head)

    def forward(self, x: Tensor, start: int, hooks: HookPoints | None, name: str,
                past: KVCache | None = None, layer: int = 0) -> Tensor:
        """x [B, T, d_model] -> [B, T - start, d_model]: queries at positions >= start only,
        keys and values at every position. `hooks` sees `name` + attn.hook_pattern,
        attn.hook_z and hook_attn_out; with `past`, x continues the `past.len` positions stored
        there (this is layer `layer`)."""
        # q, k, v [B, T, H*D] split from one output: their gradients flow back with one
        # concatenation (a permuted [3, B, H, T, D] view would cost one more copy in backward).
        if start == 0:
            q, k, v = self.qkv(x).split(self.d_attn, dim=-1)
        else:  # no queries for the positions before `start`: nobody reads their outputs
            w, b, d = self.qkv.weight, self.qkv.bias, self.d_attn
            q = F.linear(x[:, start:], w[:d], None if b is None else b[:d])
            k, v = F.linear(x, w[d:], None if b is None else b[d:]).split(d, dim=-1)
        # -> [B, H, T, D] as plain views: einops' per-call overhead shows on the smallest models
        q, k, v = [t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2) for t in (q, k, v)]
        offset = 0 if past is None else past.len
        if self.rotary is not None:
            q, k = self.rotary(q, offset=offset + start), self.rotary(k, offset=offset)
        if past is not None:
            k, v = past.update(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        T = x.shape[1]
        explicit = hooks is not None and hooks.wants(name + "attn.hook_pattern")
        if not explicit and start == 0 and offset == 0:
            z = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout, scale=self.scale
            )
        elif not explicit and past is not None and start == T - 1:
            # A decoding step: one query, the newest position, which sees every key.
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        else:
            # SDPA's is_causal aligns the mask top-left, which is wrong once queries start at
            # `start` or follow cached keys: query i sits at position offset + start + i and sees
            # keys 0..offset + start + i.
            causal = torch.ones(T, offset + T, dtype=torch.bool, device=x.device)
            causal = causal.tril(diagonal=offset)[start:]  # [Q, K]
            if not explicit:
                z = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=causal, dropout_p=dropout, scale=self.scale
                )
            else:
                scores = einsum(q, k, "b h q d, b h k d -> b h q k") * self.scale
                pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
                pattern = hooks(name + "attn.hook_pattern", pattern)
                z = F.dropout(pattern, dropout) @ v
        z = z.transpose(1, 2)  # [B, Q, H, D]
        if hooks is None:
            return self.out(z.flatten(2))
        z = hooks(name + "attn.hook_z", z)
        return hooks(name + "hook_attn_out", self.out(z.flatten(2)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.act = F.gelu if cfg.act == "gelu" else F.relu  # exact erf GELU, not tanh
        self.proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1, self.attn = make_norm(cfg), Attention(cfg)
        self.ln2 = None if cfg.attn_only else make_norm(cfg)
        self.mlp = None if cfg.attn_only else MLP(cfg)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, start: int, hooks: HookPoints | None, name: str,
                past: KVCache | None = None, layer: int = 0) -> Tensor:
        """x [B, T, d_model] -> [B, T - start, d_model]; passes through the hook points under
        `name` (blocks.{i}.) if `hooks` is given, reads and extends `past` if given."""
        point = (lambda _, t: t) if hooks is None else hooks
        x = point(name + "hook_resid_pre", x)
        attn = self.attn(self.ln1(x), start, hooks, name, past, layer)
        # A slice, even an empty one, costs a copy in backward: only cut when there is a cut.
        x = (x[:, start:] if start else x) + dropout(attn, self.dropout, self.training)
        if self.mlp is not None:
            mlp = point(name + "hook_mlp_out", self.mlp(self.ln2(x)))
            x = x + dropout(mlp, self.dropout, self.training)
        return point(name + "hook_resid_post", x)


def param_kind(name: str, p: Tensor) -> str:
    """embedding | readout | hidden | no_decay: decides init, muP learning rate and decay."""
    if name.startswith(("embed.", "pos_embed.")):
        return "embedding"
    if name.startswith("unembed."):
        return "readout"
    return "hidden" if p.ndim == 2 else "no_decay"  # 1-d: biases and norm gains


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg = cfg.for_building()
        # muP's width multiplier (Yang et al. 2022): d_model relative to mup_base_width.
        mup = cfg.parametrization == "mup"
        self.width_mult = cfg.d_model / cfg.mup_base_width if mup else 1.0
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.pos == "learned" else None
        self.dropout = cfg.dropout
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = make_norm(cfg)
        untied = not cfg.tie_embeddings
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False) if untied else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init times `init_scale`: weights N(0, init_std), output projections into the
        residual stream shrunk by 1/sqrt(2 n_layers), biases 0, norm gains 1. Under muP the
        hidden matrices' std is further divided by sqrt(width_mult), so their init variance
        falls like 1/fan_in (Yang et al. 2022, Table 3)."""
        cfg = self.cfg
        hidden_std = cfg.init_std / math.sqrt(self.width_mult)
        for name, p in self.named_parameters():
            kind = param_kind(name, p)
            if kind == "no_decay":
                p.fill_(0.0 if name.endswith("bias") else 1.0)
            elif kind == "hidden":
                residual_out = name.endswith(("attn.out.weight", "mlp.proj.weight"))
                std = hidden_std / math.sqrt(2 * cfg.n_layers) if residual_out else hidden_std
                nn.init.normal_(p, std=std)
            else:
                nn.init.normal_(p, std=cfg.init_std)
            p.mul_(cfg.init_scale)  # Omnigrok scales every initial weight (Liu et al. 2023)

    def hook_names(self) -> list[str]:
        """The hook points of this model (see models/hooks.py)."""
        return hook_names(self.cfg.n_layers, self.cfg.attn_only)

    def forward(self, tokens: Tensor, start: int = 0, cache: bool = False,
                past: KVCache | None = None, hooks: dict[str, Hook] | None = None):
        """tokens [B, T] int64 -> logits [B, T - start, d_vocab]. `hooks` {name: fn} replaces
        the activation at each named point by fn(activation) (None: unchanged); with
        cache=True, returns (logits, cache) holding every point's activation after its hook,
        over every position. With `past`, tokens sit at positions past.len .. past.len + T - 1,
        attend to the keys and values stored there too, and are appended to it."""
        T = tokens.shape[1]
        offset = 0 if past is None else past.len
        if hooks:
            check_names(hooks, self.hook_names())
        points = HookPoints(hooks or {}, cache) if hooks or cache else None
        if past is not None:
            if points is not None:
                raise ValueError("cache=True and hooks see every position; they cannot run "
                                 "with past")
            n_ctx = min(self.cfg.n_ctx, past.n_ctx)
            if n_ctx < offset + T:
                raise ValueError(
                    f"{offset} cached positions + {T} new tokens exceed the KV cache's "
                    f"length {past.n_ctx} or model.n_ctx={self.cfg.n_ctx}"
                )
        elif self.cfg.n_ctx < T:
            raise ValueError(f"sequence of {T} tokens exceeds model.n_ctx={self.cfg.n_ctx}")
        if not 0 <= start < T:
            raise ValueError(f"start={start} must be in [0, {T}) for a sequence of {T} tokens")
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[offset : offset + T]
        if points is not None:
            x = points("hook_embed", x)
        x = dropout(x, self.dropout, self.training)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # Earlier layers need every position: the last layer's keys and values read them.
            skip = start if i == last and points is None else 0
            x = block(x, skip, points, f"blocks.{i}.", past, i)
        if past is not None:
            past.len += T
        x = self.ln_f(x[:, start - T :] if start else x)
        logits = F.linear(x, self.embed.weight if self.unembed is None else self.unembed.weight)
        if self.cfg.parametrization == "mup":
            logits = logits / self.width_mult  # muP readout multiplier (Yang et al. 2022)
        return (logits, points.store) if cache else logits

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; non_embedding leaves out token and position embeddings and the
        untied unembedding (Kaplan et al. 2020)."""
        skip = ("embedding", "readout") if non_embedding else ()
        return sum(p.numel() for n, p in self.named_parameters() if param_kind(n, p) not in skip)

    def flops_per_token(self) -> int:
        return flops_per_token(self.cfg)

    def param_groups(self, lr: float, weight_decay: float, decay_embeddings: bool = False):
        """Parameter groups for torch.optim.AdamW, the one place that decides per-parameter
        learning rates and weight decay.

        muP with Adam (Yang et al. 2022, Table 3): hidden matrices, whose fan-in grows with
        width, learn at lr / width_mult; embeddings, the readout, biases and norm gains at lr.
        Under standard parametrization every group gets lr. Weight decay skips biases, norm
        gains and, unless decay_embeddings, the embeddings (with tied embeddings, that includes
        the readout); the untied readout matrix is decayed like the hidden ones. Schedules must
        scale each group's own lr (as LambdaLR does), not overwrite it."""
        settings = {
            "hidden": (lr / self.width_mult, weight_decay),
            "readout": (lr, weight_decay),
            "embedding": (lr, weight_decay if decay_embeddings else 0.0),
            "no_decay": (lr, 0.0),
        }
        params = {kind: [] for kind in settings}
        for name, p in self.named_parameters():
            params[param_kind(name, p)].append(p)
        return [
            {"name": kind, "params": ps, "lr": settings[kind][0], "weight_decay": settings[kind][1]}
            for kind, ps in params.items()
            if ps
        ]
