"""Read what a model believes: target probabilities and greedy completions (batched)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.request import continuation
from editing.tokens import encode, pad_batch, pad_id


@torch.no_grad()
def target_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    targets: list[str],
) -> list[tuple[float, float, list[bool]]]:
    """For each (prompt, target): (mean log P per target token, P of the whole target,
    per-token "argmax equals the target token" under teacher forcing).

    ``targets`` are joined to prompts by the leading-space rule of ``editing.request``.
    """
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
        hits = (logp.argmax(-1) == ids).tolist()
        results.append((float(token_logp.mean()), float(token_logp.sum().exp()), hits))
    return results


def target_probability(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> float:
    return target_logprobs(model, tokenizer, [prompt], [target])[0][1]


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
