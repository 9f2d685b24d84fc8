"""Next-token prediction on a fixed random Markov chain: a task with a target at every position.

A chain of order k over `d_vocab_tokens` symbols has one next-token distribution per context of
k previous tokens, softmax(`sharpness` * N(0, 1) logits), drawn once from `seed`. Sequences start
from k uniform tokens and follow the chain; every position from k - 1 on is counted, so the loss
is an average over T - k + 1 dense targets and its floor is the chain's conditional entropy
(`entropy()`). Worked example (order 1, 4 symbols, seq_len 5):

    seq     2 0 3 3 1 0        (T + 1 = 6 tokens; 0 -> 3 has probability P[0, 3])
    tokens  2 0 3 3 1
    targets 0 3 3 1 0          every position counted

How well a model approximates the table depends smoothly on its width (the logits of an
order-1 chain have rank d_vocab_tokens; a model narrower than that has to compress them) and on
its learning rate: a loss informative at every width, for learning-rate transfer (Yang et al.
2022). The eval and train-eval sets are fixed samples of their own streams; two random sequences
of the default length coincide with negligible probability, so no hash split is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.base import Batch, Task, next_token_batch, require, stream_generator


@dataclass
class MarkovConfig:
    kind: str = "markov"
    d_vocab_tokens: int = 64
    order: int = 1  # tokens of context the next-token distribution depends on
    sharpness: float = 2.0  # std of the transition logits: larger = lower entropy
    seq_len: int = 32  # model input positions T
    eval_size: int = 512
    seed: int = 0  # fixes the chain and the fixed sets

    def __post_init__(self):
        require(self.kind == "markov", "kind", self.kind, "must be 'markov'")
        require(self.d_vocab_tokens >= 2, "d_vocab_tokens", self.d_vocab_tokens, "must be >= 2")
        require(self.order >= 1, "order", self.order, "must be >= 1")
        require(self.d_vocab_tokens**self.order <= 2**20, "order", self.order,
                "too large: d_vocab_tokens**order contexts must be <= 2**20")
        require(self.sharpness >= 0, "sharpness", self.sharpness, "must be >= 0")
        require(self.seq_len > self.order, "seq_len", self.seq_len,
                f"must be > task.order={self.order}")
        require(self.eval_size >= 1, "eval_size", self.eval_size, "must be >= 1")


class Markov(Task):
    sep = " "

    def __init__(self, cfg: MarkovConfig, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.cfg = cfg
        self.vocab = [str(i) for i in range(cfg.d_vocab_tokens)]
        self.seq_len = cfg.seq_len
        self.loss_start = cfg.order - 1
        V = cfg.d_vocab_tokens
        logits = torch.randn(V**cfg.order, V, generator=stream_generator(cfg.seed, 3))
        self.probs = (cfg.sharpness * logits).softmax(-1)  # [contexts, V]
        self._cumulative: dict[torch.device, torch.Tensor] = {}
        self._eval = self.fresh_batch(cfg.eval_size, stream_generator(cfg.seed, 0))
        self._eval = self._eval.to(self.device)
        self._train_eval = self.fresh_batch(cfg.eval_size, stream_generator(cfg.seed, 2))
        self._train_eval = self._train_eval.to(self.device)

    def entropy(self) -> float:
        """Mean entropy of the next-token distributions in nats, contexts weighted uniformly: the
        loss floor up to the chain's stationary weighting of contexts."""
        return float(-(self.probs * self.probs.clamp_min(1e-30).log()).sum(-1).mean())

    def fresh_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Sequences sampled from the chain, by inverse CDF: one uniform per position."""
        cfg, device = self.cfg, generator.device
        if device not in self._cumulative:
            self._cumulative[device] = self.probs.cumsum(-1).to(device)
        cumulative = self._cumulative[device]
        V, k = cfg.d_vocab_tokens, cfg.order
        seq = torch.empty(batch_size, cfg.seq_len + 1, dtype=torch.long, device=device)
        seq[:, :k] = torch.randint(V, (batch_size, k), generator=generator, device=device)
        uniforms = torch.rand(cfg.seq_len + 1, batch_size, 1, generator=generator, device=device)
        powers = V ** torch.arange(k - 1, -1, -1, device=device)
        for t in range(k, cfg.seq_len + 1):
            context = (seq[:, t - k : t] * powers).sum(-1)
            row = cumulative[context]  # [B, V]
            seq[:, t] = torch.searchsorted(row, uniforms[t]).squeeze(-1).clamp_max(V - 1)
        counted = torch.zeros_like(seq, dtype=torch.bool)
        counted[:, k:] = True
        return next_token_batch(seq, counted)
