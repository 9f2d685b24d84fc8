"""In-context copying: repeated random segments (`induction`) and key-value lookup
(`associative_recall`), the tasks where induction heads appear (Olsson et al. 2022).

`induction`, worked example (seq_len 12, a segment of 3 tokens at offset 4, 2 copies):

    position   0  1  2  3  4  5  6  7  8  9 10 11 12
    seq        9 41  3 17 52  8 30 52  8 30  7 60 22      (T + 1 = 13 tokens)
    mask                               x  x               queries 7, 8: targets 8, 30
    attend                             5  6               the token after the earlier copy

A segment of length s (uniform in [min_segment, max_segment]) starts at a uniform offset o and is
repeated `copies` times in a row; every other token is uniform. The mask marks the targets an
earlier copy predicts: queries i in [o + s, o + copies*s - 2], whose target seq[i + 1] equals
seq[i + 1 - s]; attend[i] = i - s + 1, the position after the last earlier occurrence of token i.
Offset and length vary per sequence: with a fixed layout a 1-layer model solves the repeat with a
purely positional head. With `bos`, position 0 holds BOS and the layout starts at 1.

The eval set has its own fixed layout (Olsson et al.'s prefix-matching probe): BOS if `bos`, then
one segment of distinct tokens, as long as `copies` copies fit, repeated `copies` times from the
first position; any leftover positions are random. Its layout differs from training, and a
training sequence equals an eval one with negligible probability (for the defaults it would
need the same 16 random tokens at the same place: about 64^-16), so no hash split is needed.

`associative_recall`, worked example (n_pairs 3): `k4 v9 k0 v2 k7 v2 k0` -> answer `v2`.
Distinct keys (from n_keys key tokens) each bound to a value (from n_values value tokens, a
disjoint token range); the last token repeats one of the keys and the answer is its value: one
token, no end token (prompt_len 2 n_pairs + 1, answer_len 1, loss on the last position only).
A seeded hash holds out test_fraction of all possible sequences, as for arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch

from tasks.base import EVAL_SIZE, Batch, Task, next_token_batch, require, stream_generator


@dataclass
class InductionConfig:
    kind: str = "induction"
    d_vocab_tokens: int = 64  # random-token vocabulary (plus BOS if bos)
    seq_len: int = 32  # model input positions T; sequences hold T + 1 tokens
    min_segment: int = 6
    max_segment: int = 12
    copies: int = 2  # the segment and its repeats
    bos: bool = False
    eval_size: int = 1000
    seed: int = 0  # fixes the eval and train-eval sets

    def __post_init__(self):
        require(self.kind == "induction", "kind", self.kind, "must be 'induction'")
        require(self.d_vocab_tokens >= 2, "d_vocab_tokens", self.d_vocab_tokens, "must be >= 2")
        require(self.copies >= 2, "copies", self.copies, "must be >= 2")
        require(self.min_segment >= 2, "min_segment", self.min_segment,
                "must be >= 2 (a segment of one token predicts nothing)")
        require(self.min_segment <= self.max_segment, "max_segment", self.max_segment,
                f"must be >= task.min_segment={self.min_segment}")
        room = self.seq_len + 1 - self.bos
        require(self.copies * self.max_segment <= room, "seq_len", self.seq_len,
                f"too short for {self.copies} copies of task.max_segment={self.max_segment}"
                f"{' after BOS' if self.bos else ''} (needs >= "
                f"{self.copies * self.max_segment + self.bos - 1})")
        require(self.eval_segment() <= self.d_vocab_tokens, "d_vocab_tokens", self.d_vocab_tokens,
                f"must be >= {self.eval_segment()}: the eval segment has distinct tokens")
        require(self.eval_size >= 1, "eval_size", self.eval_size, "must be >= 1")

    def eval_segment(self) -> int:
        """Segment length of the eval layout: as long as `copies` copies fit."""
        return (self.seq_len + 1 - self.bos) // self.copies


class Induction(Task):
    sep = " "
    main_attribute = "segment"

    def __init__(self, cfg: InductionConfig, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.cfg = cfg
        self.vocab = [str(i) for i in range(cfg.d_vocab_tokens)] + (["BOS"] if cfg.bos else [])
        self.bos_token = cfg.d_vocab_tokens if cfg.bos else None
        self.seq_len = cfg.seq_len
        self.loss_start = cfg.bos + cfg.min_segment  # the earliest o + s
        start = torch.full((cfg.eval_size, 1), int(cfg.bos))
        segment = torch.full_like(start, cfg.eval_segment())
        self._eval = self.layout(start, segment, stream_generator(cfg.seed, 0),
                                 distinct=True).to(self.device)
        self._train_eval = self.fresh_batch(cfg.eval_size, stream_generator(cfg.seed, 2))
        self._train_eval = self._train_eval.to(self.device)

    def fresh_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Segments of random length at random offsets (see the module docstring)."""
        cfg, device = self.cfg, generator.device
        shape = (batch_size, 1)
        segment = torch.randint(cfg.min_segment, cfg.max_segment + 1, shape, generator=generator,
                                device=device)
        start = int(cfg.bos)  # the first position a segment may take
        free = cfg.seq_len + 2 - start - cfg.copies * segment  # number of possible offsets
        offset = start + (torch.rand(shape, generator=generator, device=device) * free).long()
        return self.layout(offset, segment, generator)

    def layout(self, offset, segment, generator: torch.Generator, distinct=False) -> Batch:
        """Random sequences [B, T + 1] with the segment at seq[offset : offset + segment]
        repeated after itself; offset, segment: [B, 1]. distinct: segment tokens all differ."""
        cfg, device = self.cfg, generator.device
        size = (len(offset), cfg.seq_len + 1)
        seq = torch.randint(cfg.d_vocab_tokens, size, generator=generator, device=device)
        if distinct:  # a random permutation of the vocabulary at the segment's positions
            order = torch.rand(len(offset), cfg.d_vocab_tokens, generator=generator,
                               device=device).argsort(1)
            place = torch.arange(cfg.seq_len + 1, device=device) - offset
            seq = torch.where((place >= 0) & (place < segment),
                              order.gather(1, place.clamp(0, cfg.d_vocab_tokens - 1)), seq)
        position = torch.arange(cfg.seq_len + 1, device=device).expand(size)
        into = position - offset  # position within the repeated part
        copied = (into >= segment) & (into < cfg.copies * segment)
        seq = seq.gather(1, torch.where(copied, offset + into % segment, position))
        if cfg.bos:
            seq[:, 0] = self.bos_token
        query = position[:, :-1]  # model input positions
        counted = (query >= offset + segment) & (query <= offset + cfg.copies * segment - 2)
        attend = torch.where(counted, query - segment + 1, -1)
        attributes = {"segment": segment[:, 0], "offset": offset[:, 0]}
        return Batch(seq[:, :-1], seq[:, 1:], counted, attend, attributes)


