"""Export a phaselab checkpoint as a Hugging Face transformers model directory.

`python -m analysis.export RUN_DIR [--step N] --to hf OUT_DIR` writes config.json,
model.safetensors and a tokenizer.json over the task's vocabulary, so
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` and `AutoTokenizer.from_pretrained(OUT_DIR)`
open it, and so does every tool built on them (TransformerLens's `TransformerBridge`, nnsight).

Two layouts represent phaselab's variants exactly:
- GPT-2 (`GPT2LMHeadModel`): layernorm, learned or no positions (no positions: a zero position
  table). Biases switched off and attention-only blocks become zero tensors.
- Llama (`LlamaForCausalLM`): rmsnorm with rotary positions. Llama's MLP is gated,
  down(act(gate(x)) * up(x)); phaselab's proj(act(fc(x))) is that with up(x) = 1 (zero weight,
  bias one).
Under muP the 1/d_head attention scale is folded into the query weights (the layouts scale by
1/sqrt(d_head)) and the readout multiplier 1/width_mult into the final norm's gain and bias.
Anything else raises ValueError naming the field that no layout represents.

Needs the `interop` extra (`pip install -e ".[interop]"`).
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from analysis.layout import HYDRA_CONFIG, is_ensemble, is_member
from models.config import GPTConfig
from models.gpt import GPT


def layout(cfg: GPTConfig) -> str:
    """"gpt2" or "llama": the Hugging Face layout that represents `cfg` exactly; raises
    ValueError naming the field for a variant that none does."""
    if cfg.norm == "layernorm" and cfg.pos in ("learned", "none"):
        return "gpt2"
    if cfg.norm == "rmsnorm" and cfg.pos == "rotary":
        return "llama"
    if cfg.norm == "none":
        raise ValueError("model.norm=none: every Hugging Face layout normalizes before each "
                         "sublayer (exportable: layernorm with pos learned|none, rmsnorm with "
                         "pos rotary)")
    raise ValueError(f"model.pos={cfg.pos} with model.norm={cfg.norm}: exportable are "
                     "layernorm with pos learned|none (GPT-2) and rmsnorm with pos rotary (Llama)")


def attention_weights(model: GPT, i: int) -> dict[str, Tensor | None]:
    """Layer i's query, key, value and output weights [out, in] and biases (None without),
    the query scaled so that the layouts' 1/sqrt(d_head) gives phaselab's attention scale.
    The one place that reads phaselab's attention projections."""
    attn, cfg = model.blocks[i].attn, model.cfg
    fold = attn.scale * math.sqrt(cfg.d_head)  # 1 under standard, 1/sqrt(d_head) under muP
    wq, wk, wv = attn.qkv.weight.chunk(3, dim=0)
    bq, bk, bv = attn.qkv.bias.chunk(3) if attn.qkv.bias is not None else (None, None, None)
    return {"wq": wq * fold, "bq": None if bq is None else bq * fold,
            "wk": wk, "bk": bk, "wv": wv, "bv": bv,
            "wo": attn.out.weight, "bo": attn.out.bias}


