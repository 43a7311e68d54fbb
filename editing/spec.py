"""Per-architecture facts, in one table keyed by ``model.config.model_type``.

Every algorithm asks this table where things are; none names a module path itself.
``{}`` in a path is the layer index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editing.errors import UnsupportedArchitecture


@dataclass(frozen=True)
class ModelSpec:
    layers: str  # the ModuleList of decoder blocks
    mlp: str  # the MLP block of one layer (its output is what ROME's v* changes)
    mlp_out: str  # the MLP output projection: W of ROME, input = key k, output = value v
    attn: str  # the attention block of one layer (for causal tracing)
    embed: str  # token embedding
    final_norm: str  # norm before the unembedding
    lm_head: str
    # GPT-2 style Conv1D stores W transposed: weight is (d_in, d_out) instead of (d_out, d_in).
    conv1d: bool = False

    def layer(self, i: int) -> str:
        return f"{self.layers}.{i}"

    def mlp_out_at(self, i: int) -> str:
        return self.mlp_out.format(i)

    def mlp_at(self, i: int) -> str:
        return self.mlp.format(i)

    def attn_at(self, i: int) -> str:
        return self.attn.format(i)


_LLAMA_LIKE = ModelSpec(
    layers="model.layers",
    mlp="model.layers.{}.mlp",
    mlp_out="model.layers.{}.mlp.down_proj",
    attn="model.layers.{}.self_attn",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
)

SPECS: dict[str, ModelSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "gpt2": ModelSpec(
        layers="transformer.h",
        mlp="transformer.h.{}.mlp",
        mlp_out="transformer.h.{}.mlp.c_proj",
        attn="transformer.h.{}.attn",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        conv1d=True,
    ),
    "gptj": ModelSpec(
        layers="transformer.h",
        mlp="transformer.h.{}.mlp",
        mlp_out="transformer.h.{}.mlp.fc_out",
        attn="transformer.h.{}.attn",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
    ),
}


def spec_for(model: nn.Module) -> ModelSpec:
    model_type = getattr(model.config, "model_type", "?")
    try:
        return SPECS[model_type]
    except KeyError:
        raise UnsupportedArchitecture(model_type, list(SPECS)) from None


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def n_layers(model: nn.Module, spec: ModelSpec | None = None) -> int:
    spec = spec or spec_for(model)
    return len(get_module(model, spec.layers))


def mlp_weight(model: nn.Module, layer: int, spec: ModelSpec | None = None) -> torch.nn.Parameter:
    """The parameter ROME and FT change: stored (d_out, d_in), or (d_in, d_out) for Conv1D."""
    spec = spec or spec_for(model)
    return get_module(model, spec.mlp_out_at(layer)).weight
