"""Forward passes the optimisers need: full, or replaying only the layers above the edit.

During ROME's v* search (and FT's steps) nothing below the edit layer changes, so the
hidden states entering that layer — and the keyword arguments every upper layer receives
(masks, rotary embeddings, positions) — are recorded once and the upper layers are replayed
from them each step.  The replay is checked against a full forward pass when built and
quietly replaced by full passes where an architecture does not allow it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

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


class UpperStack:
    """Run ``model`` on a fixed batch, returning hidden states before the final norm.

    ``hidden()`` runs the layers ``layer..L-1`` only (after one recording pass), or the whole
    model where ``fast`` is off or the replay did not reproduce the full pass.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        layer: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        fast: bool = True,
    ) -> None:
        self.model, self.spec, self.layer = model, spec, layer
        self.input_ids, self.attention_mask = input_ids, attention_mask
        self.layers = model.get_submodule(spec.layers)
        self._calls: list[tuple[tuple, dict]] = []
        self.fast = False
        if fast:
            try:
                self.fast = self._record()
            except Exception as exc:  # noqa: BLE001 - any failure means: use full passes
                log.info("layer replay unavailable (%s); using full forward passes", exc)
        if not self.fast:
            self._calls.clear()

    def _record(self) -> bool:
        calls: list[tuple[tuple, dict]] = [None] * (len(self.layers) - self.layer)  # type: ignore[list-item]
        outputs: dict[int, torch.Tensor] = {}
        handles = []
        for i in range(self.layer, len(self.layers)):

            def pre(_m, args, kwargs, i=i):
                calls[i - self.layer] = (args, dict(kwargs))

            def post(_m, args, kwargs, output, i=i):
                outputs[i] = _first(output)

            handles.append(self.layers[i].register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(self.layers[i].register_forward_hook(post, with_kwargs=True))
        try:
            with torch.no_grad():
                self.model(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self._calls = calls
        reference = outputs[len(self.layers) - 1]
        self.final = reference  # the last layer's output of the recorded pass
        with torch.no_grad():
            replayed = self._replay()
        ok = torch.allclose(replayed, reference, atol=1e-4, rtol=1e-4)
        if not ok:
            log.info("layer replay differs from the full pass by %.2e", (replayed - reference).abs().max())
        return ok

    def _replay(self) -> torch.Tensor:
        return self.replay_from(self.layer, self.input_of(self.layer))

    def input_of(self, layer: int) -> torch.Tensor:
        """The recorded hidden states entering ``layer`` (a layer at or above the first one)."""
        args, kwargs = self._calls[layer - self.layer]
        return args[0] if args else kwargs["hidden_states"]

    def replay_from(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Run layers ``layer..L-1`` on ``hidden`` with the recorded masks and positions
        (``layer == L`` returns ``hidden`` unchanged)."""
        for offset in range(layer - self.layer, len(self._calls)):
            args, kwargs = self._calls[offset]
            layer_module = self.layers[self.layer + offset]
            if args:
                out = layer_module(hidden, *args[1:], **kwargs)
            else:
                out = layer_module(**{**kwargs, "hidden_states": hidden})
            hidden = _first(out)
        return hidden

    def hidden(self) -> torch.Tensor:
        """Hidden states after the last layer, before the final norm: (batch, seq, d)."""
        if self.fast:
            return self._replay()
        captured: dict[str, torch.Tensor] = {}
        last = self.layers[len(self.layers) - 1]

        def post(_m, _args, output):
            captured["h"] = _first(output)

        handle = last.register_forward_hook(post)
        try:
            self.model(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False)
        finally:
            handle.remove()
        return captured["h"]

