"""Text sampled from the model itself: ROME's random prefixes, and the offline corpus.

Sampling is seeded (its own generator: the global RNG state is untouched).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.machinery.tokens import encode

SEED_WORDS = {
    "en": ("The", "Therefore", "Because", "I", "You", "In", "When", "It", "A", "She"),
    "zh": ("我们", "在", "这个", "他们", "因为", "今天", "中国", "一个", "如果", "她"),
}
PREFIX_JOINER = {"en": ". ", "zh": "。"}


@torch.no_grad()
def sample_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    language: str,
    n: int,
    new_tokens: int,
    seed: int = 0,
    top_k: int = 5,
) -> list[str]:
    """``n`` continuations of exactly ``new_tokens`` tokens (top-k sampling at temperature 1)
    from seed words of ``language``.

    A small loop of our own instead of ``generate``: that draws each token from the whole
    vocabulary, which on gemma3-270m (262k tokens, 64 rows) took a quarter of the statistics'
    sampling time; here the draw is among the top k only, and only the last position is unembedded.
    """
    from transformers import DynamicCache

    words = SEED_WORDS[language]
    device = next(model.parameters()).device
    rows = [encode(tokenizer, words[i % len(words)]) for i in range(n)]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # left padding: every row's continuation starts at the same position
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    banned = [t for t in {tokenizer.eos_token_id, pad} if t is not None]  # exactly new_tokens real tokens
    generator = torch.Generator(device=device).manual_seed(seed)
    cache = DynamicCache(config=model.config)
    step_ids, new = ids, []
    for _ in range(new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        logits[:, banned] = -torch.inf
        top = logits.topk(top_k, dim=-1)
        choice = torch.multinomial(top.values.softmax(-1), 1, generator=generator)
        step_ids = top.indices.gather(1, choice)  # (n, 1)
        new.append(step_ids)
        mask = torch.cat([mask, torch.ones_like(step_ids)], 1)
        positions = positions[:, -1:] + 1
    out = torch.cat([ids, *new], 1)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def sample_prefixes(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    language: str,
    n: int,
    lengths: tuple[int, ...],
    seed: int = 0,
) -> list[str]:
    """ROME's context templates: ``["{}", "<prefix>. {}", ...]`` (bare prompt first)."""
    templates = ["{}"]
    if n <= 0:
        return templates
    joiner = PREFIX_JOINER[language]
    per_length = -(-n // len(lengths))
    for i, length in enumerate(lengths):
        for text in sample_texts(model, tokenizer, language=language, n=per_length, new_tokens=length, seed=seed + i):
            text = text.replace("{", " ").replace("}", " ").strip().rstrip(".。")
            templates.append(text + joiner + "{}")
    return templates[: n + 1]
