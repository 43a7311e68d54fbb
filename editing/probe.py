"""Read what a model believes: target probabilities and greedy completions (batched)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.request import continuation
from editing.tokens import encode, pad_batch, pad_id


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
    """
    if len(prompts) > batch_size:
        return [s for i in range(0, len(prompts), batch_size)
                for s in target_logprobs(model, tokenizer, prompts[i:i + batch_size], targets[i:i + batch_size],
                                         batch_size)]
    if not prompts:
        return []
    rows, spans = [], []
    for prompt, target in zip(prompts, targets):
        p = encode(tokenizer, prompt)
        t = tokenizer(continuation(prompt, target), add_special_tokens=False).input_ids
        rows.append(p + t)
        spans.append((len(p), t))
    device = next(model.parameters()).device
    batch = pad_batch(rows, pad_id(tokenizer), device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    results = []
    for i, (start, t) in enumerate(spans):
        logp = logits[i, start - 1 : start - 1 + len(t)].float().log_softmax(-1)  # (len(t), vocab)
        ids = torch.tensor(t, device=device)
        token_logp = logp.gather(1, ids[:, None]).squeeze(1)
        argmax = logp.argmax(-1)
        results.append(TargetScore(float(token_logp.mean()), float(token_logp.sum().exp()),
                                   (argmax == ids).tolist(), argmax.tolist()))
    return results


def target_probability(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> float:
    return target_logprobs(model, tokenizer, [prompt], [target])[0].prob


@torch.no_grad()
def greedy_completion(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 8
) -> str:
    ids = torch.tensor([encode(tokenizer, prompt)], device=next(model.parameters()).device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id(tokenizer),
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
