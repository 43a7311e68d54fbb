"""Read what a model believes: target probabilities and greedy completions (batched)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from editing.machinery.forward import final_logits, last_hidden
from editing.machinery.tokens import encode, pad_batch, pad_id
from editing.request import continuation
from editing.spec import spec_for


class TargetScore(NamedTuple):
    mean_logp: float  # mean log P per target token
    prob: float  # P of the whole target sequence
    hits: list[bool]  # per token: argmax equals the target token (teacher forcing)
    argmax: list[int]  # per token: the predicted token id


@torch.no_grad()
def target_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    targets: list[str],
    batch_size: int = 16,
) -> list[TargetScore]:
    """Teacher-forced scores of each (prompt, target), computed in batches.

    ``targets`` are joined to prompts by the leading-space rule of ``editing.request``.
    Pairs whose model input is the same (a prompt scored against a true and a new one-token
    target, as CounterFact asks) share one row.
    """
    rows: dict[tuple[int, ...], int] = {}  # model input (prompt + target[:-1]) -> row
    spans = []  # (row, first target position, target ids) per pair
    for prompt, target in zip(prompts, targets):
        p = encode(tokenizer, prompt)
        t = tokenizer(continuation(prompt, target), add_special_tokens=False).input_ids
        row = rows.setdefault(tuple(p + t[:-1]), len(rows))
        spans.append((row, len(p), t))
    inputs = [list(ids) for ids in rows]
    logp_at: dict[tuple[int, int], torch.Tensor] = {}  # (row, position) -> log-distribution of the next token
    spec = spec_for(model)
    device = next(model.parameters()).device
    for first in range(0, len(inputs), batch_size):
        batch = pad_batch(inputs[first : first + batch_size], pad_id(tokenizer), device)
        hidden = last_hidden(model, spec, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             use_cache=False)
        # unembed only the positions that predict target tokens (gemma's vocabulary has 262k rows)
        wanted = sorted({(row, start - 1 + j) for row, start, t in spans if first <= row < first + batch_size
                         for j in range(len(t))})
        logp = final_logits(model, spec, hidden[[r - first for r, _ in wanted], [p for _, p in wanted]])
        logp_at.update(zip(wanted, logp.float().log_softmax(-1)))
    results = []
    for row, start, t in spans:
        logp = torch.stack([logp_at[(row, start - 1 + j)] for j in range(len(t))])  # (len(t), vocab)
        ids = torch.tensor(t, device=device)
        token_logp = logp.gather(1, ids[:, None]).squeeze(1)
        argmax = logp.argmax(-1)
        results.append(TargetScore(float(token_logp.mean()), float(token_logp.sum().exp()),
                                   (argmax == ids).tolist(), argmax.tolist()))
    return results


def target_probability(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> float:
    return target_logprobs(model, tokenizer, [prompt], [target])[0].prob


class _StopWhen(StoppingCriteria):
    """Ends each row once ``done(text so far)`` holds for its decoded continuation."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, start: int, done: Callable[[str], bool]) -> None:
        self.tokenizer, self.start, self.done = tokenizer, start, done

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        return torch.tensor([self.done(t) for t in texts], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def greedy_completions(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 8,
    *,
    done: Callable[[str], bool] | None = None,
) -> list[str]:
    """Greedy continuations of several prompts, generated together (left-padded).

    ``done(text)``, if given, ends a row early once its continuation satisfies it (for a
    caller whose verdict can no longer change, e.g. "the answer already names the target")."""
    if not prompts:
        return []
    rows = [encode(tokenizer, p) for p in prompts]
    width = max(len(r) for r in rows)
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        stopping_criteria=StoppingCriteriaList([_StopWhen(tokenizer, width, done)]) if done else None,
    )
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def greedy_completion(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 8
) -> str:
    return greedy_completions(model, tokenizer, [prompt], max_new_tokens)[0]
