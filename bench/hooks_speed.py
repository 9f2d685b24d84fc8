"""What hook points cost a training step: none when no hook is given.

The same training step (train_speed's: forward, cross-entropy, backward, AdamW) of the GPT
before hook points existed (models/gpt.py at commit BEFORE, read from git), of today's GPT with
no hooks and with `hooks={}`, with an identity hook on every layer's `attn.hook_z` (attention
stays in SDPA) and with one on every `attn.hook_pattern` (attention computed explicitly, as for
`cache=True`). All interleaved in one run; ratios are speeds relative to the step before.
"""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
from pathlib import Path

import torch

from bench.timing import interleaved, median, speedup, table, timed
from bench.train_speed import BATCH, D_HEAD, D_VOCAB, train_step
from models import GPT, GPTConfig

BEFORE = "12b1786"  # the last commit whose models/gpt.py has no hook points
SIZES = [(64, 2, 32), (128, 2, 32), (256, 4, 64)]  # d_model, n_layers, n_ctx
ROOT = Path(__file__).resolve().parents[1]


def gpt_before() -> type:
    """The GPT class of models/gpt.py at BEFORE."""
    source = subprocess.run(["git", "show", f"{BEFORE}:models/gpt.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    source = source.replace("cfg.complete()", "cfg.for_building()")  # renamed since
    path = Path(tempfile.mkdtemp()) / "gpt_before_hooks.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("gpt_before_hooks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPT


def config(d_model: int, n_layers: int, n_ctx: int) -> GPTConfig:
    return GPTConfig(d_vocab=D_VOCAB, n_ctx=n_ctx, d_model=d_model, n_layers=n_layers,
                     n_heads=d_model // D_HEAD, dropout=0.0)


def identity(x):
    return x


def measure(d_model: int, n_layers: int, n_ctx: int, device: torch.device, quick: bool,
            before: type) -> dict[str, float]:
    cfg = config(d_model, n_layers, n_ctx)
    torch.manual_seed(0)
    old, new = before(cfg), GPT(cfg)
    one = train_step(new, new, n_ctx, device, 1)
    one()
    steps = max(1, round(0.2 / timed(one, device)))
    z = {f"blocks.{i}.attn.hook_z": identity for i in range(n_layers)}
    pattern = {f"blocks.{i}.attn.hook_pattern": identity for i in range(n_layers)}
    candidates = {
        "before": train_step(old, old, n_ctx, device, steps),
        "none": train_step(new, new, n_ctx, device, steps),
        "empty": train_step(new, lambda t: new(t, hooks={}), n_ctx, device, steps),
        "z": train_step(new, lambda t: new(t, hooks=z), n_ctx, device, steps),
        "pattern": train_step(new, lambda t: new(t, hooks=pattern), n_ctx, device, steps),
    }
    times = interleaved(candidates, 3 if quick else 9, warmup=1, device=device)
    return {"before_ms": 1e3 * median(times["before"]) / steps,
            **{name: speedup(times, name, "before") for name in candidates if name != "before"}}


def main(quick: bool, device: torch.device) -> str:
    before = gpt_before()
    rows = []
    for d_model, n_layers, n_ctx in SIZES[:2] if quick else SIZES:
        r = measure(d_model, n_layers, n_ctx, device, quick, before)
        rows.append([d_model, n_layers, n_ctx, r["before_ms"], f"**{r['none']:.3f}**",
                     f"{r['empty']:.3f}", f"{r['z']:.3f}", f"{r['pattern']:.3f}"])
        print(table(HEADERS, rows).splitlines()[-1], flush=True)
    return "\n".join([
        "## Hook points: the training step with and without hooks",
        "",
        f"Batch {BATCH}, d_vocab {D_VOCAB}, d_head {D_HEAD}; train_speed's step. Speed relative "
        f"to the step of models/gpt.py at {BEFORE}, before hook points (> 1: faster), median of "
        "paired ratios, all candidates interleaved. `hook_z`: identity hooks on every layer's "
        "per-head outputs (attention still SDPA); `hook_pattern`: identity hooks on every "
        "pattern (attention computed explicitly).",
        "",
        table(HEADERS, rows),
    ])


HEADERS = ["d_model", "n_layers", "n_ctx", "before ms/step", "no hooks", "hooks={}",
           "hook_z hooked", "hook_pattern hooked"]
