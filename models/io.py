"""Save and load model weights as safetensors, the resolved GPTConfig in the file's metadata.

A checkpoint file is self-describing: `load_model` rebuilds the model from the stored config
alone. safetensors holds only tensors and string metadata, so loading never runs code (unlike
pickle). Training state (optimizer, RNG) is not model weights and lives with the trainer.
Identical weights and metadata give identical bytes, so checkpoints compare by checksum.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from models.config import GPTConfig
from models.gpt import GPT


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors' file with its metadata in sorted order. safetensors keeps the metadata in a
    hash map whose order changes from process to process (its tensors it sorts), so without
    this two saves of the same weights differ in their header's bytes."""
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])  # keeps the tensors' order, and so their offsets
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def save_model(model: GPT, path: str | Path, metadata: dict | None = None) -> None:
    """Write weights and {"config": resolved config, **metadata} (each value as JSON) to
    `path`, atomically: a reader sees the old file or the new one, never half of one."""
    metadata = metadata or {}
    if "config" in metadata:
        raise ValueError("metadata key 'config' is reserved for the model config")
    header = {"config": json.dumps(dataclasses.asdict(model.cfg))}
    for key, value in metadata.items():
        try:
            header[key] = json.dumps(value)
        except TypeError as e:
            raise ValueError(f"metadata[{key!r}] is not JSON-serializable: {e}") from e
    # Tied embeddings are one parameter in this model, so no tensor is stored twice.
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Bytes first, then one plain write: a full disk is an OSError (ENOSPC), not a library's.
    data, tmp = safetensors_bytes(tensors, header), path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a reader, or a kill at any moment, sees the old or the new file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_metadata(path: str | Path) -> dict:
    """{"config": dict, **metadata} from a checkpoint, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        meta = {key: json.loads(value) for key, value in header.items()}
    except (OSError, SafetensorError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"checkpoint {path} has no model config in its metadata")
    return meta


def config_differences(saved: GPTConfig, expect: GPTConfig) -> list[str]:
    """`field saved != expected` for each field `expect` sets (d_vocab and n_ctx may be None)
    that the saved config does not share."""
    want = dataclasses.asdict(expect.with_derived_sizes())
    return [f"{name} {value} != {want[name]}" for name, value in dataclasses.asdict(saved).items()
            if want[name] is not None and value != want[name]]


def load_model(
    path: str | Path, expect: GPTConfig | None = None, device: str | torch.device = "cpu"
) -> tuple[GPT, dict]:
    """Rebuild the model stored at `path` and load its weights strictly; returns
    (model, read_metadata(path)). With `expect`, its fields that are set (d_vocab and n_ctx
    may be None) must equal the stored config's."""
    meta = read_metadata(path)
    try:
        cfg = GPTConfig(**meta["config"]).for_building()
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path} holds an invalid model config: {e}") from e
    if expect is not None and (diffs := config_differences(cfg, expect)):
        raise ValueError(f"checkpoint {path} was saved from a different model (saved != "
                         f"expected): " + ", ".join(diffs))
    try:
        tensors = load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    with torch.device(device):
        model = GPT(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} does not match its config: {e}") from e
    return model, meta
