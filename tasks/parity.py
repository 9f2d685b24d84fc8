"""Sparse parity (Barak et al. 2022) and its multitask form (Michaud et al. 2023).

Worked example, n_bits 6, k 2, relevant bits {1, 4}: `010010=0` (bits 1 and 4 are both 1, so the
parity is 0). The model reads tokens `010010=` and predicts the label at the last position only:
prompt_len 7, answer_len 1, no end token.

Multitask (n_tasks > 1): a task token first, `[3]010010=1`; task t has its own k relevant bits
(distinct subsets, chosen by the seed; `task.relevant` [n_tasks, k]) and is drawn with frequency
proportional to (t + 1)^-zipf_exponent (Michaud et al.: n_bits 100, k 3, 500 tasks, exponent 1.4),
so frequent tasks are learned first. The eval sets follow the same task frequencies.

A seeded hash of (task, bits) holds out test_fraction of all n_tasks x 2^n_bits problems, as for
arithmetic; the eval set comes from them and training never sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tasks.base import EVAL_SIZE, Batch, Task, next_token_batch, require, stream_generator


@dataclass
class ParityConfig:
    kind: str = "parity"
    n_bits: int = 20
    k: int = 3  # relevant bits per task
    n_tasks: int = 1
    zipf_exponent: float = 1.4  # task t drawn with probability ~ (t + 1)^-zipf_exponent
    train_size: int | None = None  # None: fresh bit strings every step; else a fixed pool
    test_fraction: float = 0.01  # share of all problems held out (by hash)
    eval_size: int | None = None  # None: every held-out problem, up to EVAL_SIZE
    seed: int = 0  # fixes the relevant bits, the held-out split and the fixed sets

    def __post_init__(self):
        require(self.kind == "parity", "kind", self.kind, "must be 'parity'")
        require(self.n_bits >= 1, "n_bits", self.n_bits, "must be >= 1")
        require(1 <= self.k <= self.n_bits, "k", self.k,
                f"must be in [1, task.n_bits={self.n_bits}]")
        subsets = math.comb(self.n_bits, self.k)
        require(1 <= self.n_tasks <= subsets, "n_tasks", self.n_tasks,
                f"must be in [1, {subsets}] (each task has its own subset of relevant bits)")
        require(self.zipf_exponent >= 0, "zipf_exponent", self.zipf_exponent, "must be >= 0")
        require(0 < self.test_fraction < 1, "test_fraction", self.test_fraction,
                "must be in (0, 1)")
        held_out = self.test_fraction * self.problems()
        require(self.eval_size is None or 1 <= self.eval_size <= held_out, "eval_size",
                self.eval_size, f"must be null (every held-out problem, up to "
                f"{EVAL_SIZE:,}) or in [1, ~{math.floor(held_out)}] (the held-out problems)")
        if self.train_size is not None:
            available = self.problems() - math.ceil(held_out)
            require(1 <= self.train_size <= available, "train_size", self.train_size,
                    f"must be null or in [1, ~{available}] (the problems not held out)")

    def problems(self) -> int:
        return self.n_tasks * 2**self.n_bits


class Parity(Task):
    sep = ""
    answer_len = 1

    def __init__(self, cfg: ParityConfig, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.cfg = cfg
        multitask = cfg.n_tasks > 1
        self.main_attribute = "subtask" if multitask else "parity"
        self.vocab = ["0", "1", "="] + ([f"[{t}]" for t in range(cfg.n_tasks)] if multitask else [])
        self.eq_token = 2
        self.prompt_len = self.seq_len = multitask + cfg.n_bits + 1
        self.loss_start = self.prompt_len - 1
        self.relevant = self.choose_relevant(stream_generator(cfg.seed, 4))
        bits_mask = torch.zeros(cfg.n_tasks, cfg.n_bits, dtype=torch.int64)
        self._bits_mask = bits_mask.scatter_(1, self.relevant, 1).to(self.device)
        frequency = (torch.arange(cfg.n_tasks) + 1.0) ** -cfg.zipf_exponent
        self._cdf = (frequency / frequency.sum()).cumsum(0).to(self.device)
        self.build_fixed_sets(cfg.seed, cfg.test_fraction, cfg.eval_size, cfg.train_size,
                              cfg.problems())

    def choose_relevant(self, generator: torch.Generator) -> Tensor:
        """[n_tasks, k] sorted relevant-bit indices, a distinct subset per task."""
        cfg, chosen = self.cfg, {}
        while len(chosen) < cfg.n_tasks:  # host-side, once; redraws a subset already taken
            subset = torch.randperm(cfg.n_bits, generator=generator)[: cfg.k]
            chosen.setdefault(tuple(sorted(subset.tolist())), len(chosen))
        return torch.tensor(list(chosen))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Problems [n, 1 + n_bits]: the task id, then the bits."""
        device = generator.device
        u = torch.rand(n, generator=generator, device=device)
        task = torch.searchsorted(self._cdf.to(device), u).clamp(max=self.cfg.n_tasks - 1)
        bits = torch.randint(2, (n, self.cfg.n_bits), generator=generator, device=device)
        return torch.cat([task[:, None], bits], 1)

    def label(self, problems: Tensor) -> Tensor:
        """[n, 1] the parity of each problem's relevant bits."""
        task, bits = problems[:, 0], problems[:, 1:]
        return (bits * self._bits_mask.to(bits.device)[task]).sum(1, keepdim=True) % 2

    def attributes(self, problems: Tensor) -> dict[str, Tensor]:
        """`subtask` (the task id, 0 without multitask) and the answer `parity` bit."""
        return {"subtask": problems[:, 0], "parity": self.label(problems)[:, 0]}

    def render(self, problems: Tensor) -> Batch:
        task, bits = problems[:, 0], problems[:, 1:]
        label = self.label(problems)
        parts = [bits, torch.full_like(label, self.eq_token), label]
        if self.cfg.n_tasks > 1:
            parts.insert(0, task[:, None] + 3)  # task tokens follow "0", "1", "="
        seq = torch.cat(parts, 1)
        counted = torch.zeros_like(seq, dtype=torch.bool)
        counted[:, -1] = True  # the label only
        return next_token_batch(seq, counted)
