"""Second moment of MLP keys, C = E[k kᵀ], for ROME's rank-one update.

The paper used 100k Wikipedia samples; here the corpus is pluggable: text sampled from the
model itself (the offline default), a text file, a folder of ``.txt`` files, or a
``datasets`` name where a network exists.  Statistics are accumulated in float32 in one
streaming pass that stops the forward at the edit layer, and cached on disk keyed by
(model fingerprint, layer, corpus id, token count) with a JSON sidecar of provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.machinery.context import sample_texts
from editing.machinery.hooks import Trace
from editing.spec import ModelSpec

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (tokens so far, tokens wanted)


@dataclass(frozen=True)
class Corpus:
    """Where statistics text comes from: ``self``, a file / folder path, or ``hf:<dataset>``."""

    source: str = "self"

    def id(self) -> str:
        if self.source == "self":
            return "self-sampled-v1"
        if self.source.startswith("hf:"):
            return self.source.replace("/", "_")
        path = Path(self.source)
        files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes())
        return f"file-{path.name}-{h.hexdigest()[:12]}"

    def texts(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, cache_dir: Path) -> Iterator[str]:
        if self.source == "self":
            yield from _self_sampled(model, tokenizer, cache_dir)
        elif self.source.startswith("hf:"):
            import datasets  # optional; needs a network or a local datasets cache

            name, _, config = self.source[3:].partition(":")
            for row in datasets.load_dataset(name, config or None, split="train", streaming=True):
                yield row["text"]
        else:
            path = Path(self.source)
            if not path.exists():
                raise FileNotFoundError(f"statistics corpus {path} does not exist")
            for f in sorted(path.rglob("*.txt")) if path.is_dir() else [path]:
                for paragraph in f.read_text(encoding="utf-8").split("\n\n"):
                    if paragraph.strip():
                        yield paragraph.strip()


_SAMPLE_BATCH = 64


def _self_sampled(model: nn.Module, tokenizer: PreTrainedTokenizerBase, cache_dir: Path) -> Iterator[str]:
    """Endless batches of model-sampled text (English and Chinese), saved as they are made
    so that every layer's statistics reuse the same corpus."""
    cache = cache_dir / "corpus-self.jsonl"
    saved = _whole_batches(cache)
    yield from saved
    batch = len(saved) // _SAMPLE_BATCH
    while True:
        language = "zh" if batch % 4 == 3 else "en"  # mostly English, some Chinese
        # wide, short batches: sampling on a CPU is bound by per-step overhead, not FLOPs
        texts = sample_texts(model, tokenizer, language=language, n=_SAMPLE_BATCH, new_tokens=64,
                             seed=1000 + batch, top_k=40)
        with cache.open("a", encoding="utf-8") as f:
            f.write(_jsonl(texts))  # one write: a batch is on disk whole or cut at its end
        yield from texts
        batch += 1


