"""Every metric as a pure function of `analysis.evaluate.Outputs`.

The same functions score a checkpoint inside the training loop and offline, so the two never
disagree. Each metric is one small function returning a float (or None where it does not apply
to the task); `METRICS` lists them and `compute` assembles the dict. Adding a metric is one
function plus one line in `METRICS`.

Exact versus continuous views of the same outputs (Schaeffer et al. 2023): `exact_match` is
all-or-nothing over the answer, while `token_accuracy`, `edit_distance`, `answer_logprob` and
`brier` give partial credit; `predicted_exact_match` is the p^L check between the two.

"Answer tokens" are the masked answer positions for prompt/answer tasks (scored on the greedy
answer) and the masked positions for tasks without an answer split (scored teacher-forced).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from analysis.evaluate import Outputs


def _answer_correct(out: Outputs) -> tuple[Tensor, Tensor]:
    """(correct [N, A] bool, counted [N, A] bool): greedy answer vs target for prompt/answer
    tasks; teacher-forced argmax over the whole sequence for the others."""
    if out.answer is None:
        return out.correct, out.mask
    return out.generated == out.answer, out.answer_mask


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return x[mask].double().mean().item() if mask.any() else float("nan")


def exact_match(out: Outputs) -> float:
    """Fraction of examples whose every counted answer token is right."""
    correct, counted = _answer_correct(out)
    return (correct | ~counted).all(dim=1).double().mean().item()


def token_accuracy(out: Outputs) -> float:
    """Fraction of counted answer tokens that are right (greedy answer vs target for
    prompt/answer tasks, teacher-forced argmax otherwise)."""
    return _masked_mean(*_answer_correct(out))


def per_position_accuracy(out: Outputs) -> Tensor:
    """Accuracy at each answer position [A] (sequence position [T] without an answer split);
    NaN where no example counts that position."""
    correct, counted = _answer_correct(out)
    return (correct & counted).sum(0) / counted.sum(0)


def predicted_exact_match(out: Outputs) -> dict[str, float]:
    """Exact match predicted from per-token accuracy, the mirage check (Schaeffer et al. 2023):
    `from_mean` = token_accuracy ** L (L: the answer positions any example counts),
    `from_positions` = product of the per-position accuracies. Errors that concentrate on a
    few positions make the first overestimate exact match, so both are reported."""
    return {
        "from_mean": predicted_exact_match_from_mean(out),
        "from_positions": predicted_exact_match_from_positions(out),
    }


def predicted_exact_match_from_mean(out: Outputs) -> float:
    counted = per_position_accuracy(out).isfinite()
    return token_accuracy(out) ** int(counted.sum()) if counted.any() else float("nan")


def predicted_exact_match_from_positions(out: Outputs) -> float:
    accuracy = per_position_accuracy(out)
    counted = accuracy.isfinite()
    return accuracy[counted].double().prod().item() if counted.any() else float("nan")


def _answer_tokens(out: Outputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(target [N, A], target_len [N], generated [N, A], generated_len [N]): each row's tokens
    moved to the front. The target is its counted tokens; the generated answer is cut at its
    first stop token; the stop token itself is left out of both, so the distance compares answer
    contents whether or not the task's answer mask covers the stop token. Without a stop token
    the generated answer is read at the target's counted positions."""
    keep = out.answer_mask
    if out.stop_token is not None:
        keep = keep & (out.answer != out.stop_token)
    order = torch.sort((~keep).int(), dim=1, stable=True).indices
    target, target_len = out.answer.gather(1, order), keep.sum(1)
    if out.stop_token is None:
        return target, target_len, out.generated.gather(1, order), target_len
    is_stop = out.generated == out.stop_token
    first_stop = torch.where(is_stop.any(1), is_stop.int().argmax(1), out.generated.shape[1])
    return target, target_len, out.generated, first_stop


