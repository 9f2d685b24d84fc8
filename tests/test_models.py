"""Tests for models/: the GPT's forward paths, counts, init, muP, ladder and checkpoints."""

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from models import (
    GPT,
    GPTConfig,
    count_params,
    flops_per_token,
    ladder,
    load_model,
    read_metadata,
    save_model,
)
from models.gpt import KVCache
from models.ladder import ladder_table

V, CTX = 16, 12


def small(**overrides) -> GPTConfig:
    fields = {"d_vocab": V, "n_ctx": CTX, "d_model": 32, "n_layers": 2, "n_heads": None,
              "d_head": 8}
    return GPTConfig(**{**fields, **overrides})


def build(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(small(**overrides))


def tokens(batch: int = 3, length: int = CTX, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# Variants every structural test runs over: positions, norms, blocks, embeddings, biases, muP.
VARIANTS = {
    "default": {},
    "rotary": {"pos": "rotary"},
    "no_pos": {"pos": "none"},
    "rmsnorm_tied": {"norm": "rmsnorm", "tie_embeddings": True},
    "no_norm_relu": {"norm": "none", "act": "relu", "n_layers": 1},
    "attn_only": {"attn_only": True, "norm": "none"},
    "no_bias_heads": {"bias": False, "n_heads": 2},
    "mup": {"parametrization": "mup", "mup_base_width": 16, "pos": "rotary"},
}
variants = pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())


# --- configs -------------------------------------------------------------------------------


def test_nanda_grokking_model_is_expressible():
    # Nanda et al. 2023: 1 layer, d_model 128, 4 heads, d_mlp 512, ReLU, no LayerNorm, n_ctx 3.
    cfg = GPTConfig(d_vocab=114, n_ctx=3, d_model=128, n_layers=1, n_heads=4, d_mlp=512)
    model = GPT(dataclasses.replace(cfg, act="relu", norm="none", bias=False))
    assert model.cfg.d_head == 32
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert 220_000 < model.num_params() < 235_000  # "~227k parameters" (conf/model/nanda.yaml)
    assert model(torch.zeros(2, 3, dtype=torch.long)).shape == (2, 3, 114)


@pytest.mark.parametrize("norm", ["none", "layernorm"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_olsson_attention_only_models_have_no_mlp(norm, n_layers):
    model = build(attn_only=True, norm=norm, n_layers=n_layers)
    assert all(block.mlp is None for block in model.blocks)
    assert not any("mlp" in name for name, _ in model.named_parameters())
    assert model(tokens()).shape == (3, CTX, V)


def test_resolved_fills_head_and_mlp_sizes():
    by_d_head = GPTConfig(d_model=128, n_heads=None, d_head=32).with_derived_sizes()
    assert (by_d_head.n_heads, by_d_head.d_head, by_d_head.d_mlp) == (4, 32, 512)
    by_n_heads = GPTConfig(d_model=128, n_heads=8, d_mlp=300).with_derived_sizes()
    assert (by_n_heads.n_heads, by_n_heads.d_head, by_n_heads.d_mlp) == (8, 16, 300)
    assert by_n_heads.with_derived_sizes() == by_n_heads


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"d_model": 100, "n_heads": 3}, "model.n_heads"),
        ({"d_model": 100, "d_head": 32}, "model.d_head"),
        ({"act": "swish"}, "model.act"),
        ({"norm": "batchnorm"}, "model.norm"),
        ({"pos": "alibi"}, "model.pos"),
        ({"parametrization": "ntk"}, "model.parametrization"),
        ({"d_model": 0}, "model.d_model"),
        ({"n_layers": -1}, "model.n_layers"),
        ({"n_heads": 0}, "model.n_heads"),
        ({"d_mlp": 0}, "model.d_mlp"),
        ({"d_vocab": 0}, "model.d_vocab"),
        ({"n_ctx": -3}, "model.n_ctx"),
        ({"init_std": 0.0}, "model.init_std"),
        ({"mup_base_width": 0}, "model.mup_base_width"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"dropout": -0.1}, "model.dropout"),
        ({"pos": "rotary", "d_model": 36, "n_heads": 4}, "model.pos"),
        ({"d_vocab": None}, "model.d_vocab"),
        ({"n_ctx": None}, "model.n_ctx"),
    ],
)
def test_bad_config_raises_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        GPT(small(**overrides))


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ValueError, match="gelu, relu"):
        GPTConfig(act="swish").validate()


