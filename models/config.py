"""GPTConfig: the model's hyperparameters, its validation and its derived sizes.

A plain dataclass of str/int/float/bool/None fields so Hydra's ConfigStore can use it as the
schema of `conf/model/`. `d_vocab` and `n_ctx` stay None in YAML and are filled from the task
before the model is built. Head sizes follow TransformerLens: set `n_heads` to fix the head
count (then `d_head = d_model / n_heads`, and the `d_head` field is ignored), or leave it None
to keep `d_head` fixed as width grows (then `n_heads = d_model / d_head`), as the ladder does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The allowed values of each string field, checked by `validate` (a short refusal naming the
# key and these values; an Enum under Hydra would refuse in a longer message of its own).
CHOICES = {"act": ("gelu", "relu"), "norm": ("layernorm", "rmsnorm", "none"),
           "pos": ("learned", "rotary", "none"), "parametrization": ("standard", "mup")}


@dataclass
class GPTConfig:
    d_vocab: int | None = None  # None = from the task
    n_ctx: int | None = None  # None = from the task
    d_model: int = 64
    n_layers: int = 2
    n_heads: int | None = 4  # fixed head count: d_head = d_model / n_heads
    d_head: int = 32  # used when n_heads is None: n_heads = d_model / d_head (the ladder)
    d_mlp: int | None = None  # None = 4 * d_model
    act: str = "gelu"  # gelu (exact erf form) | relu
    attn_only: bool = False  # no MLPs (Olsson et al. 2022's attention-only models)
    norm: str = "layernorm"  # layernorm | rmsnorm | none (none: no final norm either)
    pos: str = "learned"  # learned | rotary | none
    tie_embeddings: bool = False
    bias: bool = True  # biases of attention, MLP and LayerNorm (the unembedding has none)
    dropout: float = 0.0
    init_std: float = 0.02
    init_scale: float = 1.0  # multiplies every initial weight (Liu et al. 2023, Omnigrok)
    parametrization: str = "standard"  # standard | mup
    mup_base_width: int = 128  # muP: the d_model at which the width multiplier is 1

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (`model.<field>`) and the rule."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        positive = ["d_model", "n_layers", "d_head", "mup_base_width", "init_std", "init_scale"]
        optional = ("d_vocab", "n_ctx", "n_heads", "d_mlp")
        positive += [name for name in optional if getattr(self, name) is not None]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be positive")
        divisor = "n_heads" if self.n_heads is not None else "d_head"
        if self.d_model % getattr(self, divisor):
            raise ValueError(
                f"model.{divisor}={getattr(self, divisor)} must divide model.d_model={self.d_model}"
            )
        d_head = self.d_model // self.n_heads if self.n_heads is not None else self.d_head
        if self.pos == "rotary" and d_head % 2:
            raise ValueError(f"model.pos=rotary needs an even head size, got d_head={d_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")

    def with_derived_sizes(self) -> GPTConfig:
        """A validated copy with n_heads, d_head and d_mlp filled in."""
        self.validate()
        if self.n_heads is not None:
            n_heads, d_head = self.n_heads, self.d_model // self.n_heads
        else:
            n_heads, d_head = self.d_model // self.d_head, self.d_head
        d_mlp = 4 * self.d_model if self.d_mlp is None else self.d_mlp
        return dataclasses.replace(self, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp)

    def for_building(self) -> GPTConfig:
        """`with_derived_sizes()`, also requiring the task-given sizes (d_vocab, n_ctx) that
        building a model needs."""
        for name in ("d_vocab", "n_ctx"):
            if getattr(self, name) is None:
                raise ValueError(f"model.{name} is None: set it, or fill it from the task first")
        return self.with_derived_sizes()
