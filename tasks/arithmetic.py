"""Multi-digit addition and multiplication, `a+b=c$` / `a*b=c$`, one character per token.

Worked example, digits 3 (`_` is the pad token; `decode` leaves it out):

    format                    decode            full sequence seq (prompt_len 8, answer_len 5)
    plain                     123+45=168$       _123+45=168$_
    reverse_answer            123+45=861$       _123+45=861$_
    reverse_operands          321+54=168$       _321+54=168$_
    zero_pad                  123+045=0168$     123+045=0168$

The model reads tokens = seq[:-1] and predicts targets = seq[1:]; the answer `168$_` is
targets[7:12] and the mask covers its digits and the end token `$`. Prompts are left-padded so
that every one ends at position 7 (reverse_answer writes the least significant digit first, which
makes addition far easier to learn: Lee et al. 2023).

Numbers are tensors of digits, least significant first, and the sum or product is computed with
carries digit by digit, so 20-digit operands (beyond int64) work. An operand is uniform in
[0, 10^digits); with min_digits its length n is uniform in [min_digits, digits] (each operand on
its own) and the number uniform among n-digit numbers. A seeded hash of the operand pair holds
out about test_fraction of all problems: the eval set comes from them and training never sees
them. The out-of-distribution set has both operands exactly ood_digits long.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import einops
import torch
from torch import Tensor

from tasks.base import (
    EVAL_SIZE,
    Batch,
    Task,
    distinct_problems,
    next_token_batch,
    require,
    stream_generator,
)


@dataclass
class ArithmeticConfig:
    kind: str = "arithmetic"
    op: str = "add"  # a key of OPS: add | mul
    digits: int = 3  # longest operand
    min_digits: int | None = None  # None: operands uniform in [0, 10^digits)
    reverse_answer: bool = False  # answer least significant digit first
    reverse_operands: bool = False  # operands least significant digit first
    zero_pad: bool = False  # operands padded with zeros to `digits`, answer to its widest
    train_size: int | None = None  # None: fresh problems every step; else a fixed pool
    test_fraction: float = 0.01  # share of all problems held out (by hash)
    eval_size: int | None = None  # None: every held-out problem, up to EVAL_SIZE
    ood_digits: int | None = None  # operands of this length in the out-of-distribution set
    seed: int = 0  # fixes the held-out split, the pool and the fixed sets

    def __post_init__(self):
        require(self.kind == "arithmetic", "kind", self.kind, "must be 'arithmetic'")
        require(self.op in OPS, "op", self.op, f"must be one of {sorted(OPS)}")
        require(self.digits >= 1, "digits", self.digits, "must be >= 1")
        require(self.min_digits is None or 1 <= self.min_digits <= self.digits, "min_digits",
                self.min_digits, f"must be null or in [1, task.digits={self.digits}]")
        require(0 < self.test_fraction < 1, "test_fraction", self.test_fraction,
                "must be in (0, 1)")
        held_out = self.test_fraction * self.problems()
        require(self.eval_size is None or 1 <= self.eval_size <= held_out, "eval_size",
                self.eval_size, f"must be null (every held-out problem, up to "
                f"{EVAL_SIZE:,}) or in [1, ~{math.floor(held_out)}] (the held-out problems: "
                f"task.test_fraction x {self.problems()} problems)")
        if self.train_size is not None:
            available = self.problems() - math.ceil(held_out)
            require(1 <= self.train_size <= available, "train_size", self.train_size,
                    f"must be null or in [1, ~{available}] (the problems not held out)")
        require(self.ood_digits is None or self.ood_digits > self.digits, "ood_digits",
                self.ood_digits, f"must be null or > task.digits={self.digits}")

    def problems(self) -> int:
        """Number of distinct operand pairs in the training distribution."""
        shortest = 10 ** (self.min_digits - 1) if self.min_digits and self.min_digits > 1 else 0
        return (10**self.digits - shortest) ** 2


def propagate_carry(columns: Tensor) -> Tensor:
    """Column sums [n, w] (least significant first) -> the digits of their value, same width."""
    out, carry = [], torch.zeros_like(columns[:, 0])
    for column in columns.unbind(1):  # loop over digit positions, vectorized over the batch
        total = column + carry
        out.append(total % 10)
        carry = total // 10
    return torch.stack(out, 1)


def add_digits(a: Tensor, b: Tensor) -> Tensor:
    """[n, w] + [n, w] digits, least significant first -> [n, w + 1]."""
    return propagate_carry(torch.nn.functional.pad(a + b, (0, 1)))


def partial_products(a: Tensor, b: Tensor) -> Tensor:
    """[n, w] x [n, w] digits -> [n, 2w] column sums of partial products: sum_{i+j=k} a_i b_j."""
    width = a.shape[1]
    columns = a.new_zeros(a.shape[0], 2 * width)
    for i in range(width):
        columns[:, i : i + width] += a[:, i : i + 1] * b
    return columns


def mul_digits(a: Tensor, b: Tensor) -> Tensor:
    """[n, w] x [n, w] digits, least significant first -> [n, 2w]: convolve, then carry."""
    return propagate_carry(partial_products(a, b))


def carries(a: Tensor, b: Tensor) -> Tensor:
    """[n] number of columns of a + b (digits [n, w], least significant first) that carry
    into the next one: 999 + 1 has 3."""
    count, carry = torch.zeros_like(a[:, 0]), torch.zeros_like(a[:, 0])
    for column in (a + b).unbind(1):
        carry = (column + carry) // 10
        count += carry
    return count


def nonzero_columns(a: Tensor, b: Tensor) -> Tensor:
    """[n] number of partial-product columns of a x b that are not zero: the columns the long
    multiplication must add up (12 x 11 has 3, 100 x 5 has 1)."""
    return (partial_products(a, b) != 0).sum(1)


@dataclass(frozen=True)
class Op:
    """An arithmetic operation: what the task needs of it, in one place."""

    symbol: str  # its token
    digits: Callable[[Tensor, Tensor], Tensor]  # operand digits [n, w] x2 -> answer digits
    width: Callable[[int], int]  # most answer digits for operands of that many digits
    attribute: str  # the slice attribute that measures how hard a problem is (the main one)
    difficulty: Callable[[Tensor, Tensor], Tensor]  # operand digits -> that attribute [n]


OPS = {"add": Op("+", add_digits, lambda w: w + 1, "carries", carries),
       "mul": Op("*", mul_digits, lambda w: 2 * w, "nonzero_columns", nonzero_columns)}


def significant_length(digits: Tensor) -> Tensor:
    """[n, w] digits, least significant first -> [n] count without leading zeros (at least 1)."""
    place = torch.arange(1, digits.shape[1] + 1, device=digits.device)
    return ((digits != 0) * place).amax(1).clamp(min=1)


def pack(tokens: Tensor, valid: Tensor, pad: int, width: int, left: bool) -> tuple[Tensor, Tensor]:
    """Gather each row's valid tokens together, keeping their order, and pad the row to `width`:
    on the left (left=True, so rows end together) or on the right. Returns (tokens, valid)."""
    key = (valid if left else ~valid).to(torch.int32)  # invalid first when padding on the left
    order = key.sort(dim=1, stable=True).indices
    tokens, valid = tokens.gather(1, order), valid.gather(1, order)
    tokens = tokens.masked_fill(~valid, pad)
    fill = tokens.new_full((tokens.shape[0], width - tokens.shape[1]), pad)
    none = torch.zeros_like(fill, dtype=torch.bool)
    if left:
        return torch.cat([fill, tokens], 1), torch.cat([none, valid], 1)
    return torch.cat([tokens, fill], 1), torch.cat([valid, none], 1)


class Arithmetic(Task):
    sep = ""

    def __init__(self, cfg: ArithmeticConfig, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.cfg = cfg
        self.vocab = [*"0123456789", "+", "*", "=", "$", "_"]  # a digit's token id is its value
        self.op = OPS[cfg.op]
        self.op_token = self.vocab.index(self.op.symbol)
        self.eq_token, self.stop_token, self.pad_token = (self.vocab.index(s) for s in "=$_")
        widest = max(cfg.digits, cfg.ood_digits or 0)  # one layout fits the ood set too
        self.prompt_len = 2 * widest + 2
        self.answer_len = self.op.width(widest) + 1
        self.seq_len = self.prompt_len + self.answer_len - 1
        self.loss_start = self.prompt_len - 1
        self.main_attribute = self.op.attribute

        self.build_fixed_sets(cfg.seed, cfg.test_fraction, cfg.eval_size, cfg.train_size,
                              cfg.problems())
        if cfg.ood_digits is not None:  # longer operands: never in training, so no hash needed
            anything = lambda problems: torch.ones(len(problems), dtype=torch.bool)
            problems = distinct_problems(self.sample_ood, anything, cfg.eval_size or EVAL_SIZE,
                                         stream_generator(cfg.seed, 3), "eval_size",
                                         cfg.problems(), at_most=cfg.eval_size is None)
            self._ood = self.render_fixed(problems).to(self.device)

    def operand_pairs(self, n: int, generator: torch.Generator, width: int,
                      shortest: int | None) -> Tensor:
        """Problems [n, 2 * width]: the digits of a, then of b, least significant first. Each
        operand is uniform in [0, 10^width), or (shortest set) has a length uniform in
        [shortest, width] and is uniform among the numbers of that length."""
        device = generator.device
        digits = torch.randint(10, (n, 2, width), generator=generator, device=device)
        if shortest is not None:
            length = torch.randint(shortest, width + 1, (n, 2, 1), generator=generator,
                                   device=device)
            leading = torch.randint(1, 10, (n, 2, 1), generator=generator, device=device)
            place = torch.arange(width, device=device)
            digits = torch.where((place == length - 1) & (length > 1), leading, digits)
            digits = digits * (place < length)
        return einops.rearrange(digits, "n operand digit -> n (operand digit)")

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.operand_pairs(n, generator, self.cfg.digits, self.cfg.min_digits)

    def sample_ood(self, n: int, generator: torch.Generator) -> Tensor:
        return self.operand_pairs(n, generator, self.cfg.ood_digits, self.cfg.ood_digits)

    def render(self, problems: Tensor) -> Batch:
        """Problems [n, 2w] (digits of a then b, least significant first) -> a Batch."""
        cfg = self.cfg
        a, b = problems.chunk(2, dim=1)
        answer = self.op.digits(a, b)
        a, a_valid = self.written(a, cfg.reverse_operands)
        b, b_valid = self.written(b, cfg.reverse_operands)
        answer, answer_valid = self.written(answer, cfg.reverse_answer)
        column = lambda token: a.new_full((len(a), 1), token)
        yes = torch.ones_like(a_valid[:, :1])
        prompt, _ = pack(torch.cat([a, column(self.op_token), b, column(self.eq_token)], 1),
                         torch.cat([a_valid, yes, b_valid, yes], 1),
                         self.pad_token, self.prompt_len, left=True)
        answer, answer_valid = pack(torch.cat([answer, column(self.stop_token)], 1),
                                    torch.cat([answer_valid, yes], 1),
                                    self.pad_token, self.answer_len, left=False)
        counted = torch.cat([torch.zeros_like(prompt, dtype=torch.bool), answer_valid], 1)
        return next_token_batch(torch.cat([prompt, answer], 1), counted)

    def attributes(self, problems: Tensor) -> dict[str, Tensor]:
        """Operand lengths `len_a`, `len_b`, the answer's `answer_len` (digits, without leading
        zeros) and `carries` (add) or `nonzero_columns` (mul)."""
        a, b = problems.chunk(2, dim=1)
        return {"len_a": significant_length(a), "len_b": significant_length(b),
                "answer_len": significant_length(self.op.digits(a, b)),
                self.op.attribute: self.op.difficulty(a, b)}

    def written(self, digits: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
        """Digits (least significant first) in writing order, and which of them are written."""
        width = digits.shape[1]
        length = width if self.cfg.zero_pad else significant_length(digits)[:, None]
        valid = (torch.arange(width, device=digits.device) < length).expand_as(digits)
        return (digits, valid) if reverse else (digits.flip(1), valid.flip(1))

    def answer_order(self, text: str) -> str:
        return text[::-1] if self.cfg.reverse_answer else text