def levenshtein(a: Tensor, a_len: Tensor, b: Tensor, b_len: Tensor) -> Tensor:
    """Token edit distance [N] between a[i, :a_len[i]] and b[i, :b_len[i]] (a, b [N, A]).

    Vectorized dynamic programme: one step per row of the table, i.e. per token of `a`. Within a
    row, D[i, j] = min(E[j], D[i, j-1] + 1) with E[j] = min(D[i-1, j] + 1, D[i-1, j-1] + cost)
    unrolls to D[i, j] = j + min_{k <= j} (E[k] - k): a cumulative minimum over j."""
    n, width = b.shape
    cols = torch.arange(width + 1, device=b.device)
    row = cols.expand(n, -1)  # D[0, j] = j
    rows = [row]
    for i in range(a.shape[1]):
        cost = (a[:, i, None] != b).long()  # [N, A]
        edge = torch.full((n, 1), i + 1, device=b.device)  # D[i+1, 0] = i + 1
        inner = torch.minimum(row[:, 1:] + 1, row[:, :-1] + cost)
        e = torch.cat([edge, inner], dim=1)
        row = cols + torch.cummin(e - cols, dim=1).values
        rows.append(row)
    table = torch.stack(rows, dim=1)  # [N, A+1, A+1]
    return table[torch.arange(n), a_len, b_len]


def _edit_distances(out: Outputs) -> tuple[Tensor, Tensor]:
    target, target_len, generated, generated_len = _answer_tokens(out)
    return levenshtein(generated, generated_len, target, target_len), target_len


def edit_distance(out: Outputs) -> float | None:
    """Mean token edit distance between the greedy answer and the target (prompt/answer tasks)."""
    if out.answer is None:
        return None
    distance, _ = _edit_distances(out)
    return distance.double().mean().item()


def edit_distance_norm(out: Outputs) -> float | None:
    """Mean edit distance divided by the target answer's length."""
    if out.answer is None:
        return None
    distance, target_len = _edit_distances(out)
    return (distance / target_len.clamp(min=1)).double().mean().item()


def answer_logprob(out: Outputs) -> float:
    """Mean over examples of log p(whole correct answer), teacher forced: the exact pass
    probability in log space, resolving abilities far below what sampling can see (Hu et al.
    2023)."""
    if out.answer is None:
        logprob, counted = out.logprob, out.mask
    else:
        logprob, counted = out.answer_slice(out.logprob), out.answer_mask
    return torch.where(counted, logprob, 0.0).double().sum(1).mean().item()


def answer_prob(out: Outputs) -> float:
    """Mean over examples of p(whole correct answer), teacher forced: the expected pass rate of
    sampling, whose log(-log) Hu et al. 2023 fit linearly in log parameters."""
    if out.answer is None:
        logprob, counted = out.logprob, out.mask
    else:
        logprob, counted = out.answer_slice(out.logprob), out.answer_mask
    return torch.where(counted, logprob, 0.0).double().sum(1).exp().mean().item()


def answer_logprob_by_position(out: Outputs) -> Tensor:
    """[A] mean over all examples of log p(answer token i), 0 where an example does not count
    position i: the terms whose sum is `answer_logprob`, for forecasts per position."""
    if out.answer is None:
        raise ValueError("answer positions need a prompt/answer task")
    logprob = torch.where(out.answer_mask, out.answer_slice(out.logprob), 0.0)
    return logprob.double().mean(0)


def brier(out: Outputs) -> float | None:
    """Mean Brier score at the answer position, for single-token answers (the rescoring that
    removes BIG-bench's multiple-choice emergence, Schaeffer et al. 2023)."""
    if out.answer is None or out.answer.shape[1] != 1:
        return None
    return _masked_mean(out.answer_slice(out.brier), out.answer_mask)


def loss(out: Outputs) -> float:
    """Mean cross-entropy over every masked position (the training objective)."""
    return -_masked_mean(out.logprob, out.mask)


METRICS: dict[str, Callable[[Outputs], float | None]] = {
    "exact_match": exact_match,
    "token_accuracy": token_accuracy,
    "edit_distance": edit_distance,
    "edit_distance_norm": edit_distance_norm,
    "answer_logprob": answer_logprob,
    "answer_prob": answer_prob,
    "brier": brier,
    "loss": loss,
    "predicted_exact_match_from_mean": predicted_exact_match_from_mean,
    "predicted_exact_match_from_positions": predicted_exact_match_from_positions,
}


def compute(out: Outputs) -> dict[str, float]:
    """{metric name: value} for every metric that applies to these outputs."""
    values = {name: fn(out) for name, fn in METRICS.items()}
    return {name: float(v) for name, v in values.items() if v is not None}
