"""Export to Hugging Face transformers, and the tools that open it (TransformerLens, nnsight):
logits and attention patterns equal phaselab's on tiny random models of every variant that
maps; a variant that does not is refused naming the field. The command line exports what
`python -m train` wrote."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from experiment_runs import ROOT, train

from analysis.runs import find_runs
from models import GPT, GPTConfig, load_model, save_model
from models.hooks import hook_names

if "interop" in os.environ.get("PHASELAB_EXTRAS", ""):
    import transformers  # installed with the extra, so its absence is a failure
else:
    transformers = pytest.importorskip(
        "transformers", reason='needs the interop extra: pip install -e ".[interop]"')
from analysis.export import export_hf, export_run, layout, to_bridge  # noqa: E402

VOCAB = [str(i) for i in range(10)] + ["+", "=", "ab"]
BASE = dict(d_vocab=len(VOCAB), n_ctx=12, d_model=32, n_layers=2, d_head=8, d_mlp=48)
# Every switch that maps, each away from the default once, over both layouts.
VARIANTS = {
    "gpt2": {},
    "gpt2-nopos": {"pos": "none"},
    "gpt2-nobias": {"bias": False},
    "gpt2-tied": {"tie_embeddings": True},
    "gpt2-attn_only": {"attn_only": True},
    "gpt2-relu": {"act": "relu"},
    "gpt2-mup": {"parametrization": "mup", "mup_base_width": 8},
    "gpt2-mup-tied": {"parametrization": "mup", "mup_base_width": 8, "tie_embeddings": True},
    "llama": {"norm": "rmsnorm", "pos": "rotary"},
    "llama-nobias": {"norm": "rmsnorm", "pos": "rotary", "bias": False},
    "llama-tied": {"norm": "rmsnorm", "pos": "rotary", "tie_embeddings": True},
    "llama-attn_only": {"norm": "rmsnorm", "pos": "rotary", "attn_only": True},
    "llama-relu-nobias": {"norm": "rmsnorm", "pos": "rotary", "act": "relu", "bias": False},
    "llama-mup": {"norm": "rmsnorm", "pos": "rotary", "parametrization": "mup",
                  "mup_base_width": 8},
}
REFUSED = {  # variant -> the field the error must name
    "norm-none": ({"norm": "none"}, "model.norm"),
    "layernorm-rotary": ({"pos": "rotary"}, "model.pos"),
    "rmsnorm-learned": ({"norm": "rmsnorm"}, "model.pos"),
    "rmsnorm-nopos": ({"norm": "rmsnorm", "pos": "none"}, "model.pos"),
}


def tiny_model(tmp_path, **overrides) -> GPT:
    """A random model, every weight (gains and biases too) perturbed so that none is at its
    init value, round-tripped through phaselab's checkpoint writer and reader."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**BASE | overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_model(model, tmp_path / "model.safetensors")
    return load_model(tmp_path / "model.safetensors")[0].eval()


def tokens(model: GPT) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (3, model.cfg.n_ctx),
                         generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_hf_export_logits_equal_phaselab(tmp_path, variant):
    model = tiny_model(tmp_path, **VARIANTS[variant])
    assert layout(model.cfg) == variant.split("-")[0]
    out = export_hf(model, tmp_path / "hf", VOCAB)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = tokens(model)
    with torch.no_grad():
        want, got = model(x), hf(x).logits
    assert (got - want).abs().max() < 1e-4
    assert want.std() > 0.1  # logits that vary, so the comparison means something


@pytest.mark.parametrize("variant", REFUSED)
def test_unmappable_variant_is_refused_naming_the_field(tmp_path, variant):
    overrides, field = REFUSED[variant]
    model = GPT(GPTConfig(**BASE | overrides))
    with pytest.raises(ValueError, match=field):
        export_hf(model, tmp_path / "hf", VOCAB)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("sep", ["", " "])
def test_tokenizer_covers_the_task_vocabulary(tmp_path, sep):
    out = export_hf(tiny_model(tmp_path), tmp_path / "hf", VOCAB, sep)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = sep.join(["1", "ab", "+", "2", "="])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == [VOCAB.index(s) for s in ["1", "ab", "+", "2", "="]]
    assert tok.decode(ids) == text


