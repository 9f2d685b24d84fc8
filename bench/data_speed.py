"""Data generation speed of every task, and its share of a training step of the smallest model.

Each kind in `tasks.TASKS`, built from its config defaults, draws training batches of 64 and
1024 examples (`train_batch`, on the device, from a seeded generator). The share is the time
of a batch of 64 over that of a batch plus one training step (forward, masked loss, backward,
AdamW) of the smallest ladder point, d_model 64 / 2 layers, at the task's context and
vocabulary: the part of a training step spent making data (goal: under 5%).
"""

from __future__ import annotations

import torch

import tasks
from bench.timing import interleaved, median, table
from models import GPT, GPTConfig
from train.step import masked_cross_entropy

BATCHES = (64, 1024)
SMALLEST = {"d_model": 64, "n_layers": 2, "n_heads": 2}


def training_step(task: tasks.Task, generator: torch.Generator, device: torch.device):
    """One step of the smallest model on one fixed batch of 64 of `task`."""
    model = GPT(GPTConfig(d_vocab=task.d_vocab, n_ctx=task.seq_len, **SMALLEST)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = task.train_batch(64, generator)
    start = task.loss_start

    def step() -> None:
        logits = model(batch.tokens, start=start)
        loss = masked_cross_entropy(logits, batch.targets[:, start:], batch.mask[:, start:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def batches(task: tasks.Task, size: int, generator: torch.Generator, calls: int):
    """A function drawing `calls` training batches of `size` examples."""
    return lambda: [task.train_batch(size, generator) for _ in range(calls)]


def main(quick: bool, device: torch.device) -> str:
    rows = []
    for kind, (schema, _) in tasks.TASKS.items():
        task = tasks.build(schema(), device)
        generator = torch.Generator(device).manual_seed(0)
        calls = 10 if quick else 50  # batches per timed call
        candidates = {size: batches(task, size, generator, calls) for size in BATCHES}
        candidates["step"] = training_step(task, generator, device)
        times = interleaved(candidates, repeats=3 if quick else 7, device=device)
        per_batch = {size: median(times[size]) / calls for size in BATCHES}
        step = median(times["step"])
        rows.append([kind, task.seq_len, *(size / per_batch[size] for size in BATCHES),
                     1e6 * per_batch[64], 1e3 * step,
                     f"{100 * per_batch[64] / (per_batch[64] + step):.1f}%"])
        print(table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    return "\n".join([
        "## Data generation",
        "",
        "`train_batch` of each task with its default config; share = batch of 64 / (batch + "
        "training step of d_model 64, 2 layers, batch 64, at the task's n_ctx). Goal: under 5%.",
        "",
        table(HEADERS, rows),
    ])


HEADERS = ["task", "n_ctx", "examples/s (batch 64)", "examples/s (batch 1024)",
           "us per batch of 64", "d64/2L step ms", "share of a step"]