def test_config_is_a_hydra_schema():
    schema = OmegaConf.structured(GPTConfig)
    merged = OmegaConf.merge(schema, OmegaConf.create({"d_model": 64, "pos": "rotary"}))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, GPTConfig) and cfg.d_model == 64 and cfg.d_vocab is None
    with pytest.raises(Exception, match="d_modl"):
        OmegaConf.merge(schema, OmegaConf.create({"d_modl": 64}))


# --- forward paths -------------------------------------------------------------------------


@variants
def test_logits_never_depend_on_later_tokens(overrides):
    model = build(**overrides).eval()
    x = tokens()
    for t in (0, 4, CTX - 2):
        changed = x.clone()
        changed[:, t + 1 :] = (x[:, t + 1 :] + 1) % V
        torch.testing.assert_close(model(changed)[:, : t + 1], model(x)[:, : t + 1])
        assert not torch.allclose(model(changed)[:, t + 1 :], model(x)[:, t + 1 :])


@variants
def test_cache_records_patterns_and_matches_fast_path(overrides):
    model = build(**overrides).eval()
    x = tokens()
    logits, cache = model(x, cache=True)
    # float32, explicit softmax vs SDPA: agreement to 1e-5 absolute
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=0)
    n_layers, H = model.cfg.n_layers, model.cfg.n_heads
    assert list(cache) == model.hook_names()  # tests/test_hooks.py checks the points themselves
    for i in range(n_layers):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"]
        assert pattern.shape == (3, H, CTX, CTX)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(3, H, CTX))
        assert (pattern.triu(diagonal=1) == 0).all()
        assert cache[f"blocks.{i}.hook_resid_post"].shape == (3, CTX, model.cfg.d_model)
    embed = model.embed(x) + (0 if model.pos_embed is None else model.pos_embed.weight[:CTX])
    torch.testing.assert_close(cache["hook_embed"], embed)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], embed)


@variants
def test_start_equals_slicing_full_logits(overrides):
    model = build(**overrides).eval()
    x = tokens()
    full = model(x)
    for start in (1, 5, CTX - 1):
        torch.testing.assert_close(model(x, start=start), full[:, start:], atol=1e-5, rtol=0)
        sliced, _ = model(x, cache=True, start=start)
        torch.testing.assert_close(sliced, full[:, start:], atol=1e-5, rtol=0)


def test_start_gradients_match_slicing():
    model = build(pos="rotary")
    x = tokens()
    model(x, start=7).sum().backward()
    fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x)[:, 7:].sum().backward()
    for a, p in zip(fast, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def test_bad_lengths_raise():
    model = build()
    with pytest.raises(ValueError, match="model.n_ctx"):
        model(tokens(length=CTX + 1))
    with pytest.raises(ValueError, match="start"):
        model(tokens(), start=CTX)


# --- incremental decoding ------------------------------------------------------------------

# Positions (learned, rotary, none), attention-only and depth, on top of the structural variants.
DECODING = {
    **VARIANTS,
    "one_layer": {"n_layers": 1},
    "rotary_3_layers": {"pos": "rotary", "n_layers": 3},
    "attn_only_rotary_3_layers": {"attn_only": True, "pos": "rotary", "n_layers": 3},
}


def greedy(model: GPT, prompt: torch.Tensor, steps: int, kv_cache: bool):
    """Greedy continuation of prompt [B, P]: (tokens [B, steps], logits [B, steps, V]), either
    one position per step from a KVCache or by re-running the whole prefix every step."""
    seq, new, logits = prompt, prompt, []
    past = KVCache(CTX) if kv_cache else None
    for _ in range(steps):
        last = model(seq)[:, -1] if past is None else model(new, past=past)[:, -1]
        new = last.argmax(-1, keepdim=True)
        seq, logits = torch.cat([seq, new], dim=1), [*logits, last]
    return seq[:, prompt.shape[1] :], torch.stack(logits, dim=1)


@pytest.mark.parametrize("overrides", DECODING.values(), ids=DECODING.keys())
def test_kv_cache_greedy_decoding_matches_full_recompute(overrides):
    # init_scale 3: logits that depend clearly on position and context, so that a wrong
    # position offset or a stale key shows in the logits and the greedy tokens.
    model = build(init_scale=3.0, **overrides).eval()
    prompt = tokens(batch=16, length=3)
    with torch.no_grad():
        cached, cached_logits = greedy(model, prompt, CTX - 3, kv_cache=True)
        full, full_logits = greedy(model, prompt, CTX - 3, kv_cache=False)
    assert len(full.unique(dim=0)) > 1  # the continuations depend on the prompt
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=0)


