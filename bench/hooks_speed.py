"""What hook points cost a training step: none when no hook is given.

The same training step (train_speed's: forward, cross-entropy, backward, AdamW) of the GPT
with no hooks, with `hooks={}`, with an identity hook on every layer's `attn.hook_z` (attention
stays in SDPA) and with one on every `attn.hook_pattern` (attention computed explicitly, as for
`cache=True`). All interleaved in one run; ratios are speeds relative to the step with no hooks.
"""

from __future__ import annotations

import torch

from bench.timing import interleaved, median, speedup, table, timed
from bench.train_speed import BATCH, D_HEAD, D_VOCAB, train_step
from models import GPT, GPTConfig

SIZES = [(64, 2, 32), (128, 2, 32), (256, 4, 64)]  # d_model, n_layers, n_ctx


def config(d_model: int, n_layers: int, n_ctx: int) -> GPTConfig:
    return GPTConfig(d_vocab=D_VOCAB, n_ctx=n_ctx, d_model=d_model, n_layers=n_layers,
                     n_heads=d_model // D_HEAD, dropout=0.0)


def identity(x):
    return x


def measure(d_model: int, n_layers: int, n_ctx: int, device: torch.device,
            quick: bool) -> dict[str, float]:
    cfg = config(d_model, n_layers, n_ctx)
    torch.manual_seed(0)
    new = GPT(cfg)
    one = train_step(new, new, n_ctx, device, 1)
    one()
    steps = max(1, round(0.2 / timed(one, device)))
    z = {f"blocks.{i}.attn.hook_z": identity for i in range(n_layers)}
    pattern = {f"blocks.{i}.attn.hook_pattern": identity for i in range(n_layers)}
    candidates = {
        "none": train_step(new, new, n_ctx, device, steps),
        "empty": train_step(new, lambda t: new(t, hooks={}), n_ctx, device, steps),
        "z": train_step(new, lambda t: new(t, hooks=z), n_ctx, device, steps),
        "pattern": train_step(new, lambda t: new(t, hooks=pattern), n_ctx, device, steps),
    }
    times = interleaved(candidates, 3 if quick else 9, warmup=1, device=device)
    return {"none_ms": 1e3 * median(times["none"]) / steps,
            **{name: speedup(times, name, "none") for name in candidates if name != "none"}}


def main(quick: bool, device: torch.device) -> str:
    rows = []
    for d_model, n_layers, n_ctx in SIZES[:2] if quick else SIZES:
        r = measure(d_model, n_layers, n_ctx, device, quick)
        rows.append([d_model, n_layers, n_ctx, r["none_ms"], f"**{r['empty']:.3f}**",
                     f"{r['z']:.3f}", f"{r['pattern']:.3f}"])
        print(table(HEADERS, rows).splitlines()[-1], flush=True)
    return "\n".join([
        "## Hook points: the training step with and without hooks",
        "",
        f"Batch {BATCH}, d_vocab {D_VOCAB}, d_head {D_HEAD}; train_speed's step. Speed relative "
        "to the same step with no hooks (> 1: faster), median of paired ratios, all "
        "candidates interleaved. `hook_z`: identity hooks on every layer's per-head outputs "
        "(attention still SDPA); `hook_pattern`: identity hooks on every "
        "pattern (attention computed explicitly).",
        "",
        table(HEADERS, rows),
    ])


HEADERS = ["d_model", "n_layers", "n_ctx", "no hooks ms/step", "hooks={}", "hook_z hooked",
           "hook_pattern hooked"]
