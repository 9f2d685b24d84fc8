"""Binary operations mod p, the grokking task (Power et al. 2022; Nanda et al. 2023).

Worked example, p = 113, op add: the problem 5 + 110 mod 113 = 2 is the sequence `5 110 = 2`.
The model reads tokens [5, 110, 113] (113 is `=`) and predicts targets [110, 113, 2]; only the
last position counts (loss on the last position only, as in Nanda et al. 2023), so prompt_len 3,
answer_len 1, no end token. The vocabulary is the p numbers and `=` (p + 1 tokens, as Nanda's).

All p^2 pairs (a, b) (b != 0 for div) are shuffled with the seed; the first
floor(train_fraction x pairs) train and the rest are held out: p = 113, add, 0.3 gives Nanda's
3,830 training pairs; p = 97, div, 0.5 is Power's setting. train_batch(None) is the whole training
set (full-batch training); an int samples a minibatch of training pairs with replacement.
eval_set is every held-out pair: a train_fraction that leaves none is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tasks.base import Task, next_token_batch, require, stream_generator

# (a, b, inverse) -> the operation's value before reduction mod p; `inverse` [p] maps b to b^-1.
OPS: dict[str, Callable[[Tensor, Tensor, Tensor | None], Tensor]] = {
    "add": lambda a, b, inverse: a + b,
    "sub": lambda a, b, inverse: a - b,
    "mul": lambda a, b, inverse: a * b,
    "div": lambda a, b, inverse: a * inverse[b],
    "x2y2": lambda a, b, inverse: a**2 + b**2,
    "x2xyy2": lambda a, b, inverse: a**2 + a * b + b**2,
    "x3xy": lambda a, b, inverse: a**3 + a * b,
}


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


@dataclass
class ModularConfig:
    kind: str = "modular"
    p: int = 113
    op: str = "add"  # add | sub | mul | div | x2y2 | x2xyy2 | x3xy
    train_fraction: float = 0.3  # share of all pairs used for training
    eval_size: int | None = None  # None: every held-out pair; an int keeps the first of them
    seed: int = 0  # fixes the shuffle, hence the split

    def __post_init__(self):
        require(self.kind == "modular", "kind", self.kind, "must be 'modular'")
        require(self.op in OPS, "op", self.op, f"must be one of {list(OPS)}")
        require(2 <= self.p <= 4096, "p", self.p, "must be in [2, 4096]")
        require(self.op != "div" or is_prime(self.p), "p", self.p,
                "must be prime for op=div (b must have an inverse mod p)")
        require(0 < self.train_fraction < 1, "train_fraction", self.train_fraction,
                "must be in (0, 1)")
        require(1 <= self.train_pairs() < self.pairs(), "train_fraction", self.train_fraction,
                f"must leave at least one training and one held-out pair of {self.pairs()}")
        require(self.eval_size is None or 1 <= self.eval_size <= self.pairs() - self.train_pairs(),
                "eval_size", self.eval_size,
                f"must be null or in [1, {self.pairs() - self.train_pairs()}] (the held-out pairs)")

    def pairs(self) -> int:
        return self.p * (self.p - 1 if self.op == "div" else self.p)

    def train_pairs(self) -> int:
        return int(self.train_fraction * self.pairs())  # floor, as Nanda et al.'s code


class Modular(Task):
    sep = " "
    prompt_len = 3
    answer_len = 1
    seq_len = 3
    loss_start = 2

    def __init__(self, cfg: ModularConfig, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.cfg = cfg
        p = cfg.p
        self.vocab = [str(i) for i in range(p)] + ["="]
        a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
        if cfg.op == "div":
            a, b = a[b != 0], b[b != 0]
        # b^-1 = b^(p-2) mod p for prime p (Fermat); only division needs it
        inverse = torch.tensor([pow(x, p - 2, p) for x in range(p)]) if cfg.op == "div" else None
        seq = torch.stack([a, b, torch.full_like(a, p), OPS[cfg.op](a, b, inverse) % p], 1)
        seq = seq[torch.randperm(len(seq), generator=stream_generator(cfg.seed, 0))]
        counted = torch.zeros_like(seq, dtype=torch.bool)
        counted[:, -1] = True
        batch = next_token_batch(seq, counted).to(self.device)
        n_train = cfg.train_pairs()
        self._pool = self._train_eval = batch[:n_train]
        self._eval = batch[n_train:][: cfg.eval_size]
