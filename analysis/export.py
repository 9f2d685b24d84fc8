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


def _halves_to_pairs(w: Tensor, n_heads: int) -> Tensor:
    """Reorder each head's rows of a query or key projection [H*D, ...] from rotary on halves
    (dims j, j + D/2 rotate together; phaselab, HF) to rotary on adjacent pairs (2j, 2j + 1;
    TransformerLens's native model). Queries and keys permuted alike leave the scores unchanged."""
    heads = w.unflatten(0, (n_heads, 2, -1))  # [H, half, D/2, ...]
    return heads.transpose(1, 2).flatten(0, 2)


def model_parts(model: GPT) -> dict[str, Tensor]:
    """The model's tensors under one naming, what every format's table reads: `embed`, `pos`
    (zeros without learned positions), `readout` (the embedding where tied), `ln_f.weight`,
    `ln_f.bias` and the gain scaled for the readout (`ln_f.weight/wm`, `ln_f.bias/wm`: the muP
    multiplier folded in), `readout/wm`."""
    cfg, d = model.cfg, model.cfg.d_model
    readout = model.embed.weight if model.unembed is None else model.unembed.weight
    parts = {"embed": model.embed.weight, "readout": readout,
             "readout/wm": readout / model.width_mult,
             "pos": model.pos_embed.weight if model.pos_embed is not None
             else torch.zeros(cfg.n_ctx, d)}
    if cfg.norm != "none":
        parts["ln_f.weight"], parts["ln_f.bias"] = _norm(model.ln_f, d)
        parts["ln_f.weight/wm"], parts["ln_f.bias/wm"] = _norm(model.ln_f, d, 1 / model.width_mult)
    return parts


def layer_parts(model: GPT, i: int) -> dict[str, Tensor]:
    """Layer i's tensors under one naming: `ln1.*`, `ln2.*`, `{q,k,v,o}.{weight,bias}`,
    `{fc,proj}.{weight,bias}`, zeros for absent biases; `{q,k}.*.pairs` for rotary on adjacent
    pairs. An attention-only block gets an MLP that adds nothing (unit norm, zero weights:
    act(0) = 0 for gelu and relu), for the layouts that always have one."""
    block, cfg, d = model.blocks[i], model.cfg, model.cfg.d_model
    w = attention_weights(model, i)
    parts = {}
    for name in "qkvo":
        parts[f"{name}.weight"], parts[f"{name}.bias"] = w[f"w{name}"], _or_zeros(w[f"b{name}"], d)
    for name in "qk":
        for kind in ("weight", "bias"):
            parts[f"{name}.{kind}.pairs"] = (_halves_to_pairs(parts[f"{name}.{kind}"], cfg.n_heads)
                                             if cfg.pos == "rotary" else parts[f"{name}.{kind}"])
    if block.mlp is None:
        parts["ln2.weight"], parts["ln2.bias"] = torch.ones(d), torch.zeros(d)
        fc, proj, fc_b, proj_b = torch.zeros(cfg.d_mlp, d), torch.zeros(d, cfg.d_mlp), None, None
    else:
        fc, proj = block.mlp.fc.weight, block.mlp.proj.weight
        fc_b, proj_b = block.mlp.fc.bias, block.mlp.proj.bias
        if cfg.norm != "none":
            parts["ln2.weight"], parts["ln2.bias"] = _norm(block.ln2, d)
    if cfg.norm != "none":
        parts["ln1.weight"], parts["ln1.bias"] = _norm(block.ln1, d)
    parts |= {"fc.weight": fc, "fc.bias": _or_zeros(fc_b, cfg.d_mlp), "proj.weight": proj,
              "proj.bias": _or_zeros(proj_b, d)}
    return parts


def _cat(*names: str, transpose: bool = False):
    """The parts `names` stacked (rows), transposed for a Conv1D's [in, out] weights."""
    def build(p: dict[str, Tensor]) -> Tensor:
        t = torch.cat([p[n] for n in names])
        return t.T if transpose else t
    return build


def _t(name: str):
    return lambda p: p[name].T


