"""Training throughput of phaselab's GPT against a nanoGPT-architecture reference and Hugging
Face's GPT-2, measured side by side.

All run the same plain PyTorch step (forward, cross-entropy over every position, backward,
AdamW) on the same architecture and the same batch: GPT-2's shape (pre-LayerNorm with biases,
exact GELU, learned positions, tied embeddings, no dropout) at ladder sizes, from the smallest
rung of the emergence ladder (d_model 8) up. The reference is bench/reference_gpt.py (nanoGPT's
architecture in a few lines: fused qkv, causal SDPA), the eager ceiling to beat. The Hugging
Face model is `GPT2LMHeadModel` with `attn_implementation="sdpa"` and
`activation_function="gelu"`: its default tanh GELU ("gelu_new") alone costs ~40% on CPU and
would flatter us. Two comparisons with the reference: the model alone (every side with the
same torch AdamW), and the whole step as each sets it up (phaselab: train.step.adamw, as the
loop builds it; the reference: AdamW fused on CUDA only, as nanoGPT does). Achieved FLOP/s
counts `flops_per_token` (Kaplan et al. 2020's 6N + attention; the unembedding is left out) and
is quoted against a measured matmul peak (float32 on CPU, bfloat16 on GPU).

On a GPU every side trains under bfloat16 autocast with fused AdamW, and the compiled model of
the smallest sizes uses mode="reduce-overhead" (CUDA graphs: launch overhead dominates there).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from bench.reference_gpt import ReferenceGPT
from bench.timing import interleaved, matmul_peak, median, speedup, table, timed
from models import GPT, GPTConfig
from train.config import OptimConfig
from train.step import adamw

# d_model, n_layers, n_heads, n_ctx, batch: the smallest rung of addition_emergence_small, then
# d_head 32 at the ladder's sizes.
SIZES = [(8, 2, 4, 12, 128), (64, 2, 2, 32, 64), (128, 2, 4, 32, 64), (256, 4, 8, 64, 64)]
QUICK_SIZES = SIZES[:2]
BATCH = 64
D_VOCAB = 64
D_HEAD = 32
SMALL = 128  # d_model up to which CUDA compiles with mode="reduce-overhead"
LR = 1e-4


def ours(d_model: int, n_layers: int, n_ctx: int, n_heads: int | None = None) -> GPT:
    return GPT(GPTConfig(d_vocab=D_VOCAB, n_ctx=n_ctx, d_model=d_model, n_layers=n_layers,
                         n_heads=n_heads or d_model // D_HEAD, act="gelu", norm="layernorm",
                         pos="learned", tie_embeddings=True, bias=True, dropout=0.0))


def hugging_face(d_model: int, n_layers: int, n_ctx: int, n_heads: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=D_VOCAB, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers,
                     n_head=n_heads, activation_function="gelu", resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, use_cache=False,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=True,
                     attn_implementation="sdpa")
    return GPT2LMHeadModel(cfg)


def train_step(model: torch.nn.Module, logits_of, n_ctx: int, device: torch.device, steps: int,
               batch: int = BATCH, optimizer: torch.optim.Optimizer | None = None):
    """A function running `steps` training steps of `model` on one fixed random batch, with
    `optimizer` (default: torch's AdamW over every parameter, fused on CUDA only, as nanoGPT
    sets it up)."""
    model.to(device).train()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(D_VOCAB, (batch, n_ctx), generator=generator).to(device)
    targets = torch.randint(D_VOCAB, (batch, n_ctx), generator=generator).to(device)
    cuda = device.type == "cuda"
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=LR, fused=cuda)
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


def measure(d_model: int, n_layers: int, n_heads: int, n_ctx: int, batch: int,
            device: torch.device, quick: bool, compile_too: bool) -> dict:
    """Seconds per step of each side (and optionally ours compiled), and the compile time."""
    # Enough steps per timed call to reach ~0.3 s on small models, fewer repetitions on large.
    probe = ours(d_model, n_layers, n_ctx, n_heads)
    one = train_step(probe, probe, n_ctx, device, 1, batch)
    one()
    per_step = timed(one, device)
    steps = max(1, round(0.3 / per_step))
    repeats = 5 if quick else max(5, min(15, round(40 / (5 * steps * per_step))))

    torch.manual_seed(0)
    hf = hugging_face(d_model, n_layers, n_ctx, n_heads)
    ref = ReferenceGPT(D_VOCAB, n_ctx, d_model, n_layers, n_heads)
    model, loop_model = (ours(d_model, n_layers, n_ctx, n_heads) for _ in range(2))
    loop_optimizer = adamw(loop_model.to(device), OptimConfig(lr=LR), device)
    candidates = {
        "hf": train_step(hf, lambda t: hf(t).logits, n_ctx, device, steps, batch),
        "ref": train_step(ref, ref, n_ctx, device, steps, batch),
        "ours": train_step(model, model, n_ctx, device, steps, batch),
        "ours_loop": train_step(loop_model, loop_model, n_ctx, device, steps, batch,
                                loop_optimizer),
    }
    result = {"params": model.num_params(), "ref_params": ref.num_params(),
              "hf_params": hf.num_parameters(),
              "flops_per_step": model.flops_per_token() * batch * n_ctx}
    assert result["params"] == result["ref_params"] == result["hf_params"], result
    if compile_too:
        mode = "reduce-overhead" if device.type == "cuda" and d_model <= SMALL else "default"
        compiled_model = ours(d_model, n_layers, n_ctx, n_heads)
        compiled = torch.compile(compiled_model, mode=mode)
        first = train_step(compiled_model, compiled, n_ctx, device, 1, batch)
        # Compiles forward and backward; cold, as on a fresh machine (a warm on-disk cache
        # makes a repeat take seconds).
        with torch.compiler.config.patch(force_disable_caches=True):
            result["first_step_s"] = timed(first, device)
        candidates["compiled"] = train_step(compiled_model, compiled, n_ctx, device, steps,
                                            batch)
    times = interleaved(candidates, repeats, warmup=1, device=device)
    result |= {name: median(t) / steps for name, t in times.items()}
    result["vs_ref"] = speedup(times, "ours", "ref")
    result["loop_vs_ref"] = speedup(times, "ours_loop", "ref")
    result["vs_hf"] = speedup(times, "ours", "hf")
    if compile_too:
        result["compiled_vs_hf"] = speedup(times, "compiled", "hf")
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
    for d_model, n_layers, n_heads, n_ctx, batch in QUICK_SIZES if quick else SIZES:
        r = measure(d_model, n_layers, n_heads, n_ctx, batch, device, quick, compile_too)
        flops = r["flops_per_step"] / r["ours"]
        row = [d_model, n_layers, n_heads, n_ctx, batch, f"{r['params']:,}", 1e3 * r["hf"],
               1e3 * r["ref"], 1e3 * r["ours"], f"**{r['vs_ref']:.3f}**",
               f"**{r['loop_vs_ref']:.3f}**", f"{r['vs_hf']:.3f}", f"{flops / 1e9:.3g}",
               f"{100 * flops / peak:.0f}%"]
        if compile_too:
            row += [1e3 * r["compiled"], f"{r['compiled_vs_hf']:.2f}",
                    f"{r['compiled_vs_eager']:.2f}", f"{r['compile_s']:.1f}"]
        rows.append(row)
        print(table(HEADERS[: len(row)], [row]).splitlines()[-1], flush=True)
    headers = HEADERS if compile_too else HEADERS[:14]
    cuda = device.type == "cuda"
    return "\n".join([
        "## Training step: ours vs a nanoGPT-architecture reference and Hugging Face GPT-2",
        "",
        f"d_vocab {D_VOCAB}; forward + cross-entropy + backward + AdamW "
        f"({'bf16 autocast' if cuda else 'float32'}). A ratio > 1 means ours is faster: the "
        f"median of paired ratios, every side interleaved in one process (order reversed every "
        f"other round). ours/ref (model): every side with torch's AdamW "
        f"({'fused' if cuda else 'not fused'}), i.e. the models alone; ours/ref (step): "
        f"phaselab's step with the AdamW its loop builds (train.step.adamw, fused on CPU and "
        f"CUDA) against the reference's as nanoGPT builds it (fused on CUDA only). "
        f"Matmul peak measured here: {peak / 1e9:.3g} GFLOP/s "
        f"({'bfloat16' if cuda else 'float32'}). Compile time: first compiled step minus a "
        f"steady one, with compile caches off (a fresh machine; a fresh process pays more for "
        f"its first shape).",
        "",
        table(headers, rows),
    ])


HEADERS = ["d_model", "n_layers", "n_heads", "n_ctx", "batch", "params", "HF ms/step",
           "ref ms/step", "ours ms/step", "ours/ref (model)", "ours/ref (step)", "ours/HF",
           "ours GFLOP/s", "% of matmul peak", "compiled ms/step", "compiled/HF",
           "compiled/eager", "compile s"]
