"""The phaselab model: GPTConfig, GPT, the size ladder, and safetensors checkpoints."""

from models.config import GPTConfig
from models.gpt import GPT
from models.io import load_model, read_metadata, save_model
from models.ladder import count_params, flops_per_token, ladder

__all__ = [
    "GPT",
    "GPTConfig",
    "count_params",
    "flops_per_token",
    "ladder",
    "load_model",
    "read_metadata",
    "save_model",
]