@pytest.mark.parametrize("variant", [*VARIANTS, *REFUSED])
def test_transformer_lens_bridge_equals_phaselab(tmp_path, variant):
    """Every variant, the unexportable ones through TransformerLens's native architecture."""
    pytest.importorskip("transformer_lens", reason='needs the interop extra')
    overrides = VARIANTS[variant] if variant in VARIANTS else REFUSED[variant][0]
    model = tiny_model(tmp_path, **overrides)
    x = tokens(model)
    with torch.no_grad():
        want, cache = model(x, cache=True)
        logits, bridge_cache = to_bridge(model).run_with_cache(x)
    assert (logits - want).abs().max() < 1e-4
    names = [name for name in cache if name != "hook_embed"]  # TL's is the token embedding only
    assert names == hook_names(model.cfg.n_layers, model.cfg.attn_only)[1:]
    for name in names:
        assert (bridge_cache[name] - cache[name]).abs().max() < 1e-4, name


def test_nnsight_reads_phaselab_patterns(tmp_path):
    """nnsight opens the HF export (attention patterns) and wraps phaselab's module itself."""
    nnsight = pytest.importorskip("nnsight", reason='needs the interop extra')
    model = tiny_model(tmp_path)
    x = tokens(model)
    with torch.no_grad():
        _, cache = model(x, cache=True)
    lm = nnsight.TransformersModel(str(export_hf(model, tmp_path / "hf", VOCAB)),
                                   task="text-generation", attn_implementation="eager",
                                   dispatch=True)
    with torch.no_grad(), lm.trace(x):
        pattern = lm.transformer.h[1].attn.output[1].save()
    assert (pattern - cache["blocks.1.attn.hook_pattern"]).abs().max() < 1e-5
    wrapped = nnsight.NNsight(model)
    with torch.no_grad(), wrapped.trace(x):
        resid = wrapped.blocks[0].output.save()
    assert (resid - cache["blocks.0.hook_resid_post"]).abs().max() < 1e-6


def export_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.export", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_exports_a_trained_run_that_transformers_opens(demo_dir, tmp_path):
    """`python -m analysis.export RUN --step N --to hf OUT` on a run that `python -m train` wrote:
    transformers' Auto classes give the checkpoint's logits and the task's tokens."""
    (run,) = find_runs(demo_dir)
    assert run.checkpoints() == [0, 10, 20]
    done = export_cli(str(run.path), "--step", "10", "--to", "hf", str(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model, task = run.load_model(step=10), run.task()
    x = task.eval_set().tokens
    with torch.no_grad():
        want, got = model(x), hf(x).logits
    assert (got - want).abs().max() < 1e-4
    assert not torch.equal(want, run.load_model(step=20)(x))  # --step chose the checkpoint
    assert tok.convert_ids_to_tokens(list(range(len(task.vocab)))) == task.vocab
    for row in x:  # the eval set's text tokenizes back to its tokens (pad tokens aside)
        kept = [t for t in row.tolist() if t != task.pad_token]
        text = task.decode(row)
        assert tok(text, add_special_tokens=False)["input_ids"] == kept
        assert tok.decode(kept) == text


def test_cli_refuses_an_unmappable_run_naming_the_field(tmp_path):
    (run,) = train(tmp_path / "run", "demo", "hydra/launcher=basic", "model.d_model=8", "seed=0",
                   "model.norm=none", "train.steps=1", "task.eval_size=8", sweep=True)
    done = export_cli(str(run.path), "--to", "hf", str(tmp_path / "hf"))
    assert done.returncode != 0 and "model.norm" in done.stderr
    assert not (tmp_path / "hf").exists()


def test_exporting_an_ensemble_directory_points_to_its_members(tmp_path):
    for i in (0, 1):
        (tmp_path / f"member_{i}" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match="ensemble.*member_0, member_1"):
        export_run(tmp_path, tmp_path / "hf")
