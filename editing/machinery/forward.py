"""Forward passes the optimisers need: full, or only the part of the model an edit changes.

``UpperStack`` (FT, tracing): nothing below the edit layer changes, so the hidden states
entering that layer — and the keyword arguments every upper layer receives (masks, rotary
embeddings, positions) — are recorded once and the upper layers are replayed from them.

ROME goes further: only the tokens from the subject on change (``editing.machinery.suffix``).

The replay is checked against a full forward pass once per model (``PassChecks``, owned by
the model's ``Editor``) and replaced by full passes where an architecture does not allow it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from editing.machinery.hooks import Hooks, hook_input, hook_output
from editing.spec import ModelSpec

log = logging.getLogger(__name__)


def final_logits(model: nn.Module, spec: ModelSpec, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm + unembedding (+ Gemma-2 style soft-capping) of hidden states (..., d)."""
    logits = model.get_submodule(spec.lm_head)(model.get_submodule(spec.final_norm)(hidden))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


def same_result(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of the model's dtype (relative to the magnitude of ``b``)."""
    tolerance = 1e-5 if b.dtype == torch.float32 else 2e-2
    return bool(((a.float() - b.float()).norm() <= tolerance * b.float().norm()).item())


def last_hidden(model: nn.Module, spec: ModelSpec, **inputs: Any) -> torch.Tensor:
    """Hidden states after the last layer, before the final norm, of one base-model pass
    (no unembedding: callers project only the positions they need, ``final_logits``)."""
    layers = model.get_submodule(spec.layers)
    captured: dict[str, torch.Tensor] = {}

    def post(_m, _args, output):
        captured["h"] = _first(output)

    with Hooks(hook_output(layers[len(layers) - 1], post)):
        model.base_model(**inputs)
    return captured["h"]


@dataclass
class PassChecks:
    """Which shortcuts one model's passes allow, each learnt once by comparing it with a full
    pass: the layer replay (``UpperStack``) and the packed prefix-cached pass
    (``editing.machinery.suffix.SuffixStack``), each with and without a KV cache.

    Owned by the model's ``Editor`` (a function called without one checks every time).  Only a
    comparison of results records a verdict — a difference is the architecture's; an exception
    during a check (out of memory, a stopped pass) makes that one computation use full passes
    and records nothing, so no passing fault can switch a shortcut off for later edits.
    """

    replay: dict[bool, bool] = field(default_factory=dict)  # with a KV cache? -> replay matches
    suffix: dict[bool, bool] = field(default_factory=dict)  # with a KV cache? -> packed pass matches


class UpperStack:
    """Run ``model`` on fixed inputs, returning hidden states before the final norm.

    ``inputs`` are the base model's keyword arguments (``input_ids``, ``attention_mask``, …).
    ``fresh_cache()``, if given, returns the KV cache a pass starts from; every pass needs a
    new one (a pass appends to it), which replaces the recorded one wherever a layer received
    it (by keyword on Llama, by position on GPT-2).  ``hidden()`` runs the layers
    ``layer..L-1`` only (after one recording pass), or the whole model where ``fast`` is off
    or the replay did not reproduce the full pass.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        layer: int,
        inputs: dict[str, Any],
        *,
        fast: bool = True,
        fresh_cache: Callable[[], Any] | None = None,
        lazy: bool = False,
        checks: PassChecks | None = None,
    ) -> None:
        self.model, self.spec, self.layer = model, spec, layer
        self.checks = checks if checks is not None else PassChecks()
        self.inputs = {"use_cache": False, **inputs}
        self.fresh_cache = fresh_cache
        self.layers = model.get_submodule(spec.layers)
        self._calls: list[tuple[tuple, dict]] = []
        self.fast = fast and self.checks.replay.get(fresh_cache is not None, True)
        self._pending = self.fast and lazy  # record during the first hidden() (an optimiser's first step)
        if self.fast and not lazy:
            with torch.no_grad():
                self._record_or_fall_back()

    def _record_or_fall_back(self) -> torch.Tensor | None:
        """One full pass that records every upper layer's inputs; its output, or None where the
        replay cannot be used (then ``fast`` is False and passes are full from now on)."""
        try:
            output, self.fast = self._record()
        except Exception as exc:  # noqa: BLE001 - this computation uses full passes; no verdict is recorded
            log.warning("layer replay failed here (%s); this computation uses full forward passes", exc)
            output, self.fast = None, False
        if not self.fast:
            self._calls.clear()
        return output

    def _record(self) -> tuple[torch.Tensor, bool]:
        calls: list[tuple[tuple, dict]] = [None] * (len(self.layers) - self.layer)  # type: ignore[list-item]
        hooks = Hooks()
        for i in range(self.layer, len(self.layers)):

            def pre(_m, args, kwargs, i=i):
                # detached: within a first optimisation step the upper layers' inputs are part
                # of its graph; the replay needs only their masks and positions (and layer's input)
                args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
                if isinstance(kwargs.get("hidden_states"), torch.Tensor):
                    kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}
                calls[i - self.layer] = (args, dict(kwargs))

            hooks.add(hook_input(self.layers[i], pre, with_kwargs=True))
        with hooks:
            output = last_hidden(self.model, self.spec, **self._pass_inputs())
        self._calls = calls
        mode = self.fresh_cache is not None
        if self.checks.replay.get(mode):
            return output, True  # replay was compared with a full pass on this model once; that suffices
        with torch.no_grad():
            replayed = self._replay()
        ok = same_result(replayed, output.detach())
        self.checks.replay[mode] = ok
        if not ok:
            log.info("layer replay differs from the full pass by %.2e on %s; full passes from now on",
                     (replayed - output.detach()).abs().max(), self.model.config.model_type)
        return output, ok

    def _replay(self) -> torch.Tensor:
        return self.replay_from(self.layer, self.input_of(self.layer))

    def input_of(self, layer: int) -> torch.Tensor:
        """The recorded hidden states entering ``layer`` (a layer at or above the first one)."""
        args, kwargs = self._calls[layer - self.layer]
        return args[0] if args else kwargs["hidden_states"]

    def replay_from(self, layer: int, hidden: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """Run layers ``layer..L-1`` on ``hidden`` with the recorded masks and positions
        (``layer == L`` returns ``hidden`` unchanged).  ``cache``: the KV cache this pass starts
        from, where it is not ``fresh_cache()`` (a batch of copies of the recorded row: the
        recorded masks and positions broadcast over it)."""
        if cache is None:
            cache = self.fresh_cache() if self.fresh_cache else None
        for offset in range(layer - self.layer, len(self._calls)):
            args, kwargs = self._calls[offset]
            if cache is not None:
                args, kwargs = _swap_cache(args, cache), dict(zip(kwargs, _swap_cache(kwargs.values(), cache)))
            layer_module = self.layers[self.layer + offset]
            if args:
                out = layer_module(hidden, *args[1:], **kwargs)
            else:
                out = layer_module(**{**kwargs, "hidden_states": hidden})
            hidden = _first(out)
        return hidden

    def hidden(self) -> torch.Tensor:
        """Hidden states after the last layer, before the final norm: (batch, seq, d)."""
        if self._pending:  # this full pass is the recording one
            self._pending = False
            output = self._record_or_fall_back()
            if output is not None:
                return output
        if self.fast:
            return self._replay()
        return last_hidden(self.model, self.spec, **self._pass_inputs())

    def _pass_inputs(self) -> dict[str, Any]:
        if self.fresh_cache is None:
            return self.inputs
        return {**self.inputs, "past_key_values": self.fresh_cache(), "use_cache": True}


def _swap_cache(values, cache) -> tuple:
    from transformers.cache_utils import Cache

    return tuple(cache if isinstance(v, Cache) else v for v in values)