@variants
def test_kv_cache_chunks_with_start_and_crop_match_one_pass(overrides):
    model = build(init_scale=3.0, **overrides).eval()
    x = tokens()
    full = model(x)
    # An empty cache's pass is the plain forward (what evaluate's teacher-forced pass relies on).
    assert torch.equal(model(x, start=3, past=KVCache(CTX)), model(x, start=3))
    past = KVCache(CTX)
    close = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(model(x[:, :7], start=3, past=past), full[:, 3:7], **close)
    torch.testing.assert_close(model(x[:, 7:10], past=past), full[:, 7:10], **close)
    past.crop(8)  # positions 8, 9 are written again
    torch.testing.assert_close(model(x[:, 8:11], start=1, past=past), full[:, 9:11], **close)
    torch.testing.assert_close(model(x[:, 11:], past=past), full[:, 11:], **close)
    assert past.len == CTX


def test_kv_cache_refuses_to_outgrow_n_ctx_or_record_hooks():
    model = build().eval()
    past = KVCache(CTX)
    model(tokens(length=CTX - 1), past=past)
    with pytest.raises(ValueError, match=f"{CTX - 1} cached positions .* model.n_ctx={CTX}"):
        model(tokens(length=2), past=past)
    model(tokens(length=1), past=past)  # exactly full
    with pytest.raises(ValueError, match="model.n_ctx"):
        model(tokens(length=1), past=past)
    with pytest.raises(ValueError, match="length 4"):
        model(tokens(length=5), past=KVCache(4))
    with pytest.raises(ValueError, match="past"):
        model(tokens(), cache=True, past=KVCache(CTX))
    with pytest.raises(ValueError, match="crop"):
        past.crop(CTX + 1)


def test_dropout_is_active_in_training_only():
    model = build(dropout=0.5)
    x = tokens()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


# --- counts --------------------------------------------------------------------------------


@variants
def test_param_counts_equal_numel_and_analytic(overrides):
    model = build(**overrides)
    numel = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel()
    embedding += 0 if model.pos_embed is None else model.pos_embed.weight.numel()
    embedding += 0 if model.unembed is None else model.unembed.weight.numel()
    assert model.num_params() == numel == count_params(model.cfg)["total"]
    assert model.num_params(non_embedding=True) == numel - embedding
    assert count_params(model.cfg)["non_embedding"] == numel - embedding
    cfg = model.cfg
    kaplan = 6 * (numel - embedding) + 6 * cfg.n_layers * cfg.n_ctx * cfg.d_model
    assert model.flops_per_token() == flops_per_token(cfg) == kaplan


def test_kaplan_approximation_holds_for_wide_models():
    # N ~ 12 n_layers d_model^2 with d_mlp = 4 d_model (Kaplan et al. 2020).
    cfg = GPTConfig(d_vocab=V, n_ctx=CTX, d_model=512, n_layers=4, n_heads=None)
    assert count_params(cfg)["non_embedding"] == pytest.approx(12 * 4 * 512**2, rel=0.01)


