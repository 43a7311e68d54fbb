"""Evaluation metrics of one edit case (the thesis's §2.4, EasyEdit and ROME conventions).

Token-level metrics are teacher-forced: the target tokens are fed, and a position counts
when the model's argmax at it equals the target token.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.evaluation.data import EditCase
from editing.machinery.probe import TargetScore, target_logprobs
from runtime.conversation import Conversation
from runtime.language import HAN_CHARS


def token_accuracy(score: TargetScore) -> float:
    return float(np.mean(score.hits)) if score.hits else 0.0


def unchanged_share(before: TargetScore, after: TargetScore) -> float:
    """Locality as EasyEdit computes it: share of positions whose predicted token did not change."""
    return float(np.mean(np.equal(before.argmax, after.argmax))) if before.argmax else 1.0


_WORDS = re.compile(f"[{HAN_CHARS}]|[^\\s{HAN_CHARS}]+")  # a Han character, or a run of anything else but space


def ngram_entropy(text: str, ns: tuple[int, ...] = (2, 3), weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """ROME's generation fluency: weighted mean of n-gram entropies of the tokens of ``text``:
    its words, and each CJK character a word of its own (Chinese has no spaces, and a Latin name
    inside a Chinese sentence must not turn the whole sentence into one or two "words")."""
    tokens = _WORDS.findall(text)
    values = []
    for n in ns:
        grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        total = sum(grams.values())
        if not total:
            values.append(0.0)
            continue
        freqs = np.array(list(grams.values())) / total
        values.append(float(-(freqs * np.log2(freqs)).sum()))
    return float(np.average(values, weights=weights)) if values else 0.0


def probe_case(model: nn.Module, tokenizer: PreTrainedTokenizerBase, case: EditCase) -> dict[str, list[TargetScore]]:
    """Every teacher-forced score a case needs, in one batched pass."""
    req = case.request
    groups: dict[str, list[tuple[str, str]]] = {
        "rel_new": [(req.text, req.target_new)],
        "rel_true": [(req.text, req.target_true)] if req.target_true else [],
        "gen_new": [(p, req.target_new) for p in case.paraphrases],
        "gen_true": [(p, req.target_true) for p in case.paraphrases] if req.target_true else [],
        "loc": case.locality,
        "loc_new": [(p, req.target_new) for p, _ in case.locality],
        "same": case.same_subject,
        "port": case.portability,
    }
    flat = [(name, p, t) for name, pairs in groups.items() for p, t in pairs]
    scores = target_logprobs(model, tokenizer, [p for _, p, _ in flat], [t for _, _, t in flat])
    out: dict[str, list[TargetScore]] = {name: [] for name in groups}
    for (name, _, _), score in zip(flat, scores):
        out[name].append(score)
    return out


def chat_success(case: EditCase, conversation: Conversation) -> float | None:
    """Share of the case's questions whose chat answer names the new target: the answer a fresh
    conversation in the product gets (its system prompt, template or few-shot adapter and
    default settings: greedy, up to 128 new tokens), ended early once it names the target."""
    if not case.questions:
        return None
    target = case.request.target_new.lower()
    answers = [conversation.answer(q, done=lambda shown: target in shown.lower()) for q in case.questions]
    return float(np.mean([target in a.lower() for a in answers]))


def case_metrics(before: dict[str, list[TargetScore]], after: dict[str, list[TargetScore]]) -> dict[str, float]:
    """The thesis's metrics and CounterFact's probability scores from pre/post probes."""

    def mean(values):
        values = list(values)
        return float(np.mean(values)) if values else math.nan

    m = {
        "reliability": mean(token_accuracy(s) for s in after["rel_new"]),
        "generalization": mean(token_accuracy(s) for s in after["gen_new"]),
        "locality": mean(unchanged_share(b, a) for b, a in zip(before["loc"], after["loc"])),
        "same_subject_locality": mean(unchanged_share(b, a) for b, a in zip(before["same"], after["same"])),
        "portability": mean(token_accuracy(s) for s in after["port"]),
    }
    if after["rel_true"]:
        m["efficacy"] = float(after["rel_new"][0].mean_logp > after["rel_true"][0].mean_logp)
        m["paraphrase"] = mean(n.mean_logp > t.mean_logp for n, t in zip(after["gen_new"], after["gen_true"]))
        m["neighborhood"] = mean(t.mean_logp > n.mean_logp for t, n in zip(after["loc"], after["loc_new"]))
    return m


def summarize(values: list[float]) -> tuple[float, float, int]:
    """Mean and the half-width of its 95% confidence interval (normal approximation)."""
    xs = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(xs) == 0:
        return math.nan, math.nan, 0
    half = 1.96 * xs.std(ddof=1) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
    return float(xs.mean()), float(half), len(xs)