# Each format: (the model's names -> a part name or a function of the parts, the same per layer
# with `{i}` in the name). Only the names the target model has are written (`tensors`), so a
# bias a layout switches off is left out; a name it has that no entry fills fails loudly.
FORMATS = {
    "gpt2": ({"transformer.wte.weight": "embed", "transformer.wpe.weight": "pos",
              "transformer.ln_f.weight": "ln_f.weight/wm", "transformer.ln_f.bias": "ln_f.bias/wm",
              "lm_head.weight": "readout"},
             {"transformer.h.{i}.ln_1.weight": "ln1.weight",
              "transformer.h.{i}.ln_1.bias": "ln1.bias",
              "transformer.h.{i}.attn.c_attn.weight": _cat("q.weight", "k.weight", "v.weight",
                                                          transpose=True),  # Conv1D: [in, out]
              "transformer.h.{i}.attn.c_attn.bias": _cat("q.bias", "k.bias", "v.bias"),
              "transformer.h.{i}.attn.c_proj.weight": _t("o.weight"),
              "transformer.h.{i}.attn.c_proj.bias": "o.bias",
              "transformer.h.{i}.ln_2.weight": "ln2.weight",
              "transformer.h.{i}.ln_2.bias": "ln2.bias",
              "transformer.h.{i}.mlp.c_fc.weight": _t("fc.weight"),
              "transformer.h.{i}.mlp.c_fc.bias": "fc.bias",
              "transformer.h.{i}.mlp.c_proj.weight": _t("proj.weight"),
              "transformer.h.{i}.mlp.c_proj.bias": "proj.bias"}),
    # Llama's gated MLP down(act(gate(x)) * up(x)) is phaselab's with up(x) = 1.
    "llama": ({"model.embed_tokens.weight": "embed", "model.norm.weight": "ln_f.weight/wm",
               "lm_head.weight": "readout"},
              {"model.layers.{i}.input_layernorm.weight": "ln1.weight",
               **{f"model.layers.{{i}}.self_attn.{n}_proj.{kind}": f"{n}.{kind}"
                  for n in "qkvo" for kind in ("weight", "bias")},
               "model.layers.{i}.post_attention_layernorm.weight": "ln2.weight",
               "model.layers.{i}.mlp.gate_proj.weight": "fc.weight",
               "model.layers.{i}.mlp.gate_proj.bias": "fc.bias",
               "model.layers.{i}.mlp.up_proj.weight": lambda p: torch.zeros_like(p["fc.weight"]),
               "model.layers.{i}.mlp.up_proj.bias": lambda p: torch.ones_like(p["fc.bias"]),
               "model.layers.{i}.mlp.down_proj.weight": "proj.weight",
               "model.layers.{i}.mlp.down_proj.bias": "proj.bias"}),
    # TransformerLens's native model: rotary on adjacent pairs, the muP multiplier in the head.
    "native": ({"tok_embed.weight": "embed", "pos.weight": "pos", "ln_out.weight": "ln_f.weight",
                "ln_out.bias": "ln_f.bias", "head.weight": "readout/wm"},
               {"layers.{i}.ln1.weight": "ln1.weight", "layers.{i}.ln1.bias": "ln1.bias",
                "layers.{i}.ln2.weight": "ln2.weight", "layers.{i}.ln2.bias": "ln2.bias",
                **{f"layers.{{i}}.attn.{n}.{kind}": f"{n}.{kind}" + (".pairs" if n in "qk" else "")
                   for n in "qkvo" for kind in ("weight", "bias")},
                "layers.{i}.mlp.fc_in.weight": "fc.weight", "layers.{i}.mlp.fc_in.bias": "fc.bias",
                "layers.{i}.mlp.fc_out.weight": "proj.weight",
                "layers.{i}.mlp.fc_out.bias": "proj.bias"}),
}


@torch.no_grad()
def tensors(model: GPT, fmt: str, names) -> dict[str, Tensor]:
    """The state dict of format `fmt` computing `model`'s logits, for the target's `names`;
    raises naming those no entry of the table fills."""
    top, layer = FORMATS[fmt]
    table = {**top, **{name.format(i=i): source for i in range(model.cfg.n_layers)
                       for name, source in layer.items()}}
    if missing := [n for n in names if n not in table]:
        raise RuntimeError(f"weight names do not match the {fmt} layout: no entry for {missing}")
    parts = [model_parts(model), *(layer_parts(model, i) for i in range(model.cfg.n_layers))]
    found = {}
    for name in names:
        i = int(m.group(1)) + 1 if (m := re.search(r"(?:h|layers)\.(\d+)\.", name)) else 0
        source = table[name]
        found[name] = source(parts[i]) if callable(source) else parts[i][source]
    return {k: v.detach().float().cpu().contiguous() for k, v in found.items()}


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

    hf = AutoModelForCausalLM.from_config(hf_config(model.cfg), dtype=torch.float32)
    names = [k for k in hf.state_dict() if not k.endswith(".attn.bias")]  # GPT-2's causal mask
    hf.load_state_dict(tensors(model, kind, names), strict=False)
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
    native.load_state_dict(tensors(model, "native", native.state_dict()), strict=True)
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
