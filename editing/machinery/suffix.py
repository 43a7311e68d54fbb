"""The packed pass ROME optimises through: each prompt from its subject's last token on.

δ is added at the subject's last token only, and attention is causal, so nothing *before*
that token changes in any layer.  Each row's prefix runs once into a key/value cache
(``PrefixCache`` keeps them for the next edit, whose prompts mostly start the same way), and
every step runs only the tails from the subject's last token on — about 45 of 260 tokens for
a CounterFact edit on smollm2 — all rows packed into one sequence (docs/speed.md, "Edits").
FT packs whole rows the same way (``hold_chat_preamble`` holds the chat row's preamble: ``editing.methods.ft``).

Checked against a full forward pass once per model (``editing.machinery.forward.PassChecks``) and
replaced by full passes (in length buckets, ``editing.machinery.objective``) where an architecture does
not allow it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from editing.machinery.forward import PassChecks, UpperStack, last_hidden, same_result
from editing.spec import ModelSpec

log = logging.getLogger(__name__)


def _packed_mask(model: nn.Module, cached: list[int], run: list[int], device: torch.device) -> torch.Tensor:
    """The 4D attention mask of a packed pass: row i has ``cached[i]`` tokens in the KV cache
    (all rows' cached tokens first, in row order) and ``run[i]`` tokens in the packed input;
    token j of row i sees row i's cached tokens and row i's run tokens up to itself."""
    row_of_key = torch.tensor([i for i, n in enumerate(cached) for _ in range(n)]
                              + [i for i, n in enumerate(run) for _ in range(n)])
    n_cached, n_run = sum(cached), sum(run)
    allowed = row_of_key[n_cached:, None] == row_of_key[None, :]
    allowed[:, n_cached:] &= torch.ones(n_run, n_run, dtype=torch.bool).tril()
    dtype = next(model.parameters()).dtype
    if getattr(model.config, "_attn_implementation", "sdpa") == "eager":  # additive float mask
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None].to(device)
    return allowed[None, None].to(device)


def _plain_cache(per_layer: list[tuple[torch.Tensor, torch.Tensor]]):
    """A DynamicCache holding ``per_layer`` (keys, values) of shape (1, heads, tokens, d), with
    plain layers only: a sliding-window layer would keep just its last ``window`` tokens of
    several rows' packed tokens, while each row (shorter than the window) needs all of its own."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for index, (keys, values) in enumerate(per_layer):
        cache.update(keys, values, index)
    return cache


LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (heads, tokens, d)


def _concat_rows(pieces: list[LayerKV]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the rows' keys and values one after the other: (1, heads, Σ tokens, d)."""
    return [(torch.cat([p[layer][0] for p in pieces], 1)[None], torch.cat([p[layer][1] for p in pieces], 1)[None])
            for layer in range(len(pieces[0]))]


class PrefixCache:
    """Keys and values of prompt prefixes already run, for reuse by later edits.

    An edit's rows share most of their prefixes with the previous edit's: the same sampled
    contexts and the same chat preamble, then a different prompt.  Attention is causal, so
    the keys and values of the first n tokens depend on those n tokens only: a stored prefix
    serves any row that starts with the same n tokens, and only the rest is run.

    Valid while the weights stay as they were when an entry was stored: it empties itself
    when ``DeltaStack`` has changed the set of applied deltas since (apply, then revert,
    restores the weights bit for bit and the entries with them), and ``clear()`` is for any
    other change of the weights (``Editor.invalidate``).
    """

    def __init__(self, max_entries: int = 64, min_shared: int = 8) -> None:
        self.max_entries, self.min_shared = max_entries, min_shared
        self._entries: dict[tuple[int, ...], LayerKV] = {}  # in least- to most-recently used order
        self._state: object = None
        self.hits = self.misses = 0

    def clear(self) -> None:
        self._entries.clear()

    def _check(self, model: nn.Module) -> None:
        state = (id(model), getattr(model, "_amend_weights_state", ()))  # which model, which weights
        if state != self._state:
            self._entries.clear()
            self._state = state

    def longest(self, model: nn.Module, ids: list[int]) -> tuple[int, LayerKV | None]:
        """(n, per-layer keys/values of ``ids[:n]``) for the stored prefix sharing the most
        leading tokens with ``ids``; (0, None) below ``min_shared`` tokens."""
        self._check(model)
        best, best_key = 0, None
        for key in self._entries:
            n = 0
            for a, b in zip(key, ids):
                if a != b:
                    break
                n += 1
            if n > best:
                best, best_key = n, key
        if best < self.min_shared or best_key is None:
            self.misses += 1
            return 0, None
        self.hits += 1
        kv = self._entries.pop(best_key)
        self._entries[best_key] = kv  # most recently used
        return best, [(k[:, :best], v[:, :best]) for k, v in kv]

    def store(self, model: nn.Module, ids: list[int], kv: LayerKV) -> None:
        self._check(model)
        self._entries.pop(tuple(ids), None)
        self._entries[tuple(ids)] = [(k.detach().clone(), v.detach().clone()) for k, v in kv]
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]


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
                 pad_id: int, device: torch.device, prefix_cache: PrefixCache | None = None,
                 checks: PassChecks | None = None) -> None:
        self.model, self.spec = model, spec
        checks = checks if checks is not None else PassChecks()
        self.starts = starts
        tails = [len(r) - s for r, s in zip(rows, starts)]
        self.offsets = [sum(tails[:i]) for i in range(len(rows))]  # where each row's tail begins
        self.length = sum(tails)
        ids = [t for r, s in zip(rows, starts) for t in r[s:]]
        self.input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        self._positions = torch.tensor([[s + j for s, n in zip(starts, tails) for j in range(n)]], device=device)
        self._mask = _packed_mask(model, starts, tails, device)
        self._rows, self._pad_id, self._device = rows, pad_id, device
        self._prefix_cache = prefix_cache
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._upper: UpperStack | None = None
        self.available = False
        window = getattr(model.config.get_text_config(), "sliding_window", None)
        if window and max(len(r) for r in rows) >= window:
            return  # a sliding layer would drop tokens that a full pass still sees
        try:
            self._fill_cache()
            mode = bool(self._kv)
            if mode not in checks.suffix:
                checks.suffix[mode] = self._matches_full_pass()
            self.available = checks.suffix[mode]
            if self.available:  # and nothing below the edit layer changes either
                self._upper = UpperStack(model, spec, layer, self._inputs(),
                                         fresh_cache=self._cache if self._kv else None, lazy=True, checks=checks)
        except Exception as exc:  # noqa: BLE001 - this computation runs whole rows; no verdict is recorded
            log.warning("prefix-cached pass failed here (%s); this computation runs whole rows", exc)
            self.available = False

    @property
    def fast(self) -> bool:
        """Each pass runs only the tails, and only through the layers from the edit layer up."""
        return self._upper is not None and self._upper.fast

    def place(self, row: int, position: int) -> int:
        """Index in the packed sequence of ``position`` (at or after the row's start) of ``row``."""
        return self.offsets[row] + position - self.starts[row]

    @torch.no_grad()
    def _fill_cache(self) -> None:
        """Keys and values of every row's prefix (its tokens before ``start``): the part a
        previous edit already ran comes from the prefix cache, the rest runs in one packed pass."""
        with_prefix = [i for i, s in enumerate(self.starts) if s]
        if not with_prefix:
            return
        prefixes = [self._rows[i][: self.starts[i]] for i in with_prefix]
        looked_up = [self._prefix_cache.longest(self.model, p) if self._prefix_cache else (0, None) for p in prefixes]
        n_known = [n for n, _ in looked_up]
        known: list[LayerKV | None] = [kv for _, kv in looked_up]
        rests = [prefix[n:] for prefix, n in zip(prefixes, n_known)]
        stored = [kv for kv in known if kv is not None]
        run_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        if any(rests):
            cache = _plain_cache(_concat_rows(stored) if stored else [])
            ids = torch.tensor([[t for rest in rests for t in rest]], dtype=torch.long, device=self._device)
            positions = torch.tensor([[n + j for n, rest in zip(n_known, rests) for j in range(len(rest))]],
                                     device=self._device)
            mask = _packed_mask(self.model, n_known, [len(r) for r in rests], self._device)
            layers = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                           past_key_values=cache, use_cache=True).past_key_values.layers
            run_kv = [(layer.keys[0, :, sum(n_known):], layer.values[0, :, sum(n_known):]) for layer in layers]
        pieces: list[LayerKV] = []
        offset = 0
        for kv, rest, prefix in zip(known, rests, prefixes):
            new = [(keys[:, offset : offset + len(rest)], values[:, offset : offset + len(rest)])
                   for keys, values in run_kv]
            offset += len(rest)
            if kv is None:
                piece = new
            elif not rest:
                piece = kv
            else:
                piece = [(torch.cat([k, nk], 1), torch.cat([v, nv], 1)) for (k, v), (nk, nv) in zip(kv, new)]
            pieces.append(piece)
            if self._prefix_cache is not None:
                self._prefix_cache.store(self.model, prefix, piece)
        self._kv = _concat_rows(pieces)  # rows in order

    def _cache(self):
        # fresh each pass: a pass appends its own keys and values to the cache
        return _plain_cache(self._kv) if self._kv else None

    @torch.no_grad()
    def _matches_full_pass(self) -> bool:
        from editing.machinery.tokens import pad_batch

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
