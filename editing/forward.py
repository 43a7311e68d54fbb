"""Forward passes the optimisers need: full, or only the part of the model an edit changes.

``UpperStack`` (FT, tracing): nothing below the edit layer changes, so the hidden states
entering that layer — and the keyword arguments every upper layer receives (masks, rotary
embeddings, positions) — are recorded once and the upper layers are replayed from them.

``SuffixStack`` (ROME): δ is added at the subject's last token only, and attention is
causal, so nothing *before* that token changes in any layer.  Each row's prefix is run once
into a key/value cache and every step runs only the tail from the subject's last token on —
about 45 of 260 tokens for a CounterFact edit on smollm2 (README, "Edit speed").

Both are checked against a full forward pass when built and quietly replaced by full passes
where an architecture does not allow them.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
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

    handle = layers[len(layers) - 1].register_forward_hook(post)
    try:
        model.base_model(**inputs)
    finally:
        handle.remove()
    return captured["h"]


# models on which a layer replay was compared with a full pass: model -> {with a KV cache?}
_REPLAY_CHECKED: weakref.WeakKeyDictionary[nn.Module, set[bool]] = weakref.WeakKeyDictionary()


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
    ) -> None:
        self.model, self.spec, self.layer = model, spec, layer
        self.inputs = {"use_cache": False, **inputs}
        self.fresh_cache = fresh_cache
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
        handles = []
        for i in range(self.layer, len(self.layers)):

            def pre(_m, args, kwargs, i=i):
                calls[i - self.layer] = (args, dict(kwargs))

            handles.append(self.layers[i].register_forward_pre_hook(pre, with_kwargs=True))
        try:
            with torch.no_grad():
                reference = last_hidden(self.model, self.spec, **self._pass_inputs())
        finally:
            for h in handles:
                h.remove()
        self._calls = calls
        mode = self.fresh_cache is not None
        if mode in _REPLAY_CHECKED.setdefault(self.model, set()):
            return True  # replay was compared with a full pass on this model once; that suffices
        with torch.no_grad():
            replayed = self._replay()
        ok = same_result(replayed, reference)
        if ok:
            _REPLAY_CHECKED[self.model].add(mode)
        else:
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


# models on which a packed pass was compared with a full pass: model -> {with a KV cache?: it matched}
_SUFFIX_CHECKED: weakref.WeakKeyDictionary[nn.Module, dict[bool, bool]] = weakref.WeakKeyDictionary()


class SuffixStack:
    """Run each row from its own start position on, the tokens before it held in a KV cache.

    ``rows`` are token ids, ``starts[i]`` the first position of row i that is run each pass.
    The tails of all rows are packed into one sequence with a block-diagonal causal mask (one
    pass, no padding: the weights are read once per step, which is what a 2-core CPU pays
    for at ~50 tokens).  ``place(i, p)`` is the index in that sequence of position ``p`` of
    row ``i``; ``hidden()`` returns (1, packed length, d).  ``available`` is False where the
    model cannot do this (no cache support, custom 4D masks ignored, or any other difference
    from a full pass); use ``UpperStack`` then.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, layer: int, rows: list[list[int]], starts: list[int],
                 pad_id: int, device: torch.device) -> None:
        self.model, self.spec = model, spec
        self.starts = starts
        tails = [len(r) - s for r, s in zip(rows, starts)]
        self.offsets = [sum(tails[:i]) for i in range(len(rows))]  # where each row's tail begins
        self.length = sum(tails)
        cached = sum(starts)
        ids = [t for r, s in zip(rows, starts) for t in r[s:]]
        self.input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        self._positions = torch.tensor([[s + j for s, n in zip(starts, tails) for j in range(n)]], device=device)
        # token j of row i sees row i's cached prefix and row i's tail up to itself
        row_of_key = torch.tensor([i for i, s in enumerate(starts) for _ in range(s)]
                                  + [i for i, n in enumerate(tails) for _ in range(n)])
        row_of_query = row_of_key[cached:]
        allowed = row_of_query[:, None] == row_of_key[None, :]
        allowed[:, cached:] &= torch.ones(self.length, self.length, dtype=torch.bool).tril()
        dtype = next(model.parameters()).dtype
        if getattr(model.config, "_attn_implementation", "sdpa") == "eager":  # additive float mask
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        else:
            mask = allowed
        self._mask = mask[None, None].to(device)
        self._rows, self._pad_id, self._device = rows, pad_id, device
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._upper: UpperStack | None = None
        self.available = False
        window = getattr(model.config.get_text_config(), "sliding_window", None)
        if window and max(len(r) for r in rows) >= window:
            return  # a sliding layer would drop tokens that a full pass still sees
        try:
            self._fill_cache()
            checked = _SUFFIX_CHECKED.setdefault(model, {})
            mode = bool(self._kv)
            if mode not in checked:
                checked[mode] = self._matches_full_pass()
            self.available = checked[mode]
            if self.available:  # and nothing below the edit layer changes either
                self._upper = UpperStack(model, spec, layer, self._inputs(),
                                         fresh_cache=self._cache if self._kv else None)
        except Exception as exc:  # noqa: BLE001 - any failure means: use the full rows
            log.info("prefix caching unavailable (%s); running whole rows", exc)
            self.available = False

    def place(self, row: int, position: int) -> int:
        """Index in the packed sequence of ``position`` (at or after the row's start) of ``row``."""
        return self.offsets[row] + position - self.starts[row]

    @torch.no_grad()
    def _fill_cache(self) -> None:
        from editing.tokens import length_buckets, pad_batch

        with_prefix = [i for i, s in enumerate(self.starts) if s]
        if not with_prefix:
            return
        pieces: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # row -> per layer (keys, values)
        # prefixes of very different lengths (a few-shot chat prompt, short sampled contexts)
        # run in separate batches so that padding stays small
        for group in length_buckets([self.starts[i] for i in with_prefix]):
            rows = [with_prefix[g] for g in group]
            batch = pad_batch([self._rows[i][: self.starts[i]] for i in rows], self._pad_id, self._device)
            cache = self.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                          use_cache=True).past_key_values
            for n, i in enumerate(rows):
                pieces[i] = [(layer.keys[n, :, : self.starts[i]], layer.values[n, :, : self.starts[i]])
                             for layer in cache.layers]
        # per layer: (1, heads, Σ prefix lengths, d), rows in order
        self._kv = [
            (torch.cat([pieces[i][layer][0] for i in with_prefix], 1)[None],
             torch.cat([pieces[i][layer][1] for i in with_prefix], 1)[None])
            for layer in range(len(pieces[with_prefix[0]]))
        ]

    def _cache(self):
        from transformers import DynamicCache

        if not self._kv:
            return None
        # Fresh each pass (a pass appends to it), and with plain layers only: a sliding-window
        # layer would keep just its last `window` tokens of the packed prefixes, while each row
        # (shorter than the window, checked above) needs all of its own.  The mask does the rest.
        cache = DynamicCache()
        for index, (keys, values) in enumerate(self._kv):
            cache.update(keys, values, index)
        return cache

    @torch.no_grad()
    def _matches_full_pass(self) -> bool:
        from editing.tokens import pad_batch

        full = pad_batch(self._rows, self._pad_id, self._device)
        reference = last_hidden(self.model, self.spec, input_ids=full.input_ids,
                                attention_mask=full.attention_mask, use_cache=False)
        expected = torch.cat([reference[i, s : len(r)] for i, (r, s) in enumerate(zip(self._rows, self.starts))])
        ok = same_result(self.hidden()[0], expected)
        if not ok:
            log.info("prefix-cached pass differs from the full pass on %s", self.model.config.model_type)
        return ok

    def _inputs(self) -> dict[str, Any]:
        mask = self._mask if self._kv else self._mask[..., sum(self.starts):]
        return {"input_ids": self.input_ids, "attention_mask": mask, "position_ids": self._positions}

    def hidden(self) -> torch.Tensor:
        """Hidden states of the packed tails after the last layer, before the final norm."""
        if self._upper is not None:
            return self._upper.hidden()
        cache = self._cache()
        return last_hidden(self.model, self.spec, **self._inputs(), past_key_values=cache,
                           use_cache=cache is not None)
