"""The width x depth ladder of model sizes, and parameter and FLOP counts from a config alone.

Counts are analytic (no model is built), so a sweep can be planned and its compute budgeted
before anything runs; tests check them against the parameters of real models.
`python -m models` prints the default ladder's table (kept in docs/ladder.md).
"""

from __future__ import annotations

from models.config import GPTConfig

WIDTHS = (32, 64, 128, 256, 512)
DEPTHS = (1, 2, 4, 8)


def ladder(widths=WIDTHS, depths=DEPTHS, **fixed) -> list[GPTConfig]:
    """One config per (d_model, n_layers), widths outer, sharing the `fixed` fields. By default
    d_head stays fixed (heads grow with width) and d_mlp = 4 d_model."""
    for name in ("d_model", "n_layers"):
        if name in fixed:
            raise ValueError(f"model.{name} is set by the ladder; pass it in widths/depths instead")
    fixed = {"n_heads": None, **fixed}
    configs = [GPTConfig(d_model=w, n_layers=n, **fixed) for w in widths for n in depths]
    for cfg in configs:
        cfg.validate()
    return configs


def count_params(cfg: GPTConfig) -> dict[str, int]:
    """{"total", "non_embedding"}: non-embedding leaves out the token and position embeddings
    and the untied unembedding (Kaplan et al. 2020); it keeps biases and norm gains."""
    c = cfg.for_building()
    d = c.d_model
    norm = {"layernorm": 2 * d if c.bias else d, "rmsnorm": d, "none": 0}[c.norm]
    attn = 4 * d * d + (4 * d if c.bias else 0)  # q, k, v, out: n_heads * d_head = d_model
    mlp = 0 if c.attn_only else 2 * d * c.d_mlp + (c.d_mlp + d if c.bias else 0)
    block = attn + mlp + norm * (1 if c.attn_only else 2)
    non_embedding = c.n_layers * block + norm  # + the final norm
    embedding = c.d_vocab * d * (1 if c.tie_embeddings else 2)
    embedding += c.n_ctx * d if c.pos == "learned" else 0
    return {"total": non_embedding + embedding, "non_embedding": non_embedding}


def flops_per_token(cfg: GPTConfig) -> int:
    """Training FLOPs per token, Kaplan et al. 2020's C = 6 N + 6 n_layers n_ctx d_model: N
    the non-embedding parameters (forward 2N, backward 4N), plus attention's score and
    weighted-sum matmuls over a full context. As in Kaplan, the unembedding matmul
    (6 d_model d_vocab) and the embedding lookups are not counted."""
    c = cfg.for_building()
    return 6 * count_params(c)["non_embedding"] + 6 * c.n_layers * c.n_ctx * c.d_model


def ladder_table(d_vocab: int = 15, n_ctx: int = 16, widths=WIDTHS, depths=DEPTHS) -> str:
    """Markdown table of the ladder's sizes and compute. The defaults fit 3-digit addition:
    15 tokens (digits, +, *, = and two specials) and a 16-token context."""
    lines = [
        "# Model ladder",
        "",
        f"Widths x depths at d_vocab = {d_vocab}, n_ctx = {n_ctx} (3-digit addition), with the",
        "GPTConfig defaults: d_head 32, d_mlp = 4 d_model, LayerNorm, learned positions, untied",
        "embeddings, biases. Non-embedding parameters leave out the token and position embeddings",
        "and the unembedding. FLOPs/token (training) = 6 N_non-embedding + 6 n_layers n_ctx",
        "d_model (Kaplan et al. 2020), without the unembedding matmul (6 d_model d_vocab).",
        "Regenerate with `python -m models > docs/ladder.md`.",
        "",
        "| d_model | n_layers | n_heads | d_mlp | params | non-embedding | FLOPs/token |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cfg in ladder(widths, depths, d_vocab=d_vocab, n_ctx=n_ctx):
        c, counts = cfg.with_derived_sizes(), count_params(cfg)
        lines.append(
            f"| {c.d_model} | {c.n_layers} | {c.n_heads} | {c.d_mlp} | {counts['total']:,} "
            f"| {counts['non_embedding']:,} | {flops_per_token(c):,} |"
        )
    return "\n".join(lines) + "\n"
