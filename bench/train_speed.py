"""Training throughput of phaselab's GPT against Hugging Face's GPT-2, measured side by side.

Both sides run the same plain PyTorch step (forward, cross-entropy over every position,
backward, AdamW) on the same architecture and the same batch: GPT-2's shape (pre-LayerNorm with
biases, exact GELU, learned positions, tied embeddings, no dropout) at ladder sizes. The baseline
is `GPT2LMHeadModel` with `attn_implementation="sdpa"` and `activation_function="gelu"`: its
default tanh GELU ("gelu_new") alone costs ~40% on CPU and would flatter us. Achieved FLOP/s
counts `flops_per_token` (Kaplan et al. 2020's 6N + attention; the unembedding is left out) and
is quoted against a measured matmul peak (float32 on CPU, bfloat16 on GPU).

On a GPU both sides train under bfloat16 autocast with fused AdamW, and the compiled model of
the smallest sizes uses mode="reduce-overhead" (CUDA graphs: launch overhead dominates there).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from bench.timing import interleaved, matmul_peak, median, speedup, table, timed
from models import GPT, GPTConfig

SIZES = [(64, 2, 32), (128, 2, 32), (256, 4, 64), (512, 8, 64)]  # d_model, n_layers, n_ctx
QUICK_SIZES = SIZES[:2]
BATCH = 64
D_VOCAB = 64
D_HEAD = 32
SMALL = 128  # d_model up to which CUDA compiles with mode="reduce-overhead"


def ours(d_model: int, n_layers: int, n_ctx: int) -> GPT:
    return GPT(GPTConfig(d_vocab=D_VOCAB, n_ctx=n_ctx, d_model=d_model, n_layers=n_layers,
                         n_heads=d_model // D_HEAD, act="gelu", norm="layernorm", pos="learned",
                         tie_embeddings=True, bias=True, dropout=0.0))


def hugging_face(d_model: int, n_layers: int, n_ctx: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=D_VOCAB, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers,
                     n_head=d_model // D_HEAD, activation_function="gelu", resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, use_cache=False,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
                     attn_implementation="sdpa")
    return GPT2LMHeadModel(cfg)


def train_step(model: torch.nn.Module, logits_of, n_ctx: int, device: torch.device, steps: int):
    """A function running `steps` training steps of `model` on one fixed random batch."""
    model.to(device).train()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(D_VOCAB, (BATCH, n_ctx), generator=generator).to(device)
    targets = torch.randint(D_VOCAB, (BATCH, n_ctx), generator=generator).to(device)
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    autocast = (functools.partial(torch.autocast, "cuda", torch.bfloat16) if cuda
                else contextlib.nullcontext)

    def run() -> None:
        for _ in range(steps):
            with autocast():
                logits = logits_of(tokens)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def measure(d_model: int, n_layers: int, n_ctx: int, device: torch.device, quick: bool,
            compile_too: bool) -> dict:
    """Seconds per step of HF, ours and (optionally) ours compiled, and the compile time."""
    # Enough steps per timed call to reach ~0.3 s on small models, fewer repetitions on large.
    probe = ours(d_model, n_layers, n_ctx)
    one = train_step(probe, probe, n_ctx, device, 1)
    one()
    per_step = timed(one, device)
    steps = max(1, round(0.3 / per_step))
    repeats = 3 if quick else max(3, min(9, round(20 / (3 * steps * per_step))))

    hf, model = hugging_face(d_model, n_layers, n_ctx), ours(d_model, n_layers, n_ctx)
    candidates = {
        "hf": train_step(hf, lambda t: hf(t).logits, n_ctx, device, steps),
        "ours": train_step(model, model, n_ctx, device, steps),
    }
    result = {"params": model.num_params(), "hf_params": hf.num_parameters(),
              "flops_per_step": model.flops_per_token() * BATCH * n_ctx}
    if compile_too:
        mode = "reduce-overhead" if device.type == "cuda" and d_model <= SMALL else "default"
        compiled_model = ours(d_model, n_layers, n_ctx)
        compiled = torch.compile(compiled_model, mode=mode)
        first = train_step(compiled_model, compiled, n_ctx, device, 1)
        # Compiles forward and backward; cold, as on a fresh machine (a warm on-disk cache
        # makes a repeat take seconds).
        with torch.compiler.config.patch(force_disable_caches=True):
            result["first_step_s"] = timed(first, device)
        candidates["compiled"] = train_step(compiled_model, compiled, n_ctx, device, steps)
    times = interleaved(candidates, repeats, warmup=1, device=device)
    result |= {name: median(t) / steps for name, t in times.items()}
    result["ratio"] = speedup(times, "ours", "hf")
    if compile_too:
        result["compiled_ratio"] = speedup(times, "compiled", "hf")
        result["compiled_vs_eager"] = speedup(times, "compiled", "ours")
        result["compile_s"] = result["first_step_s"] - result["compiled"]
    result["repeats"], result["steps_per_call"] = repeats, steps
    return result


def main(quick: bool, device: torch.device) -> str:
    """Measure every size; return the Markdown section."""
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, peak_dtype)
    compile_too = not quick
    rows = []
    for d_model, n_layers, n_ctx in QUICK_SIZES if quick else SIZES:
        r = measure(d_model, n_layers, n_ctx, device, quick, compile_too)
        tokens_per_s = BATCH * n_ctx / r["ours"]
        flops = r["flops_per_step"] / r["ours"]
        row = [d_model, n_layers, n_ctx, f"{r['params']:,}", 1e3 * r["hf"], 1e3 * r["ours"],
               f"**{r['ratio']:.2f}**", tokens_per_s, f"{flops / 1e9:.3g}",
               f"{100 * flops / peak:.0f}%"]
        if compile_too:
            row += [1e3 * r["compiled"], f"**{r['compiled_ratio']:.2f}**",
                    f"{r['compiled_vs_eager']:.2f}", f"{r['compile_s']:.1f}"]
        rows.append(row)
        print(table(HEADERS[: len(row)], [row]).splitlines()[-1], flush=True)
    headers = HEADERS if compile_too else HEADERS[:10]
    return "\n".join([
        "## Training step: ours vs Hugging Face GPT-2",
        "",
        f"Batch {BATCH}, d_vocab {D_VOCAB}, d_head {D_HEAD}; forward + cross-entropy + backward "
        f"+ AdamW ({'fused, bf16 autocast' if device.type == 'cuda' else 'float32'}). "
        f"ours/HF > 1 means ours is faster (median of paired ratios, the two interleaved). "
        f"Matmul peak measured here: {peak / 1e9:.3g} GFLOP/s "
        f"({'bfloat16' if device.type == 'cuda' else 'float32'}). Compile time: first compiled "
        f"step minus a steady one, with compile caches off (a fresh machine; a fresh process "
        f"pays more for its first shape).",
        "",
        table(headers, rows),
    ])


HEADERS = ["d_model", "n_layers", "n_ctx", "params", "HF ms/step", "ours ms/step", "ours/HF",
           "ours tokens/s", "ours GFLOP/s", "% of matmul peak", "compiled ms/step",
           "compiled/HF", "compiled/eager", "compile s"]
