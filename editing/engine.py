"""The editing engine's front door: one object per loaded model that owns the caches an
edit needs (sampled prefixes, key statistics) and computes deltas with any method.

It owns the model's edit state, ``stack`` (``editing.delta.DeltaStack``, the one writer of
weights), and never writes weights itself: ``compute`` returns a ``WeightDelta`` that the caller
applies with ``editor.stack.apply``.  The edits applied now are the history a new ROME edit
preserves (``editing.machinery.preservation``).  Call ``invalidate()`` after the weights change some other way than through
``DeltaStack`` (which the prefix cache follows by itself).  The sampled context prefixes are
text and are kept for the editor's lifetime, as the ROME reference implementation keeps its
context templates for the whole process, also across sequential edits.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.delta import DeltaStack, WeightDelta
from editing.errors import LayerOutOfRange
from editing.fingerprint import model_fingerprint
from editing.hparams import FTHyperParams, KNHyperParams, ROMEHyperParams, hparams_for
from editing.inspection.lens import choose_layer, logit_lens
from editing.machinery.context import sample_prefixes
from editing.machinery.covariance import Corpus, CovarianceCache
from editing.machinery.forward import PassChecks
from editing.machinery.objective import ProgressFn
from editing.machinery.relations import other_subject_prompts, same_subject_prompts
from editing.machinery.rows import DEFAULT_QUESTION, ChatPromptFn, answer_opening
from editing.machinery.suffix import PrefixCache
from editing.methods.ft import compute_ft_delta
from editing.methods.kn import compute_kn_delta
from editing.methods.rome import SpreadLayer, compute_rome_batch, compute_rome_delta, compute_rome_spread
from editing.request import EditRequest
from editing.spec import n_layers, spec_for
from runtime.conversation import Conversation
from runtime.loader import LoadedModel, amend_home

Method = Literal["rome", "ft", "kn"]


@dataclass
class EditOutcome:
    delta: WeightDelta
    method: Method
    layer: int
    seconds: float
    target_prob: float  # mean P(target) on the optimisation prompts at the end (KN: P(new first token), bare prompt)
    losses: list[float] = field(default_factory=list)
    stats_seconds: float = 0.0  # time spent computing key statistics (0 when cached)


def default_layer_for(depth: int) -> int:
    """Where ROME edits when nothing else is known: early-middle MLPs (EasyEdit: 5 of 32)."""
    return max(1, round(depth * 0.16))


class Editor:
    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        stats_dir: str | Path,
        corpus: Corpus | None = None,
        default_layer: int | None = None,
        chat_prompt: ChatPromptFn | None = None,
        chat_lead: str = "",
        fingerprint: str | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.spec = spec_for(model)
        self.depth = n_layers(model, self.spec)
        self.fingerprint = fingerprint or model_fingerprint(model)
        self.corpus = corpus or Corpus()
        self.covariance = CovarianceCache(Path(stats_dir), self.fingerprint)
        self.chat_prompt, self.chat_lead = chat_prompt, chat_lead  # the answer starts after chat_prompt + chat_lead
        self._default_layer = default_layer
        self._templates: dict[tuple, list[str]] = {}
        self._sampling = threading.Lock()
        self.prefix_cache = PrefixCache()  # the prompts' prefix keys/values, shared by edits
        self.stack = DeltaStack(model)  # the edits applied now: the only writer of the weights
        self.checks = PassChecks()  # which shortcuts this model's passes allow, learnt once

    @classmethod
    def for_model(cls, loaded: LoadedModel, *, home: Path | None = None, corpus: Corpus | None = None) -> Editor:
        """The one wiring of an editor for a loaded model, used by the app, both command lines,
        the evaluation, every benchmark and the tests: edits are optimised through the chat
        prompt the product sends (``runtime.conversation``: system prompt, template or few-shot
        adapter), at the profile's default layer, with key statistics under ``home/stats``."""
        conversation = Conversation(loaded)
        return cls(loaded.model, loaded.tokenizer, stats_dir=(home or amend_home()) / "stats", corpus=corpus,
                   default_layer=loaded.profile.default_edit_layer,
                   chat_prompt=conversation.prompt_text, chat_lead=conversation.answer_lead)

    @property
    def default_layer(self) -> int:
        return self._default_layer if self._default_layer is not None else default_layer_for(self.depth)

    def resolve_layer(self, layer: int | str | None, request: EditRequest | None = None) -> int:
        """An explicit layer, the model's default (None), or "auto": the thesis's Algorithm 2
        on the logit lens of the edit prompt (``editing.inspection.lens.choose_layer``)."""
        if layer == "auto":
            if request is None:
                raise ValueError('layer="auto" needs the edit request')
            return choose_layer(logit_lens(self.model, self.tokenizer, request.text, spec=self.spec), self.default_layer)
        layer = self.default_layer if layer is None else int(layer)
        if not 0 <= layer < self.depth:
            raise LayerOutOfRange(layer, self.depth)
        return layer

    @contextmanager
    def changing_weights(self) -> Iterator[None]:
        """Hold while the model's weights change (apply, revert, replay): key statistics being
        computed in the background finish first, so none mix the old weights with the new; what
        was computed from the old weights is forgotten afterwards."""
        with self.covariance.lock:
            try:
                yield
            finally:
                self.invalidate()

    def invalidate(self) -> None:
        """Forget what was computed from the current weights (call after they changed)."""
        self.prefix_cache.clear()

    def templates(self, language: str, n: int, lengths: tuple[int, ...]) -> list[str]:
        key = (language, n, lengths)
        with self._sampling:  # an edit arriving while the app samples these at start-up waits for them
            if key not in self._templates:
                self._templates[key] = sample_prefixes(self.model, self.tokenizer, language=language, n=n,
                                                       lengths=lengths)
        return self._templates[key]

    def statistics(self, layer: int, n_tokens: int, progress=None, *, unedited: bool = False):
        """C = E[k kᵀ] at ``layer``, of the unedited model's keys — unless an applied edit sits
        below ``layer`` (it changes the keys there): then of the current weights, in memory only.
        ``unedited``: the unedited model's statistics whenever they are on disk, edits below or
        not (a write spread over layers keeps C₀ of the model as it was, as MEMIT does)."""
        below = sorted(i for i in map(self._layer_of, getattr(self.model, "_amend_edited_params", ()))
                       if i is not None and i < layer)
        weights = None
        if below and unedited and self.covariance.path(layer, self.corpus, n_tokens).exists():
            below = []
        if below:
            state = repr(getattr(self.model, "_amend_weights_state", ())).encode()
            weights = f"edited-{hashlib.sha256(state).hexdigest()[:12]}"
        return self.covariance.get(self.model, self.tokenizer, self.spec, layer, self.corpus, n_tokens, progress,
                                   weights=weights)

    def _layer_of(self, param: str) -> int | None:
        for i in range(self.depth):
            if param == f"{self.spec.mlp_out_at(i)}.weight":
                return i
        return None

    def compute(
        self,
        request: EditRequest,
        method: Method = "rome",
        layer: int | str | None = None,
        hparams: ROMEHyperParams | FTHyperParams | KNHyperParams | dict | None = None,
        *,
        locality_prompts: list[str] = (),
        progress: ProgressFn | None = None,
    ) -> EditOutcome:
        start = time.perf_counter()
        if not isinstance(hparams, BaseModel):
            hparams = hparams_for(method, hparams)
        request.check_lengths(self.tokenizer)
        layer = self.resolve_layer(layer, request)
        chat_prompt = self.chat_prompt if hparams.chat_template else None
        request = self._with_opening(request, hparams)
        stats_seconds = 0.0
        if method == "rome" and hparams.spread > 1:
            if layer - hparams.spread + 1 < 0:
                raise LayerOutOfRange(layer - hparams.spread + 1, self.depth)
            spread = []
            for at in range(layer - hparams.spread + 1, layer + 1):
                covariance, seconds = self._covariance(hparams, at, progress)
                stats_seconds += seconds
                spread.append(SpreadLayer(at, covariance, self._history([request], hparams, at)))
            result = compute_rome_spread(
                self.model, self.tokenizer, request, hparams, self.spec, spread,
                templates=self.templates(request.language, hparams.n_prefixes, hparams.prefix_lengths),
                chat_prompt=chat_prompt, locality_prompts=list(locality_prompts) or self._same_subject(request, hparams),
                progress=progress, prefix_cache=self.prefix_cache, checks=self.checks,
            )
        elif method == "rome":
            assert isinstance(hparams, ROMEHyperParams)
            covariance, stats_seconds = self._covariance(hparams, layer, progress)
            same_subject = self._same_subject(request, hparams)
            result = compute_rome_delta(
                self.model, self.tokenizer, request, hparams, self.spec, layer,
                templates=self.templates(request.language, hparams.n_prefixes, hparams.prefix_lengths),
                covariance=covariance, chat_prompt=chat_prompt,
                locality_prompts=list(locality_prompts) or same_subject, progress=progress,
                prefix_cache=self.prefix_cache, checks=self.checks, history=self._history([request], hparams, layer),
                same_subject_prompts=same_subject, other_subject_prompts=self._other_subjects(request, hparams),
            )
        elif method == "ft":
            assert isinstance(hparams, FTHyperParams)
            templates = self.templates(request.language, hparams.n_prefixes, (5, 10))
            result = compute_ft_delta(
                self.model, self.tokenizer, request, hparams, self.spec, layer,
                templates=templates, chat_prompt=chat_prompt, progress=progress, prefix_cache=self.prefix_cache,
                checks=self.checks,
            )
        elif method == "kn":
            assert isinstance(hparams, KNHyperParams)
            result = compute_kn_delta(
                self.model, self.tokenizer, request, hparams, self.spec,
                templates=self.templates(request.language, hparams.n_prefixes, (5, 10)), chat_prompt=chat_prompt,
                progress=progress,
            )
            layer = result.neurons[0][0]  # the layer of the strongest knowledge neuron
        else:
            raise ValueError(f"unknown method {method!r}; choose rome, ft or kn")
        delta = result.delta
        delta.meta.update(
            request=request.model_dump(),
            hparams=hparams.model_dump(),
            model_fingerprint=self.fingerprint,
            corpus=self.corpus.id() if method == "rome" and getattr(hparams, "covariance", False) else None,
            seconds=round(time.perf_counter() - start, 3),
            target_prob=result.target_prob,
        )
        return EditOutcome(
            delta=delta,
            method=method,
            layer=layer,
            seconds=time.perf_counter() - start,
            target_prob=result.target_prob,
            losses=result.losses,
            stats_seconds=stats_seconds,
        )

    def compute_batch(
        self,
        requests: list[EditRequest],
        layer: int | None = None,
        hparams: ROMEHyperParams | dict | None = None,
        *,
        progress: ProgressFn | None = None,
    ) -> EditOutcome:
        """Many facts in one ROME solve (``editing.methods.rome.compute_rome_batch``): one
        low-rank delta that writes every fact, reverted as one."""
        start = time.perf_counter()
        if not isinstance(hparams, BaseModel):
            hparams = hparams_for("rome", hparams)
        if not requests:
            raise ValueError("a batch needs at least one fact")
        if hparams.spread > 1 or hparams.update_rule != "r-rome":
            raise ValueError("a batch is written at one layer with the r-ROME key (spread=1, update_rule=r-rome)")
        for request in requests:
            request.check_lengths(self.tokenizer)
        requests = [self._with_opening(r, hparams) for r in requests]  # each fact's chat row as a single edit's
        layer = self.resolve_layer(layer)
        covariance, stats_seconds = self._covariance(hparams, layer, progress)
        templates = {r.language: self.templates(r.language, hparams.n_prefixes, hparams.prefix_lengths)
                     for r in requests}
        result = compute_rome_batch(
            self.model, self.tokenizer, requests, hparams, self.spec, layer, templates=templates,
            covariance=covariance, chat_prompt=self.chat_prompt if hparams.chat_template else None,
            same_subject_prompts={r.subject: self._same_subject(r, hparams) for r in requests},
            other_subject_prompts=[p for r in requests for p in self._other_subjects(r, hparams)],
            progress=progress, prefix_cache=self.prefix_cache, checks=self.checks,
            history=self._history(requests, hparams, layer),
        )
        target_prob = sum(v.target_prob for v in result.values) / len(result.values)
        result.delta.meta.update(
            requests=[r.model_dump() for r in requests], hparams=hparams.model_dump(),
            model_fingerprint=self.fingerprint, corpus=self.corpus.id() if hparams.covariance else None,
            seconds=round(time.perf_counter() - start, 3), target_prob=target_prob,
        )
        return EditOutcome(delta=result.delta, method="rome", layer=layer, seconds=time.perf_counter() - start,
                           target_prob=target_prob, losses=[v.losses[-1] for v in result.values if v.losses],
                           stats_seconds=stats_seconds)

    def _with_opening(self, request: EditRequest, hparams: BaseModel) -> EditRequest:
        """``request`` with the chat answer's opening as this model says it — its restatement of
        the prompt, or the lead alone for a direct answer; unchanged where the answer follows the
        prompt only part way (editing.machinery.rows.answer_opening), where it carries an opening
        already, and where ``hparams`` optimise no chat row or ask for no opening."""
        chat_prompt = self.chat_prompt if hparams.chat_template else None
        if chat_prompt is None or not getattr(hparams, "chat_opening", False) or request.answer_opening is not None:
            return request
        question = request.question or DEFAULT_QUESTION[request.language].format(request.text)
        opening = answer_opening(self.model, self.tokenizer, self.spec, chat_prompt(question), self.chat_lead,
                                 request.text, request.subject)
        return request if opening is None else request.model_copy(update={"answer_opening": opening})

    def _covariance(self, hparams: ROMEHyperParams, layer: int, progress: ProgressFn | None):
        """(C₀ at ``layer`` or None, seconds spent computing it now)."""
        if not hparams.covariance:
            return None, 0.0
        stats_progress = (lambda done, total: progress("statistics", done, total, None)) if progress else None
        covariance = self.statistics(layer, hparams.mom2_n_tokens, stats_progress, unedited=hparams.spread > 1)
        return covariance, 0.0 if self.covariance.last_from_cache else self.covariance.last_seconds

    def _history(self, requests: list[EditRequest], hparams: ROMEHyperParams, layer: int):
        """The keys earlier applied edits wrote at ``layer``, but those of edits these supersede."""
        if hparams.history_weight <= 0:
            return None
        return self.stack.written_keys(f"{self.spec.mlp_out_at(layer)}.weight",
                                       keep=lambda fact: not any(same_fact(fact, r) for r in requests))

    def _same_subject(self, request: EditRequest, hparams: ROMEHyperParams) -> list[str]:
        if hparams.same_subject_weight <= 0 and hparams.locality_kl_factor <= 0:
            return []
        return same_subject_prompts(request.subject, request.language, request.text, hparams.same_subject_prompts)

    def _other_subjects(self, request: EditRequest, hparams: ROMEHyperParams) -> list[tuple[str, str]]:
        if hparams.other_subjects_weight <= 0:
            return []
        return other_subject_prompts(request.template, request.subject, request.language, hparams.other_subjects)

    # -- the edit state: superseding and rebasing ---------------------------------------------

    def superseded(self, request: EditRequest, layer: int | None = None) -> list[WeightDelta]:
        """The applied deltas that wrote the same fact as ``request`` — the same subject and
        prompt (case and spacing aside), at ``layer`` if given: a newer edit of it supersedes them."""
        param = None if layer is None else f"{self.spec.mlp_out_at(layer)}.weight"
        return [d for d in self.stack.applied
                if any(same_fact(r, request) for r in d.meta.get("requests", [d.meta.get("request")]))
                and (param is None or any(p.param == param for p in d.pieces()))]

    def rebased(self, delta: WeightDelta, without: WeightDelta) -> WeightDelta:
        """``delta`` recomputed to write its values at its keys on the current weights less
        ``without`` (same input directions V, new output factors U): when ``without`` — an edit
        ``delta`` superseded — is reverted, the newer fact stays exactly as it was written."""
        if delta.keys is None or delta.kind in ("dense", "compound") or without.param != delta.param:
            raise ValueError("only a delta that records its keys, on the same matrix, can be rebased")
        param = self.model.get_parameter(delta.param)
        keys = delta.keys.float().to(param.device)  # (n, d_in)
        weights = param.detach().float()
        weights = weights.T if delta.transposed else weights  # (d_out, d_in)
        own, gone = delta.matrix(), without.matrix()
        own, gone = (own.T, gone.T) if delta.transposed else (own, gone)
        before = (weights - own.to(weights) - gone.to(weights)) @ keys.T  # (d_out, n): what the rest gives
        bias = getattr(self.model.get_submodule(delta.param.rsplit(".", 1)[0]), "bias", None)
        if bias is not None:  # the recorded values are the projection's outputs, bias included (GPT-2, GPT-J)
            before = before + bias.detach().float().to(before.device)[:, None]
        residual = delta.tensors["values"].float().to(weights).T - before  # (d_out, n)
        _, v = delta.factors()
        gram = v.to(weights) @ keys.T  # (n, n): G[i, j] = v_iᵀ k_j
        u = torch.linalg.solve(gram.T.double(), residual.T.double()).float()  # (n, d_out): Uᵀ G = R
        tensors = dict(delta.tensors)
        if delta.kind == "rank_one":
            tensors["u"] = u[0].cpu()
        else:
            tensors["U"] = u.cpu()
        meta = {**delta.meta, "rebased_from": delta.id, "rebased_without": without.id}
        return WeightDelta(param=delta.param, kind=delta.kind, tensors=tensors, transposed=delta.transposed,
                           meta=meta)


def same_fact(recorded: dict | None, request: EditRequest) -> bool:
    """Whether a delta's recorded request is ``request``'s fact (subject and prompt text)."""
    if not recorded:
        return False

    def norm(text: str) -> str:
        return " ".join(text.split()).casefold()

    try:
        earlier = EditRequest.model_validate(recorded)
    except ValueError:
        return False
    return norm(earlier.subject) == norm(request.subject) and norm(earlier.text) == norm(request.text)
