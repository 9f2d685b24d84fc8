"""What every task shares: the `Batch` it yields, the `Task` interface, and the logic two or more
tasks use -- splitting a full sequence into model inputs and targets, sampling from a finite
training pool, the seeded hash that holds problems out of training, collecting distinct problems
for fixed sets, the context/vocabulary check and decoding.

A task builds full sequences `seq` [B, L]; the model reads `tokens = seq[:, :-1]` and predicts
`targets = seq[:, 1:]`, so `seq_len = T = L - 1`. `mask` [B, T] marks the targets that loss and
metrics count. Prompt/answer tasks put every prompt at positions 0..P-1 of `tokens` (left-padded
where lengths differ), so the answer is `targets[:, P-1 : P-1+answer_len]`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

# Hashes live in [0, _PRIME): a product of two residues stays below 2**62, so int64 never overflows.
_PRIME = 2**31 - 1
_BASE = 1_000_003
# eval_size=None: every held-out problem, up to this many (and as many for the train-eval set).
EVAL_SIZE = 1000


@dataclass
class Batch:
    tokens: Tensor  # [B, T] int64, model input
    targets: Tensor  # [B, T] int64, next token at each position
    mask: Tensor  # [B, T] bool, positions counted by loss and metrics
    attend: Tensor | None = None  # [B, T] int64, induction target position per query, -1 = none
    # Per-example integer attributes of the fixed sets ({name: [B] int64}, e.g. "carries"): the
    # slices metrics are broken down by (see Task.attributes).
    attributes: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, rows) -> Batch:
        attend = None if self.attend is None else self.attend[rows]
        return Batch(self.tokens[rows], self.targets[rows], self.mask[rows], attend,
                     {name: value[rows] for name, value in self.attributes.items()})

    def to(self, device: torch.device | str) -> Batch:
        attend = None if self.attend is None else self.attend.to(device)
        return Batch(self.tokens.to(device), self.targets.to(device), self.mask.to(device), attend,
                     {name: value.to(device) for name, value in self.attributes.items()})


def next_token_batch(seq: Tensor, counted: Tensor, attend: Tensor | None = None) -> Batch:
    """Batch from full sequences seq [B, L] and `counted` [B, L] (which tokens of seq are scored;
    the first token never is: nothing predicts it)."""
    return Batch(seq[:, :-1], seq[:, 1:], counted[:, 1:], attend)


def require(ok: bool, field: str, value: object, rule: str) -> None:
    """Raise the config error users see: the key as they would type it, its value, the rule."""
    if not ok:
        raise ValueError(f"task.{field}={value!r}: {rule}")


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one fixed set (eval, pool, ...), independent of the other sets' sizes."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) % 2**63)


def _square_mix(h: Tensor) -> Tensor:
    """Nonlinear scramble of residues mod _PRIME (< 2**31, so the square stays below 2**62)."""
    return (h * h + _BASE) % _PRIME


@functools.cache
def _powers(width: int, device: torch.device) -> tuple[Tensor, int]:
    """[_BASE^(width-1), ..., _BASE^0] mod _PRIME and their sum mod _PRIME, made once per width
    and device: building a tensor from a list would wait for the GPU at every training step."""
    powers = [pow(_BASE, width - 1 - k, _PRIME) for k in range(width)]
    return torch.tensor(powers, device=device), sum(powers) % _PRIME


def hash_rows(rows: Tensor, seed: int) -> Tensor:
    """Seeded hash of each row [B, n] of small non-negative ints (< 2**20, n < 2**11) -> [B] in
    [0, 2**31 - 1): a polynomial hash of the row + 1 mod a prime (its terms and sum stay below 2**63
    in int64), then square, xor-shift, square: the squares make the held-out set nonlinear in the
    row, the shift mixes high bits into low ones. The seed changes the whole partition, so each
    data seed holds out different problems."""
    width = rows.shape[-1]
    powers, powers_sum = _powers(width, rows.device)
    # sum((row + 1) * powers) = sum(row * powers) + sum(powers): the +1 and the seed fold into
    # one constant, two fewer full-size operations
    offset = ((seed % _PRIME + 1) * pow(_BASE, width, _PRIME) + powers_sum) % _PRIME
    h = _square_mix(((rows * powers).sum(-1) + offset) % _PRIME)
    return _square_mix(h ^ (h >> 13))


def in_test_bucket(rows: Tensor, seed: int, fraction: float) -> Tensor:
    """[B] bool: the problems (rows) held out for testing, about `fraction` of all of them."""
    return hash_rows(rows, seed) < round(fraction * _PRIME)


Sampler = Callable[[int, torch.Generator], Tensor]  # (n, generator) -> problems [n, width]


def unique_rows(rows: Tensor) -> Tensor:
    """The distinct rows of [n, w] non-negative ints, sorted; through one int64 key per row when
    the rows fit one (25x faster than torch.unique(dim=0) on millions of rows)."""
    base = int(rows.max()) + 1 if rows.numel() else 1
    if base ** rows.shape[1] >= 2**63:
        return rows.unique(dim=0)
    key = (rows * base ** torch.arange(rows.shape[1] - 1, -1, -1, device=rows.device)).sum(1)
    keys, inverse = key.unique(return_inverse=True)
    first = torch.empty_like(keys).scatter_(0, inverse, torch.arange(len(rows), device=rows.device))
    return rows[first]


def distinct_problems(
    sample: Sampler, keep: Callable[[Tensor], Tensor], n: int, generator: torch.Generator,
    field: str, space: int, at_most: bool = False,
) -> Tensor:
    """n distinct problems drawn from `sample` among those where `keep` holds, in random order
    (host-side, for fixed sets). Fewer than n seem to exist after three rounds in a row (of
    doubling size) that keep problems but find none new, or 256 draws per problem of the whole
    space (`space` problems): then raises naming `task.<field>`, or with `at_most` returns all
    that were found."""
    found = sample(0, generator)  # no problems yet, of the right width
    stale, drawn, chunk = 0, 0, max(4 * n, 1024)
    while len(found) < n:
        kept = (candidates := sample(chunk, generator))[keep(candidates)]
        before = len(found)
        found = unique_rows(torch.cat([found, kept]))
        stale = stale + 1 if len(kept) and len(found) == before else 0
        drawn += chunk
        exhausted = len(found) < n and (stale >= 3 or drawn >= min(2**27, 256 * space))
        if exhausted and at_most:
            break
        require(not exhausted, field, n, f"found only {len(found)} distinct problems of this "
                f"kind; leave task.{field} unset (null) to take all of them")
        chunk = min(2 * chunk, 2**22)
    return found[torch.randperm(len(found), generator=generator)[:n]]


def sample_rows(pool: Batch, batch_size: int | None, generator: torch.Generator) -> Batch:
    """A minibatch drawn with replacement from a finite pool, or the whole pool (None)."""
    pool = pool.to(generator.device)
    if batch_size is None:
        return pool
    return pool[torch.randint(len(pool), (batch_size,), generator=generator,
                              device=generator.device)]


class Task:
    """The interface every task implements; see docs/architecture.md.

    Subclasses set the attributes below and build their fixed sets (`_eval`, `_train_eval`,
    optionally `_pool`, the finite training set, and `_ood`) in `__init__`, on `device`.

    Most tasks describe a problem as a row of small ints: they implement `sample` (random problems
    of the training distribution) and `render` (problems -> Batch) and call `build_fixed_sets`,
    which holds out a hashed share of all problems (`is_held_out`, a mask) and builds the fixed
    sets; `fresh_batch` then draws training problems outside that share. Others override
    `fresh_batch` or keep a `_pool`."""

    vocab: list[str]
    seq_len: int
    prompt_len: int | None = None
    answer_len: int | None = None
    stop_token: int | None = None
    loss_start: int = 0
    pad_token: int | None = None  # left out by decode
    sep: str = ""  # printed between token strings
    main_attribute: str | None = None  # the attribute whose slices training logs

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._pool: Batch | None = None
        self._ood: Batch | None = None
        self._eval: Batch
        self._train_eval: Batch

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n random problems [n, width] of the training distribution, on the generator's device."""
        raise NotImplementedError

    def render(self, problems: Tensor) -> Batch:
        raise NotImplementedError

    def attributes(self, problems: Tensor) -> dict[str, Tensor]:
        """Per-problem integer attributes {name: [n] int64} that matter for the skill (operand
        lengths, carries, ...), attached to the fixed sets `build_fixed_sets` builds; none by
        default."""
        return {}

    def render_fixed(self, problems: Tensor) -> Batch:
        """A fixed set: the rendered problems with their attributes."""
        batch = self.render(problems)
        batch.attributes = self.attributes(problems)
        return batch

    def build_fixed_sets(self, seed: int, test_fraction: float, eval_size: int | None,
                 train_size: int | None, space: int) -> None:
        """Hold out the problems whose hash falls below test_fraction (the split is fixed by
        `seed`), and build the fixed sets: eval_size distinct held-out problems (None: all of
        them, up to EVAL_SIZE, so that small problem spaces work with the defaults); a pool of
        train_size distinct other problems (None: fresh problems every step); a train-eval set of
        as many other problems (the pool's first ones if there is a pool). Each set carries its
        problems' `attributes`. `space` is the number of distinct problems there are."""
        self._seed, self._test_fraction = seed, test_fraction
        trainable = lambda problems: ~self.is_held_out(problems)
        n = EVAL_SIZE if eval_size is None else eval_size

        def fixed(keep, n, stream, field, at_most=False) -> Batch:
            generator = stream_generator(seed, stream)
            return self.render_fixed(distinct_problems(self.sample, keep, n, generator, field,
                                                       space, at_most))

        self._eval = fixed(self.is_held_out, n, 0, "eval_size", eval_size is None).to(self.device)
        require(len(self._eval) > 0, "test_fraction", test_fraction,
                f"holds out none of the {space} problems; raise it")
        if train_size is None:
            self._train_eval = fixed(trainable, n, 2, "eval_size", eval_size is None)
            self._train_eval = self._train_eval.to(self.device)
        else:
            self._pool = fixed(trainable, train_size, 1, "train_size").to(self.device)
            self._train_eval = self._pool[:n]

    def is_held_out(self, problems: Tensor) -> Tensor:
        """[n] bool: which problems are kept for testing (see `build_fixed_sets`)."""
        return in_test_bucket(problems, self._seed, self._test_fraction)

    def train_batch(self, batch_size: int | None, generator: torch.Generator) -> Batch:
        """A training batch on the generator's device; None = the whole finite training set."""
        if self._pool is not None:
            return sample_rows(self._pool, batch_size, generator)
        if batch_size is None:
            raise ValueError(f"full-batch training needs a finite training set; this "
                             f"{type(self).__name__} task samples fresh problems (set a batch size"
                             f" or task.train_size where the task has one)")
        return self.fresh_batch(batch_size, generator)

    def fresh_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Fresh training problems outside the held-out share, without a host sync: two
        candidates per row are drawn and hashed in one go, and the first one not held out is
        kept. When both are held out (about test_fraction**2 of rows: 1e-4 at the default 0.01)
        the row's mask is zeroed instead of redrawing again, which is as leak-free -- masked rows
        are never trained on -- and costs a negligible share of the batch, where each further
        redraw round would cost a sample and a hash of the whole batch."""
        problems = self.sample(2 * batch_size, generator)
        first, second = problems.chunk(2)
        first_held, second_held = self.is_held_out(problems)[:, None].chunk(2)
        batch = self.render(torch.where(first_held, second, first))
        batch.mask &= ~(first_held & second_held)
        return batch

    def train_set(self) -> Batch | None:
        return self._pool

    def eval_set(self) -> Batch:
        return self._eval

    def train_eval_set(self) -> Batch:
        return self._train_eval

    def ood_set(self) -> Batch | None:
        return self._ood

    def decode(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Readable string of one sequence [T] (or a list for [B, T]); pad tokens left out."""
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [self.decode(row) for row in tokens]
        return self.sep.join(self.vocab[t] for t in tokens.tolist() if t != self.pad_token)

    def decode_answer(self, answer: Tensor | Sequence[int]) -> str | list[str]:
        """The answer for display: tokens up to the stop token (excluded)."""
        answer = torch.as_tensor(answer)
        if answer.ndim == 2:
            return [self.decode_answer(row) for row in answer]
        ids = answer.tolist()
        if self.stop_token in ids:
            ids = ids[: ids.index(self.stop_token)]
        return self.answer_order(self.decode(ids))

    def answer_order(self, text: str) -> str:
        """The answer as a reader writes it, from the answer as the task writes it."""
        return text

    def encode(self, text: str) -> Tensor:
        """Token ids [T] of a string written as `decode` writes it (longest vocab match first)."""
        if self.sep:
            return torch.tensor([self.vocab.index(s) for s in text.split(self.sep)])
        words = sorted(self.vocab, key=len, reverse=True)
        pieces = re.findall("|".join(map(re.escape, words)), text)
        if "".join(pieces) != text:
            raise ValueError(f"cannot encode {text!r} with vocabulary {self.vocab}")
        return torch.tensor([self.vocab.index(s) for s in pieces])

    def check_model(self, n_ctx: int, d_vocab: int) -> None:
        """Raise naming the model field if the model cannot read this task's sequences."""
        if n_ctx < self.seq_len:
            raise ValueError(f"model.n_ctx={n_ctx} is shorter than the {self.seq_len} positions "
                             f"this task's sequences need (task.seq_len); raise model.n_ctx or "
                             f"leave it unset")
        if d_vocab < self.d_vocab:
            raise ValueError(f"model.d_vocab={d_vocab} is smaller than the task's {self.d_vocab}"
                             f" tokens; raise model.d_vocab or leave it unset")
