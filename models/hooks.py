"""Hook points of the GPT and the interventions written at them: ablation and patching.

`model(tokens, hooks={name: fn})` calls `fn(activation)` at each named point during the forward
pass and carries on with what it returns (None: the activation unchanged). The names are
TransformerLens's, per layer i:

    hook_embed                  [B, T, d_model]  token (+ learned position) embedding
    blocks.{i}.hook_resid_pre   [B, T, d_model]  residual stream into block i
    blocks.{i}.attn.hook_pattern [B, H, Q, K]    attention probabilities
    blocks.{i}.attn.hook_z      [B, T, H, D]     per-head outputs, before the output projection
    blocks.{i}.hook_attn_out    [B, T, d_model]  attention's output (projection and bias)
    blocks.{i}.hook_mlp_out     [B, T, d_model]  the MLP's output (absent in attn_only models)
    blocks.{i}.hook_resid_post  [B, T, d_model]  residual stream out of block i

`model(tokens, cache=True)` records the same points, after any hook has run, so a cache holds
what the rest of the model saw. Attention is computed explicitly only where a pattern is read
or hooked; every other point leaves the fused SDPA kernel in place.

    from models import hooks
    clean_logits, clean = model(clean_tokens, cache=True)
    ablated = model(tokens, hooks=hooks.ablate_heads([(1, 0), (1, 2)]))
    patched = model(corrupted_tokens, hooks=hooks.patch(clean, "blocks.0.hook_resid_post", [5]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

Hook = Callable[[Tensor], Tensor | None]
BLOCK_POINTS = ("hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
                "hook_mlp_out", "hook_resid_post")


def hook_names(n_layers: int, attn_only: bool = False) -> list[str]:
    """Every hook point of a model, in the order the forward pass reaches them."""
    points = [p for p in BLOCK_POINTS if not (attn_only and p == "hook_mlp_out")]
    return ["hook_embed"] + [f"blocks.{i}.{p}" for i in range(n_layers) for p in points]


class HookPoints:
    """One forward pass's hook points: applies `fns` and, with `record`, keeps every point's
    activation in `store`. The model passes None instead where there is nothing to do."""

    def __init__(self, fns: dict[str, Hook], record: bool):
        self.fns, self.store = fns, ({} if record else None)

    def wants(self, name: str) -> bool:
        """Whether the activation at `name` is read (recorded or hooked)."""
        return self.store is not None or name in self.fns

    def __call__(self, name: str, x: Tensor) -> Tensor:
        fn = self.fns.get(name)
        if fn is not None:
            out = fn(x)
            if out is not None:
                if out.shape != x.shape:
                    raise ValueError(f"hook {name!r} returned shape {tuple(out.shape)}; the "
                                     f"activation there has shape {tuple(x.shape)}")
                x = out
        if self.store is not None:
            self.store[name] = x
        return x


def check_names(names: Iterable[str], allowed: list[str]) -> None:
    """Raise naming the unknown hook names and listing the allowed ones."""
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"hooks={unknown}: unknown hook point(s); this model's are "
                         f"{', '.join(allowed)}")


def compose(*hook_sets: dict[str, Hook]) -> dict[str, Hook]:
    """One hooks dict from several: hooks on the same point run in the order given."""
    fns: dict[str, list[Hook]] = {}
    for hooks in hook_sets:
        for name, fn in hooks.items():
            fns.setdefault(name, []).append(fn)

    def chain(fs: list[Hook]) -> Hook:
        def run(x: Tensor) -> Tensor:
            for f in fs:
                out = f(x)
                x = x if out is None else out
            return x
        return run

    return {name: fs[0] if len(fs) == 1 else chain(fs) for name, fs in fns.items()}


def _set_heads(heads: list[int], value: Callable[[Tensor], Tensor]) -> Hook:
    """A hook_z hook writing value(z)[..., h, :] into heads h (out of place: autograd-safe)."""
    def hook(z: Tensor) -> Tensor:  # z [B, T, H, D]
        z = z.clone()
        z[:, :, heads] = value(z)[..., heads, :].to(z.dtype)
        return z
    return hook


def _by_layer(heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    layers: dict[int, list[int]] = {}
    for layer, head in heads:
        layers.setdefault(int(layer), []).append(int(head))
    return layers


def ablate_heads(heads: Iterable[tuple[int, int]], means: dict[str, Tensor] | None = None
                 ) -> dict[str, Hook]:
    """Hooks replacing the output z of each (layer, head) before the output projection: by zero,
    or with `means` (a cache, e.g. from `model(reference_tokens, cache=True)`) by that head's
    mean z over the cached examples and positions (mean ablation)."""
    hooks = {}
    for layer, hs in _by_layer(heads).items():
        name = f"blocks.{layer}.attn.hook_z"
        if means is None:
            hooks[name] = _set_heads(hs, torch.zeros_like)
        else:
            mean = means[name].mean(dim=(0, 1))  # [H, D]
            hooks[name] = _set_heads(hs, lambda z, mean=mean: mean.to(z.device).expand_as(z))
    return hooks


def zero(*names: str) -> dict[str, Hook]:
    """Hooks zeroing whole activations, e.g. `zero("blocks.0.hook_mlp_out")` removes layer 0's
    MLP from the residual stream."""
    return {name: torch.zeros_like for name in names}


def patch(cache: dict[str, Tensor], name: str, positions: Iterable[int] | None = None,
          heads: Iterable[int] | None = None) -> dict[str, Hook]:
    """Hooks writing the cached activation at `name` into this run: at `positions` (the
    sequence axis, 1 for every point but hook_pattern's query axis 2) or everywhere, and for
    hook_z / hook_pattern only at `heads` if given. Activation patching (Meng et al. 2022):
    cache a clean run, patch it into a corrupted one, see which points restore the output."""
    source = cache[name]
    head_axis = {"hook_z": 2, "hook_pattern": 1}.get(name.rsplit(".", 1)[-1])
    if heads is not None and head_axis is None:
        raise ValueError(f"patch(heads=...): only hook_z and hook_pattern have heads, not {name}")
    chosen = {}  # axis -> indices kept there
    if positions is not None:
        chosen[2 if head_axis == 1 else 1] = list(positions)
    if heads is not None:
        chosen[head_axis] = list(heads)
    mask = torch.ones((1,) * source.ndim, dtype=torch.bool)
    for axis, index in chosen.items():  # one axis at a time: indices on two axes don't pair up
        keep = torch.zeros(source.shape[axis], dtype=torch.bool)
        keep[index] = True
        mask = mask & keep.view([-1 if a == axis else 1 for a in range(source.ndim)])

    def hook(x: Tensor) -> Tensor:
        if x.shape != source.shape:
            raise ValueError(f"patch {name!r}: cached shape {tuple(source.shape)}, this run's "
                             f"{tuple(x.shape)}")
        return torch.where(mask.to(x.device), source.to(x), x)
    return {name: hook}
