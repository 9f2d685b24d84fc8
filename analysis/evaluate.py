"""Run a model on an evaluation batch and keep per-example outputs.

`evaluate` makes one teacher-forced pass (log-probability, argmax correctness and Brier score of
every target token) plus, for tasks with a prompt/answer split, greedy generation of the answer
from the prompt alone (one position per token, from a key/value cache). Every metric in
`analysis.metrics` is a pure function of the `Outputs` it returns, so the training loop and
`python -m analysis` score checkpoints identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.gpt import KVCache


@dataclass
class Outputs:
    """Per-example results on CPU. Positions before `task.loss_start` are not computed: their
    `logprob` and `brier` are NaN and `correct` is False (`mask` is False there by contract)."""

    logprob: Tensor  # [N, T] teacher-forced log p(target)
    correct: Tensor  # [N, T] bool, argmax == target
    brier: Tensor  # [N, T] sum over the vocabulary of (p_v - 1[v = target])^2
    mask: Tensor  # [N, T] bool, positions counted by loss and metrics
    attend: Tensor | None = None  # [N, T] int64, induction target position (-1 = none)
    prompt_len: int | None = None  # P: the answer is predicted at positions P-1 .. P-1+A-1
    answer: Tensor | None = None  # [N, A] target answer tokens
    generated: Tensor | None = None  # [N, A] greedy answer generated from the prompt
    answer_mask: Tensor | None = None  # [N, A] bool, answer tokens that count
    stop_token: int | None = None  # end-of-answer token id

    def answer_slice(self, x: Tensor) -> Tensor:
        """The answer positions [N, A] of a per-position tensor [N, T]."""
        start = self.prompt_len - 1
        return x[:, start : start + self.answer.shape[1]]


@torch.no_grad()
def evaluate(model, task, batch, batch_size: int = 1024, kv_cache: bool = True) -> Outputs:
    """Score `model` on `batch` (a `tasks.Batch` of `task`) in chunks of `batch_size` examples.

    no_grad rather than inference_mode: inference tensors cannot later enter autograd, and this
    runs inside the training loop. Logits are cast to float32 so the scores are the same under
    CUDA autocast. kv_cache=False generates by re-running the model over the whole prefix for
    every token: the reference the cached decoding is checked and timed against.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prompt_len = task.prompt_len
    # Logits before loss_start are never read; skipping them is the "start" path of the model.
    start = task.loss_start if prompt_len is None else min(task.loss_start, prompt_len - 1)
    chunks = []
    try:
        # At least one chunk, so an empty set gives empty outputs (and NaN metrics).
        for lo in range(0, max(len(batch.tokens), 1), batch_size):
            tokens = batch.tokens[lo : lo + batch_size].to(device)
            targets = batch.targets[lo : lo + batch_size].to(device)
            chunks.append(_score_chunk(model, task, tokens, targets, start, kv_cache))
    finally:
        model.train(was_training)
    logprob, correct, brier, generated = zip(*chunks, strict=True)
    out = Outputs(
        logprob=torch.cat(logprob),
        correct=torch.cat(correct),
        brier=torch.cat(brier),
        mask=batch.mask.cpu(),
        attend=None if batch.attend is None else batch.attend.cpu(),
    )
    if prompt_len is not None:
        answer = slice(prompt_len - 1, prompt_len - 1 + task.answer_len)
        out.prompt_len = prompt_len
        out.answer = batch.targets[:, answer].cpu()
        out.answer_mask = out.mask[:, answer]
        out.generated = torch.cat(generated)
        out.stop_token = task.stop_token
    return out


def _score_chunk(model, task, tokens: Tensor, targets: Tensor, start: int, kv_cache: bool):
    """Teacher-forced scores [B, T] and the greedy answer [B, A] (or None) of one chunk."""
    decode = task.prompt_len is not None and task.answer_len > 1
    # The teacher-forced pass doubles as the prefill: causal attention makes the prompt's keys
    # and values independent of the answer tokens after it.
    past = KVCache(tokens.shape[1]) if decode and kv_cache else None
    logits = model(tokens, start=start, past=past).float()  # [B, T - start, V]
    logp = torch.log_softmax(logits, dim=-1)
    target_logp = logp.gather(-1, targets[:, start:, None]).squeeze(-1)
    # sum_v (p_v - 1[v=t])^2 = sum_v p_v^2 - 2 p_t + 1
    brier_tail = logp.exp().square().sum(-1) - 2 * target_logp.exp() + 1
    argmax = logits.argmax(-1)

    batch, seq = tokens.shape
    logprob = torch.full((batch, seq), float("nan"), device=tokens.device)
    brier = torch.full_like(logprob, float("nan"))
    correct = torch.zeros(batch, seq, dtype=torch.bool, device=tokens.device)
    logprob[:, start:] = target_logp
    brier[:, start:] = brier_tail
    correct[:, start:] = argmax == targets[:, start:]

    generated = None
    if task.prompt_len is not None:
        # The first answer token sees exactly the prompt, so the teacher-forced argmax at P-1 is
        # already the greedy choice; later ones need the model's own earlier tokens.
        generated = [argmax[:, task.prompt_len - 1 - start]]
        if past is not None:
            past.crop(task.prompt_len)  # drop the teacher-forced answer; generation writes its own
        seq_so_far = tokens[:, : task.prompt_len]
        for _ in range(1, task.answer_len):
            if past is not None:  # one new position against the cached prefix
                logits = model(generated[-1][:, None], past=past)
            else:  # the whole prefix again
                seq_so_far = torch.cat([seq_so_far, generated[-1][:, None]], dim=1)
                logits = model(seq_so_far, start=seq_so_far.shape[1] - 1)
            generated.append(logits[:, -1].argmax(-1))
        generated = torch.stack(generated, dim=1).cpu()
    return logprob.cpu(), correct.cpu(), brier.cpu(), generated
