"""A short, stable identity of a model's weights, for cache keys and delta compatibility."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the config and a strided sample of every parameter (fast on 8B models)."""
    h = hashlib.sha256()
    config = model.config.to_dict() if hasattr(model, "config") else {}
    for key in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash"):
        config.pop(key, None)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        sample = flat[::step][:256].float().cpu()
        h.update(name.encode())
        h.update(str(tuple(param.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def weights_checksum(model: nn.Module) -> str:
    """sha256 over every parameter's exact bytes: equal iff the weights are bit-identical
    (crash tests compare a restarted model's replayed weights with the ones before the kill)."""
    h = hashlib.sha256()
    for name, param in model.named_parameters():
        h.update(name.encode())
        h.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
