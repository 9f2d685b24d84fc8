"""Tests for models/hooks.py: hook points on the GPT, ablation and activation patching."""

import pytest
import torch
from test_models import build, tokens, variants

from models import hooks


def identity(x):
    return x


@variants
def test_identity_hooks_give_bitwise_the_same_logits(overrides):
    model = build(**overrides).eval()
    x = tokens()
    names = model.hook_names()
    # Every point but the pattern leaves attention in SDPA: bitwise the plain forward.
    fused = {name: identity for name in names if not name.endswith("hook_pattern")}
    assert torch.equal(model(x, hooks=fused), model(x))
    # A hooked pattern computes attention explicitly, as cache=True does: bitwise that path.
    every = dict.fromkeys(names, identity)
    assert torch.equal(model(x, hooks=every), model(x, cache=True)[0])
    torch.testing.assert_close(model(x, hooks=every), model(x), atol=1e-5, rtol=0)
    assert torch.equal(model(x, hooks={}), model(x))


@variants
def test_cache_records_every_hook_point_after_its_hook(overrides):
    model = build(**overrides).eval()
    x = tokens()
    _, cache = model(x, cache=True)
    assert list(cache) == model.hook_names()
    B, T, H, D = *x.shape, model.cfg.n_heads, model.cfg.d_head
    assert cache["blocks.0.attn.hook_z"].shape == (B, T, H, D)
    assert cache["blocks.0.hook_attn_out"].shape == (B, T, model.cfg.d_model)
    assert ("blocks.0.hook_mlp_out" in cache) == (not model.cfg.attn_only)
    name = "blocks.0.hook_attn_out"
    _, hooked = model(x, cache=True, hooks={name: lambda a: 2 * a})
    torch.testing.assert_close(hooked[name], 2 * cache[name])


def test_unknown_hook_name_lists_the_allowed_ones():
    model = build(attn_only=True, n_layers=1)
    with pytest.raises(ValueError, match=r"blocks\.3\.hook_z.*blocks\.0\.attn\.hook_z") as e:
        model(tokens(), hooks={"blocks.3.hook_z": identity})
    assert "hook_mlp_out" not in str(e.value)  # attn_only: no MLP point


def test_hook_returning_another_shape_is_refused():
    with pytest.raises(ValueError, match="hook_embed.*shape"):
        build()(tokens(), hooks={"hook_embed": lambda x: x[:, :1]})


def test_hooks_cannot_run_with_a_kv_cache():
    from models.gpt import KVCache

    with pytest.raises(ValueError, match="past"):
        build()(tokens(), past=KVCache(12), hooks={"hook_embed": identity})


@pytest.mark.parametrize("bias", [True, False])
def test_zero_ablating_every_head_of_a_layer_equals_zeroing_its_output_projection(bias):
    model = build(bias=bias, pos="rotary").eval()
    x = tokens()
    heads = [(1, h) for h in range(model.cfg.n_heads)]
    ablated = model(x, hooks=hooks.ablate_heads(heads))
    assert not torch.allclose(ablated, model(x))
    with torch.no_grad():
        model.blocks[1].attn.out.weight.zero_()
    torch.testing.assert_close(ablated, model(x), atol=1e-6, rtol=0)


def test_ablating_one_head_changes_only_that_head():
    model = build().eval()
    x = tokens()
    _, clean = model(x, cache=True)
    _, cache = model(x, cache=True, hooks=hooks.ablate_heads([(0, 1)]))
    z = cache["blocks.0.attn.hook_z"]
    assert (z[:, :, 1] == 0).all()
    assert torch.equal(z[:, :, [0, 2, 3]], clean["blocks.0.attn.hook_z"][:, :, [0, 2, 3]])


def test_mean_ablation_writes_the_heads_mean_over_the_reference():
    model = build().eval()
    _, reference = model(tokens(batch=8, seed=1), cache=True)
    mean = reference["blocks.1.attn.hook_z"][:, :, 2].mean(dim=(0, 1))  # [D]
    _, cache = model(tokens(), cache=True, hooks=hooks.ablate_heads([(1, 2)], means=reference))
    z = cache["blocks.1.attn.hook_z"]
    torch.testing.assert_close(z[:, :, 2], mean.expand_as(z[:, :, 2]))


def test_patching_a_clean_activation_restores_the_clean_logits_at_that_position():
    model = build(pos="rotary").eval()
    clean_x = tokens()
    corrupt_x = clean_x.clone()
    corrupt_x[:, 3] = (clean_x[:, 3] + 1) % 16
    clean, cache = model(clean_x, cache=True)
    corrupt = model(corrupt_x)
    last = model.cfg.n_layers - 1
    # The last block's residual output at position 3 alone decides the logits there.
    patched = model(corrupt_x, hooks=hooks.patch(cache, f"blocks.{last}.hook_resid_post", [3]))
    torch.testing.assert_close(patched[:, 3], clean[:, 3], atol=1e-6, rtol=0)
    assert not torch.allclose(corrupt[:, 3], clean[:, 3], atol=1e-3)
    assert torch.equal(patched[:, 4:], corrupt[:, 4:])  # later positions kept the corrupt run's
    # Patching the embedding at the corrupted position undoes the corruption everywhere.
    whole = model(corrupt_x, hooks=hooks.patch(cache, "hook_embed", [3]))
    torch.testing.assert_close(whole, clean, atol=1e-5, rtol=0)


def test_patching_one_head_of_the_pattern_and_of_z():
    model = build().eval()
    x = tokens()
    _, cache = model(x, cache=True)
    other = tokens(seed=5)
    _, patched = model(other, cache=True, hooks=hooks.compose(
        hooks.patch(cache, "blocks.0.attn.hook_pattern", heads=[2]),
        hooks.patch(cache, "blocks.1.attn.hook_z", positions=[0, 5], heads=[1])))
    pattern = patched["blocks.0.attn.hook_pattern"]
    assert torch.equal(pattern[:, 2], cache["blocks.0.attn.hook_pattern"][:, 2])
    z, z_clean = patched["blocks.1.attn.hook_z"], cache["blocks.1.attn.hook_z"]
    assert torch.equal(z[:, [0, 5], 1], z_clean[:, [0, 5], 1])
    assert not torch.allclose(z[:, [1, 2], 1], z_clean[:, [1, 2], 1])
    assert not torch.allclose(z[:, [0, 5], 0], z_clean[:, [0, 5], 0])
    with pytest.raises(ValueError, match="heads"):
        hooks.patch(cache, "hook_embed", heads=[0])


def test_compose_runs_hooks_on_one_point_in_order():
    fns = hooks.compose({"hook_embed": lambda x: x + 1}, {"hook_embed": lambda x: 2 * x})
    assert fns["hook_embed"](torch.zeros(1)).item() == 2.0


def test_hooks_keep_gradients_flowing():
    model = build()
    loss = model(tokens(), hooks=hooks.ablate_heads([(0, 0)])).sum()
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