def test_ladder_grid_and_table():
    rungs = ladder(d_vocab=15, n_ctx=16)
    assert len(rungs) == 20
    assert [(c.d_model, c.n_layers) for c in rungs[3:5]] == [(32, 8), (64, 1)]
    resolved = [c.with_derived_sizes() for c in rungs]
    assert all(c.d_head == 32 and c.d_mlp == 4 * c.d_model for c in resolved)
    for cfg in ladder((32, 64), (1, 2), d_vocab=15, n_ctx=16, pos="rotary"):
        assert GPT(cfg).num_params() == count_params(cfg)["total"]
    with pytest.raises(ValueError, match="model.d_model"):
        ladder(d_model=64)
    doc = Path(__file__).parents[1] / "docs" / "ladder.md"
    assert doc.read_text() == ladder_table(), "regenerate: python -m models > docs/ladder.md"


# --- init, parametrization and optimizer groups --------------------------------------------


def test_same_seed_same_weights():
    a, b, c = build(seed=1), build(seed=1), build(seed=2)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q), name
        assert name.endswith("bias") or p.ndim == 1 or not torch.equal(p, r), name


def test_standard_init_follows_gpt2():
    model = build(d_model=256, n_layers=4, d_head=32, init_std=0.02)
    block = model.blocks[0]
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert (block.mlp.fc.bias == 0).all() and (block.ln1.weight == 1).all()