def _norm(module, d_model: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """(gain, bias) of a phaselab norm times `scale`; zeros where it has no bias."""
    bias = getattr(module, "bias", None)
    bias = torch.zeros(d_model) if bias is None else bias
    return module.weight * scale, bias * scale


def _or_zeros(t: Tensor | None, n: int) -> Tensor:
    return torch.zeros(n) if t is None else t


def gpt2_tensors(model: GPT) -> dict[str, Tensor]:
    """GPT2LMHeadModel's state dict (Conv1D weights are [in, out])."""
    cfg, d = model.cfg, model.cfg.d_model
    pos = model.pos_embed.weight if model.pos_embed is not None else torch.zeros(cfg.n_ctx, d)
    out = {"transformer.wte.weight": model.embed.weight, "transformer.wpe.weight": pos}
    for i, block in enumerate(model.blocks):
        p, w = f"transformer.h.{i}.", attention_weights(model, i)
        out[p + "ln_1.weight"], out[p + "ln_1.bias"] = _norm(block.ln1, d)
        out[p + "attn.c_attn.weight"] = torch.cat([w["wq"], w["wk"], w["wv"]]).T
        out[p + "attn.c_attn.bias"] = torch.cat([_or_zeros(w[b], d) for b in ("bq", "bk", "bv")])
        out[p + "attn.c_proj.weight"] = w["wo"].T
        out[p + "attn.c_proj.bias"] = _or_zeros(w["bo"], d)
        if block.mlp is None:  # zero MLP: act(0) = 0 for gelu and relu
            out[p + "ln_2.weight"], out[p + "ln_2.bias"] = torch.ones(d), torch.zeros(d)
            fc, proj = torch.zeros(cfg.d_mlp, d), torch.zeros(d, cfg.d_mlp)
            fc_b, proj_b = None, None
        else:
            out[p + "ln_2.weight"], out[p + "ln_2.bias"] = _norm(block.ln2, d)
            fc, proj = block.mlp.fc.weight, block.mlp.proj.weight
            fc_b, proj_b = block.mlp.fc.bias, block.mlp.proj.bias
        out[p + "mlp.c_fc.weight"], out[p + "mlp.c_fc.bias"] = fc.T, _or_zeros(fc_b, cfg.d_mlp)
        out[p + "mlp.c_proj.weight"], out[p + "mlp.c_proj.bias"] = proj.T, _or_zeros(proj_b, d)
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = _norm(
        model.ln_f, d, 1 / model.width_mult)
    if model.unembed is not None:
        out["lm_head.weight"] = model.unembed.weight
    return out


def llama_tensors(model: GPT) -> dict[str, Tensor]:
    """LlamaForCausalLM's state dict; with MLPs, mlp_bias is on so that up(x) = 1."""
    cfg, d = model.cfg, model.cfg.d_model
    out = {"model.embed_tokens.weight": model.embed.weight}
    for i, block in enumerate(model.blocks):
        p, w = f"model.layers.{i}.", attention_weights(model, i)
        out[p + "input_layernorm.weight"] = block.ln1.weight
        for name in "qkvo":
            out[p + f"self_attn.{name}_proj.weight"] = w[f"w{name}"]
            if cfg.bias:
                out[p + f"self_attn.{name}_proj.bias"] = w[f"b{name}"]
        if block.mlp is None:  # zero MLP, no biases (mlp_bias is off)
            out[p + "post_attention_layernorm.weight"] = torch.ones(d)
            out[p + "mlp.gate_proj.weight"] = torch.zeros(cfg.d_mlp, d)
            out[p + "mlp.up_proj.weight"] = torch.zeros(cfg.d_mlp, d)
            out[p + "mlp.down_proj.weight"] = torch.zeros(d, cfg.d_mlp)
            continue
        mlp = block.mlp
        out[p + "post_attention_layernorm.weight"] = block.ln2.weight
        out[p + "mlp.gate_proj.weight"] = mlp.fc.weight
        out[p + "mlp.gate_proj.bias"] = _or_zeros(mlp.fc.bias, cfg.d_mlp)
        out[p + "mlp.up_proj.weight"] = torch.zeros(cfg.d_mlp, d)
        out[p + "mlp.up_proj.bias"] = torch.ones(cfg.d_mlp)
        out[p + "mlp.down_proj.weight"] = mlp.proj.weight
        out[p + "mlp.down_proj.bias"] = _or_zeros(mlp.proj.bias, d)
    out["model.norm.weight"] = model.ln_f.weight / model.width_mult
    if model.unembed is not None:
        out["lm_head.weight"] = model.unembed.weight
    return out


def hf_config(cfg: GPTConfig):
    """The transformers config of `cfg`'s layout."""
    from transformers import GPT2Config, LlamaConfig

    common = {"vocab_size": cfg.d_vocab, "tie_word_embeddings": cfg.tie_embeddings,
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if layout(cfg) == "gpt2":
        return GPT2Config(
            n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=cfg.d_mlp, activation_function=cfg.act,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            layer_norm_epsilon=1e-5, **common)
    return LlamaConfig(
        hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads, head_dim=cfg.d_head,
        hidden_act=cfg.act, max_position_embeddings=cfg.n_ctx, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        attention_bias=cfg.bias, mlp_bias=not cfg.attn_only, attention_dropout=cfg.dropout,
        **common)


@torch.no_grad()
def to_hf(model: GPT):
    """The transformers model (eval mode, float32) computing `model`'s logits."""
    kind = layout(model.cfg)  # refuses an unmappable variant before transformers' slow import
    from transformers import AutoModelForCausalLM

    config = hf_config(model.cfg)
    tensors = gpt2_tensors(model) if kind == "gpt2" else llama_tensors(model)
    hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = hf.load_state_dict(
        {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, strict=False)
    tied = {"lm_head.weight"} if model.cfg.tie_embeddings else set()
    missing = [k for k in missing if k not in tied and not k.endswith(".attn.bias")]
    if missing or unexpected:  # a transformers release with different names: fail loudly
        raise RuntimeError(f"weight names do not match {type(hf).__name__}: "
                           f"missing {missing}, unexpected {unexpected}")
    return hf.eval()


def tokenizer(vocab: list[str], sep: str):
    """A fast tokenizer over the task's vocabulary: token i is vocab[i]. Text is split as the
    task's `decode` joins it (on `sep`, or by longest vocabulary match where sep is empty)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(vocab)}, unk_token=vocab[0]))
    if sep:
        tok.pre_tokenizer = pre_tokenizers.Split(sep, behavior="removed")
    else:
        words = sorted(vocab, key=len, reverse=True)
        pattern = Regex("|".join(re.escape(w) for w in words))
        tok.pre_tokenizer = pre_tokenizers.Split(pattern, behavior="isolated")
    if not sep:
        tok.decoder = decoders.Fuse()  # without a decoder, tokens are joined by spaces
    elif sep != " ":
        raise ValueError(f"task separator {sep!r}: the tokenizer joins tokens by '' or ' '")
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)


def export_hf(model: GPT, out_dir: str | Path, vocab: list[str], sep: str = "") -> Path:
    """Write `model` and a tokenizer over `vocab` as a Hugging Face model directory."""
    out_dir = Path(out_dir)
    to_hf(model).save_pretrained(out_dir)
    tokenizer(vocab, sep).save_pretrained(out_dir)
    return out_dir


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Export the checkpoint of `run_dir` at `step` (None = the last) with its task's vocab."""
    from omegaconf import OmegaConf

    from analysis.runs import Run

    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        members = sorted(p.name for p in run_dir.iterdir() if is_member(p))
        raise ValueError(f"{run_dir} is an ensemble: export one of its members, each a run "
                         f"directory ({', '.join(members)})")
    config_path = run_dir / HYDRA_CONFIG
    if not config_path.exists():
        raise ValueError(f"{run_dir} is not a run directory (no .hydra/config.yaml)")
    run = Run(run_dir, run_dir.name, OmegaConf.load(config_path))
    task = run.task()
    model = run.load_model(step)
    return export_hf(model, out_dir, task.vocab, task.sep)


def _halves_to_pairs(w: Tensor, n_heads: int) -> Tensor:
    """Reorder each head's rows of a query or key projection [H*D, ...] from rotary on halves
    (dims j, j + D/2 rotate together; phaselab, HF) to rotary on adjacent pairs (2j, 2j + 1;
    TransformerLens's native model). Queries and keys permuted alike leave the scores unchanged."""
    heads = w.unflatten(0, (n_heads, 2, -1))  # [H, half, D/2, ...]
    return heads.transpose(1, 2).flatten(0, 2)


@torch.no_grad()
def native_tensors(model: GPT) -> dict[str, Tensor]:
    """The state dict of TransformerLens's native model computing `model`'s logits."""
    cfg, d = model.cfg, model.cfg.d_model
    pos = model.pos_embed.weight if model.pos_embed is not None else torch.zeros(cfg.n_ctx, d)
    out = {"tok_embed.weight": model.embed.weight}
    if cfg.pos != "rotary":
        out["pos.weight"] = pos
    rotary = (lambda w: _halves_to_pairs(w, cfg.n_heads)) if cfg.pos == "rotary" else None
    for i, block in enumerate(model.blocks):
        p, w = f"layers.{i}.", attention_weights(model, i)
        for name, norm in (("ln1", block.ln1), ("ln2", block.ln2)):
            if norm is not None and cfg.norm != "none":
                out[p + name + ".weight"] = norm.weight
                if cfg.norm == "layernorm":
                    out[p + name + ".bias"] = _norm(norm, d)[1]
        for name in "qkvo":
            weight, bias = w[f"w{name}"], _or_zeros(w[f"b{name}"], d)
            if rotary is not None and name in "qk":
                weight, bias = rotary(weight), rotary(bias)
            out[p + f"attn.{name}.weight"], out[p + f"attn.{name}.bias"] = weight, bias
        if block.mlp is not None:
            out[p + "mlp.fc_in.weight"] = block.mlp.fc.weight
            out[p + "mlp.fc_in.bias"] = _or_zeros(block.mlp.fc.bias, cfg.d_mlp)
            out[p + "mlp.fc_out.weight"] = block.mlp.proj.weight
            out[p + "mlp.fc_out.bias"] = _or_zeros(block.mlp.proj.bias, d)
    if cfg.norm != "none":
        out["ln_out.weight"] = model.ln_f.weight
        if cfg.norm == "layernorm":
            out["ln_out.bias"] = _norm(model.ln_f, d)[1]
    readout = model.embed.weight if model.unembed is None else model.unembed.weight
    out["head.weight"] = readout / model.width_mult
    return out


def native_bridge(model: GPT, tokenizer):
    """A TransformerBridge over TransformerLens's native architecture holding `model`'s
    weights: the route for every variant, including those no HF layout represents."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources import build_bridge_from_module
    from transformer_lens.model_bridge.sources.native import NativeModel

    cfg = model.cfg
    tl_cfg = TransformerBridgeConfig.from_dict({
        "d_model": cfg.d_model, "d_head": cfg.d_head, "n_layers": cfg.n_layers,
        "n_ctx": cfg.n_ctx, "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab, "d_mlp": cfg.d_mlp,
        "act_fn": cfg.act, "eps": 1e-5, "attn_only": cfg.attn_only,
        "normalization_type": {"layernorm": "LN", "rmsnorm": "RMS", "none": None}[cfg.norm],
        "positional_embedding_type": "rotary" if cfg.pos == "rotary" else "standard",
        "rotary_base": 10_000, "tokenizer_prepends_bos": False, "init_weights": False,
        "architecture": "TransformerLensNative",
    })
    native = NativeModel(tl_cfg)
    tensors = {k: v.detach().float().cpu() for k, v in native_tensors(model).items()}
    missing, unexpected = native.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weight names do not match the native model: missing {missing}, "
                           f"unexpected {unexpected}")
    return build_bridge_from_module(native.eval(), "TransformerLensNative", tl_config=tl_cfg,
                                    tokenizer=tokenizer, model_name="phaselab").eval()


def to_bridge(model: GPT, vocab: list[str] | None = None, sep: str = " "):
    """A TransformerLens TransformerBridge computing `model`'s logits, hook names and attention
    patterns: over the exported HF model where a layout represents the variant, else over
    TransformerLens's native architecture. `vocab` (default: the token ids) makes its tokenizer.
    (TransformerLens's `hook_embed` is the token embedding alone; phaselab's adds the learned
    positions, which TransformerLens records as `hook_pos_embed`.)"""
    from transformer_lens.model_bridge import TransformerBridge

    tok = tokenizer(vocab or [str(i) for i in range(model.cfg.d_vocab)], sep if vocab else " ")
    try:
        layout(model.cfg)
    except ValueError:
        return native_bridge(model, tok)
    hf = to_hf(model)
    hf.config._attn_implementation = "eager"  # the bridge records patterns from eager attention
    # The bridge reads the config from a path (a name would be looked up on the Hub).
    with tempfile.TemporaryDirectory() as tmp:
        hf.config.save_pretrained(tmp)
        return TransformerBridge.boot_transformers(
            tmp, hf_model=hf, tokenizer=tok, device="cpu", dtype=torch.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.export", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (holding .hydra/ and checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: last)")
    parser.add_argument("--to", choices=["hf"], required=True, help="export format")
    parser.add_argument("out_dir", help="the directory to write")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run_dir, args.out_dir, args.step)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    except ModuleNotFoundError as e:  # transformers, tokenizers: the interop extra
        parser.exit(2, f"error: {e.name} is not installed; export needs the interop extra: "
                       f"pip install -e '.[interop]'\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