@dataclass
class AssociativeRecallConfig:
    kind: str = "associative_recall"
    n_pairs: int = 8  # key-value pairs before the query
    n_keys: int = 32  # key tokens k0..
    n_values: int = 32  # value tokens v0..
    test_fraction: float = 0.01  # share of all sequences held out (by hash)
    eval_size: int | None = None  # None: every held-out sequence, up to EVAL_SIZE
    seed: int = 0  # fixes the held-out split and the fixed sets

    def __post_init__(self):
        require(self.kind == "associative_recall", "kind", self.kind,
                "must be 'associative_recall'")
        require(self.n_pairs >= 1, "n_pairs", self.n_pairs, "must be >= 1")
        require(self.n_keys >= self.n_pairs, "n_keys", self.n_keys,
                f"must be >= task.n_pairs={self.n_pairs} (keys in a sequence are distinct)")
        require(self.n_values >= 1, "n_values", self.n_values, "must be >= 1")
        require(0 < self.test_fraction < 1, "test_fraction", self.test_fraction,
                "must be in (0, 1)")
        held_out = self.test_fraction * self.problems()
        require(self.eval_size is None or 1 <= self.eval_size <= held_out, "eval_size",
                self.eval_size, f"must be null (every held-out problem, up to "
                f"{EVAL_SIZE:,}) or in [1, ~{math.floor(held_out)}] (the held-out sequences)")

    def problems(self) -> int:
        """Number of distinct sequences: ordered distinct keys, their values, the query."""
        return math.perm(self.n_keys, self.n_pairs) * self.n_values**self.n_pairs * self.n_pairs


class AssociativeRecall(Task):
    sep = " "
    answer_len = 1
    main_attribute = "query_position"

    def __init__(self, cfg: AssociativeRecallConfig, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.cfg = cfg
        self.vocab = [f"k{i}" for i in range(cfg.n_keys)] + [f"v{i}" for i in range(cfg.n_values)]
        self.prompt_len = self.seq_len = 2 * cfg.n_pairs + 1
        self.loss_start = self.prompt_len - 1
        self.build_fixed_sets(cfg.seed, cfg.test_fraction, cfg.eval_size, None, cfg.problems())

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Full sequences [n, 2 n_pairs + 2]: k v k v ... k_query v_query."""
        cfg, device = self.cfg, generator.device
        keys = torch.rand(n, cfg.n_keys, generator=generator, device=device).argsort(1)
        keys = keys[:, : cfg.n_pairs]
        values = cfg.n_keys + torch.randint(cfg.n_values, (n, cfg.n_pairs), generator=generator,
                                            device=device)
        query = torch.randint(cfg.n_pairs, (n, 1), generator=generator, device=device)
        pairs = einops.rearrange([keys, values], "kv n pair -> n (pair kv)")
        return torch.cat([pairs, keys.gather(1, query), values.gather(1, query)], 1)

    def attributes(self, problems: torch.Tensor) -> dict[str, torch.Tensor]:
        """`query_position`: which pair (0 = first) the query asks for."""
        keys = problems[:, : -2 : 2]
        return {"query_position": (keys == problems[:, -2:-1]).int().argmax(1)}

    def render(self, problems: torch.Tensor) -> Batch:
        counted = torch.zeros_like(problems, dtype=torch.bool)
        counted[:, -1] = True  # the answer only
        return next_token_batch(problems, counted)
