"""Logit lens and the thesis's automatic layer choice (Algorithm 2).

The logit lens decodes every layer's last-token hidden state through the final norm and the
unembedding.  ``choose_layer`` takes the token that is the top prediction at the most layers
(the prompt's pattern "parsed") and returns the first layer where it is on top.  Guards: the
first and the last layer are never chosen (the thesis saw both hurt: layer 0 has not read the
context, the last layer only formats the output); if no token is on top at two or more layers,
the model's default layer is used.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.machinery.forward import final_logits
from editing.machinery.hooks import TraceDict
from editing.machinery.tokens import encode
from editing.request import continuation
from editing.spec import ModelSpec, spec_for


@dataclass
class LensResult:
    prompt: str
    layers: list[int]
    top_tokens: list[str]  # per layer: the decoded top-1 token
    top_ids: list[int]
    answer: str  # the model's own next token (last layer's top-1)
    answer_prob: list[float]  # per layer: P(answer)
    answer_rank: list[int]
    target: str | None = None
    target_prob: list[float] | None = None
    target_rank: list[int] | None = None


@torch.no_grad()
def logit_lens(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, target: str | None = None,
               spec: ModelSpec | None = None) -> LensResult:
    spec = spec or spec_for(model)
    depth = len(model.get_submodule(spec.layers))
    device = next(model.parameters()).device
    ids = torch.tensor([encode(tokenizer, prompt)], device=device)
    paths = [spec.layer(i) for i in range(depth)]
    with TraceDict(model, paths) as trace:
        model(input_ids=ids, use_cache=False)
    hidden = torch.stack([trace[p].output[0, -1] for p in paths])  # (layers, d)
    probs = final_logits(model, spec, hidden).float().softmax(-1)  # (layers, vocab)
    top = probs.argmax(-1)
    answer_id = int(top[-1])

    def rank_of(token_id: int) -> tuple[list[float], list[int]]:
        p = probs[:, token_id]
        ranks = (probs > p[:, None]).sum(-1)
        return p.tolist(), ranks.tolist()

    answer_prob, answer_rank = rank_of(answer_id)
    result = LensResult(prompt, list(range(depth)), [tokenizer.decode([int(t)]) for t in top], top.tolist(),
                        tokenizer.decode([answer_id]), answer_prob, answer_rank)
    if target:
        target_id = tokenizer(continuation(prompt, target), add_special_tokens=False).input_ids[0]
        result.target = target
        result.target_prob, result.target_rank = rank_of(target_id)
    return result


def choose_layer(lens: LensResult, fallback: int) -> int:
    """Algorithm 2: the first layer of the top token that repeats most across layers, within 1..L-2."""
    depth = len(lens.layers)
    allowed = list(range(1, depth - 1))
    counts = Counter(lens.top_ids[i] for i in allowed)
    if not counts:
        return fallback
    best_count = max(counts.values())
    if best_count < 2:
        return fallback
    first_layer = {}
    for i in allowed:
        first_layer.setdefault(lens.top_ids[i], i)
    token = min((t for t, c in counts.items() if c == best_count), key=lambda t: first_layer[t])
    return first_layer[token]