def test_init_scale_multiplies_every_weight():
    base, scaled = build(seed=3), build(seed=3, init_scale=0.5)
    for p, q in zip(base.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(q, 0.5 * p)


def test_mup_init_shrinks_hidden_but_not_embeddings():
    model = build(d_model=512, d_head=32, parametrization="mup", mup_base_width=32)
    std = model.blocks[0].attn.qkv.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(512 / 32), rel=0.05)
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("parametrization", ["standard", "mup"])
@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_param_groups_cover_every_parameter_once(parametrization, decay_embeddings):
    model = build(d_model=64, parametrization=parametrization, mup_base_width=16)
    groups = model.param_groups(lr=1e-3, weight_decay=0.1, decay_embeddings=decay_embeddings)
    by_name = {g["name"]: g for g in groups}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    hidden_lr = 1e-3 / 4 if parametrization == "mup" else 1e-3
    assert by_name["hidden"]["lr"] == pytest.approx(hidden_lr)
    assert all(g["lr"] == 1e-3 for g in groups if g["name"] != "hidden")
    assert by_name["no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in by_name["no_decay"]["params"])
    assert model.embed.weight in by_name["embedding"]["params"]
    assert by_name["embedding"]["weight_decay"] == (0.1 if decay_embeddings else 0.0)
    assert by_name["hidden"]["weight_decay"] == by_name["readout"]["weight_decay"] == 0.1
    torch.optim.AdamW(groups)  # accepts the extra "name" key


def _rms_after_adam_steps(parametrization: str, width: int) -> float:
    torch.manual_seed(0)
    cfg = GPTConfig(
        d_vocab=32, n_ctx=8, d_model=width, n_layers=2, n_heads=None,
        parametrization=parametrization, mup_base_width=32,
    )  # fmt: skip
    model = GPT(cfg)
    optimizer = torch.optim.AdamW(model.param_groups(lr=1e-2, weight_decay=0.0))
    seq = torch.randint(0, 32, (4, 9), generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        loss = F.cross_entropy(model(seq[:, :-1]).flatten(0, 1), seq[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return model(seq[:, :-1]).pow(2).mean().sqrt().item()


def test_mup_coordinate_check():
    # Yang et al. 2022's coordinate check: after 5 AdamW steps at lr 1e-2, logit RMS across
    # widths 32..512. Measured: standard 0.48, 0.79, 1.38, 2.20, 3.67 (7.7x); muP 0.48, 0.43,
    # 0.42, 0.40, 0.40 (1.2x).
    widths = [32, 64, 128, 256, 512]
    standard = [_rms_after_adam_steps("standard", w) for w in widths]
    mup = [_rms_after_adam_steps("mup", w) for w in widths]
    assert max(mup) / min(mup) < 2
    assert standard[-1] / standard[0] > 4
    assert all(a < b for a, b in zip(standard, standard[1:], strict=False))


# --- training ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{"pos": "learned"}, {"pos": "rotary"}, {"pos": "none"}, {"attn_only": True, "norm": "none"}],
    ids=["learned", "rotary", "no_pos", "attn_only"],
)
def test_loss_falls_on_a_learnable_pattern(overrides):
    # Counting sequences (each token is the previous plus 3, mod V) from random starts.
    model = build(**overrides)
    optimizer = torch.optim.AdamW(model.param_groups(lr=1e-2, weight_decay=0.0))
    starts = torch.randint(0, V, (32, 1), generator=torch.Generator().manual_seed(0))
    seq = (starts + 3 * torch.arange(CTX + 1)) % V
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(seq[:, :-1]).flatten(0, 1), seq[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


# --- checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "pos": "rotary"}])
def test_save_load_round_trip(tmp_path, overrides):
    model = build(**overrides)
    path = tmp_path / "step_1" / "model.safetensors"
    save_model(model, path, {"step": 100, "task": {"kind": "modular"}})
    loaded, meta = load_model(path, expect=small(**overrides))
    assert loaded.cfg == model.cfg
    assert meta["step"] == 100 and meta["task"] == {"kind": "modular"}
    assert read_metadata(path)["config"] == dataclasses.asdict(model.cfg)
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    torch.testing.assert_close(loaded(tokens()), model(tokens()), atol=0, rtol=0)
    assert [f.name for f in path.parent.iterdir()] == ["model.safetensors"]


def test_load_with_different_expected_config_names_the_field(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(build(d_model=32), path)
    with pytest.raises(ValueError, match=rf"{path}.*d_model 32 != 64"):
        load_model(path, expect=small(d_model=64))
    load_model(path, expect=small(d_vocab=None, n_ctx=None))  # unset task sizes are not checked


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_unreadable_checkpoint_raises_naming_the_path(tmp_path, damage):
    path = tmp_path / "model.safetensors"
    save_model(build(), path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    else:
        path.unlink()
    with pytest.raises(ValueError, match=str(path)):
        load_model(path)
    with pytest.raises(ValueError, match=str(path)):
        read_metadata(path)


def test_reserved_metadata_key_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="config"):
        save_model(build(), tmp_path / "m.safetensors", {"config": {}})


# --- compilation and accelerators ----------------------------------------------------------


@pytest.mark.slow
def test_torch_compile_matches_eager():
    # ~20-30 s of compilation on 2 CPU cores, hence slow.
    model = build(pos="rotary").eval()
    compiled = torch.compile(model)
    x = tokens()
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled(x, start=5), model(x)[:, 5:], atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@variants
def test_bf16_autocast_on_cuda(overrides):
    model = build(**overrides).cuda()
    x = tokens().cuda()
    reference = model(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x, start=4)
        cached, _ = model(x, cache=True)
    logits.float().sum().backward()
    torch.testing.assert_close(logits.float(), reference[:, 4:], atol=0.1, rtol=0.05)
    torch.testing.assert_close(cached.float(), reference, atol=0.1, rtol=0.05)


# Each package, and what of the project it may import: models/ and tasks/ nothing, analysis/
# those two, train/ all three.
MAY_IMPORT = {"models": set(), "tasks": set(), "analysis": {"models", "tasks"},
              "train": {"models", "tasks", "analysis"}}


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_point_one_way(package):
    root = Path(__file__).resolve().parents[1]
    found = set()
    for path in (root / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(path.name, a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add((path.name, node.module.split(".")[0]))
    wrong = sorted((f, m) for f, m in found if m in MAY_IMPORT and m != package
                   and m not in MAY_IMPORT[package])
    assert not wrong, f"{package}/ imports {wrong}"
