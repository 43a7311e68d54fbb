"""Tokenisation helpers shared by every method: encode prompt+target, find the subject."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text``, with the tokenizer's BOS unless the text already starts with it."""
    bos = tokenizer.bos_token
    add = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add).input_ids


@dataclass(frozen=True)
class PromptTarget:
    """One training/evaluation row: prompt ids followed by target ids, and where things are."""

    ids: list[int]  # prompt + target[:-1] (teacher forcing input)
    target_ids: list[int]
    target_positions: list[int]  # position whose next-token prediction is target_ids[i]
    subject_positions: list[int]  # last token of each subject occurrence


def _char_to_token(offsets: list[tuple[int, int]], char_index: int) -> int:
    for i, (start, end) in enumerate(offsets):
        if start <= char_index < end:
            return i
    # a character inside a multi-char token merged across the boundary: nearest token before
    best = 0
    for i, (start, _end) in enumerate(offsets):
        if start <= char_index:
            best = i
    return best


def _token_offsets(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, list[tuple[int, int]]]:
    """(how many special tokens ``encode`` puts before the text's tokens — BOS or nothing,
    the character span of each of the text's tokens)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return len(encode(tokenizer, text)) - len(enc.input_ids), enc.offset_mapping


def subject_last_positions(tokenizer: PreTrainedTokenizerBase, text: str, subject: str) -> list[int]:
    """Index of the last token of every occurrence of ``subject`` in ``text`` (BOS counted)."""
    offset, spans = _token_offsets(tokenizer, text)
    positions = []
    start = text.find(subject)
    while start != -1 and subject:
        positions.append(offset + _char_to_token(spans, start + len(subject) - 1))
        start = text.find(subject, start + len(subject))
    if not positions:
        raise ValueError(f"subject {subject!r} not found in {text!r}")
    return positions


def subject_span(tokenizer: PreTrainedTokenizerBase, text: str, subject: str) -> tuple[int, int]:
    """[start, end) token indices of the first occurrence of ``subject`` in ``text`` (BOS counted)."""
    offset, spans = _token_offsets(tokenizer, text)
    start_char = text.find(subject)
    if start_char < 0 or not subject:
        raise ValueError(f"subject {subject!r} not found in {text!r}")
    end_char = start_char + len(subject)
    inside = [i for i, (a, b) in enumerate(spans) if a < end_char and b > start_char]
    return offset + inside[0], offset + inside[-1] + 1


def prompt_target(tokenizer: PreTrainedTokenizerBase, text: str, target: str, subject: str) -> PromptTarget:
    """``text`` is the full prompt; ``target`` already carries its leading space if any."""
    prompt_ids = encode(tokenizer, text)
    target_ids = tokenizer(target, add_special_tokens=False).input_ids
    ids = prompt_ids + target_ids[:-1]
    start = len(prompt_ids) - 1
    return PromptTarget(
        ids=ids,
        target_ids=target_ids,
        target_positions=list(range(start, start + len(target_ids))),
        subject_positions=subject_last_positions(tokenizer, text, subject),
    )


@dataclass
class Batch:
    input_ids: torch.Tensor  # (n, seq), right-padded
    attention_mask: torch.Tensor  # (n, seq)


def pad_batch(rows: list[list[int]], pad_id: int, device: torch.device) -> Batch:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return Batch(ids.to(device), mask.to(device))


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id or 0


def length_buckets(lengths: list[int], ratio: float = 2.0) -> list[list[int]]:
    """Row indices grouped so that no row is padded to more than ``ratio`` times its length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lengths[i] <= ratio * lengths[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets
