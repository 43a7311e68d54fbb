"""Text sampled from the model itself: ROME's random prefixes, and the offline corpus.

Sampling is seeded and leaves the global RNG state untouched.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.tokens import encode

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
    """``n`` continuations of ``new_tokens`` tokens from seed words of ``language``."""
    words = SEED_WORDS[language]
    device = next(model.parameters()).device
    starts = [words[i % len(words)] for i in range(n)]
    rows = [encode(tokenizer, w) for w in starts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # left padding: every row's continuation starts at the same position
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            top_k=top_k,
            top_p=None,
            temperature=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad,
        )
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return texts


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