def _whole_batches(cache: Path) -> list[str]:
    """The saved corpus up to its last whole batch; a tail cut short by a killed process is
    dropped from the file, so batch k is always the text sampled with seed 1000 + k."""
    if not cache.exists():
        return []
    lines = cache.read_text(encoding="utf-8").splitlines()
    texts: list[str] = []
    for line in lines:
        try:
            texts.append(json.loads(line))
        except json.JSONDecodeError:
            break
    whole = texts[: len(texts) // _SAMPLE_BATCH * _SAMPLE_BATCH]
    if len(whole) != len(lines):
        log.warning("dropping an unfinished batch from %s", cache)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(_jsonl(whole), encoding="utf-8")
        tmp.replace(cache)
    return whole


def _jsonl(texts: list[str]) -> str:
    return "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts)


@torch.no_grad()
def collect_key_moment(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    layer: int,
    texts: Iterator[str],
    n_tokens: int,
    *,
    max_length: int = 256,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, int]:
    """E[k kᵀ] over ``n_tokens`` tokens of ``texts``; returns (moment (d, d) float32, tokens used)."""
    device = next(model.parameters()).device
    path = spec.mlp_out_at(layer)
    moment: torch.Tensor | None = None
    count = 0
    for chunk in _chunks(texts, batch_size):
        enc = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(device)
        with Trace(model, path, retain_input=True, retain_output=False, stop=True) as trace:
            model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
        keys = trace.input[enc.attention_mask.bool()].float()  # (real tokens, d_ff)
        keys = keys[: n_tokens - count]
        moment = keys.T @ keys if moment is None else moment.add_(keys.T @ keys)
        count += keys.shape[0]
        if progress:
            progress(count, n_tokens)
        if count >= n_tokens:
            break
    if moment is None or count == 0:
        raise ValueError("the statistics corpus produced no text")
    return moment / count, count


def _chunks(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class CovarianceCache:
    """Owner of key statistics on disk (and of the loaded ones in memory)."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root, self.fingerprint = Path(root), fingerprint
        self._memory: dict[tuple, torch.Tensor] = {}
        # a background precompute and an edit never compute twice; held by whoever changes the
        # weights too (``Editor.changing_weights``), so no statistics mix two sets of weights
        self.lock = threading.Lock()
        self.last_seconds: float = 0.0
        self.last_from_cache: bool = False

    def _dir(self) -> Path:
        d = self.root / self.fingerprint
        d.mkdir(parents=True, exist_ok=True)
        return d

    def path(self, layer: int, corpus: Corpus, n_tokens: int) -> Path:
        return self._dir() / f"{corpus.id()}-layer{layer}-{n_tokens}.safetensors"

    def get(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        spec: ModelSpec,
        layer: int,
        corpus: Corpus,
        n_tokens: int,
        progress: Progress | None = None,
        *,
        weights: str | None = None,
    ) -> torch.Tensor:
        """C at ``layer``.  ``weights`` names edited weights that change this layer's keys (an
        edit below it): their statistics are computed and kept in memory under that name, never
        stored as the unedited model's (whose fingerprint the files carry)."""
        with self.lock:
            return self._get(model, tokenizer, spec, layer, corpus, n_tokens, progress, weights)

    def _get(self, model, tokenizer, spec, layer, corpus, n_tokens, progress, weights=None) -> torch.Tensor:
        key = (layer, corpus.id(), n_tokens, weights)
        self.last_from_cache = True
        if key in self._memory:
            return self._memory[key]
        if weights is not None:
            log.info("key statistics of layer %d on edited weights (%s): kept in memory only", layer, weights)
            self.last_from_cache = False
            start = time.perf_counter()
            moment, _ = collect_key_moment(model, tokenizer, spec, layer, corpus.texts(model, tokenizer, self._dir()),
                                           n_tokens, progress=progress)
            self.last_seconds = time.perf_counter() - start
            self._memory[key] = moment
            return moment
        path = self.path(layer, corpus, n_tokens)
        moment = None
        if not path.exists():
            # another process (a second evaluation, the app) may be computing the same statistics
            # or appending to the shared self-sampled corpus: wait for it, then read its file
            with FileLock(self._dir() / ".compute.lock"):
                if not path.exists():
                    moment = self._compute(model, tokenizer, spec, layer, corpus, n_tokens, progress, path)
        if moment is None:
            moment = load_file(path)["moment"]
        device = next(model.parameters()).device
        self._memory[key] = moment.to(device)
        return self._memory[key]

    def _compute(self, model, tokenizer, spec, layer, corpus, n_tokens, progress, path: Path) -> torch.Tensor:
        """Compute, save (atomically, with a provenance sidecar) and return the moment."""
        self.last_from_cache = False
        start = time.perf_counter()
        moment, used = collect_key_moment(
            model, tokenizer, spec, layer, corpus.texts(model, tokenizer, self._dir()), n_tokens, progress=progress
        )
        self.last_seconds = time.perf_counter() - start
        tmp = path.with_suffix(".tmp")
        save_file({"moment": moment.cpu().contiguous()}, tmp)
        tmp.replace(path)
        provenance = {
            "model_fingerprint": self.fingerprint,
            "layer": layer,
            "module": spec.mlp_out_at(layer),
            "corpus": corpus.source,
            "corpus_id": corpus.id(),
            "tokens": used,
            "seconds": round(self.last_seconds, 2),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        path.with_suffix(".json").write_text(json.dumps(provenance, indent=2), encoding="utf-8")
        return moment
