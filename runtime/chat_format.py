"""Turn a conversation into model input text, and decide when an answer has ended.

Two formats: the tokenizer's own chat template (instruct models), or a few-shot
``User:``/``Assistant:`` transcript for base models (prompts/fewshot.txt).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria

import prompts
from runtime.profiles import ModelProfile

Message = dict[str, str]  # {"role": "user"|"assistant"|"system", "content": str}


def render_chat(messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, profile: ModelProfile) -> str:
    """The text the model continues to answer the last user message (``runtime.conversation``
    puts the product's system prompt first)."""
    if profile.chat_format == "template":
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    lines = [prompts.load("fewshot")]
    for message in messages:
        if message["role"] == "system":
            continue  # the few-shot header plays the system prompt's part
        speaker = "User" if message["role"] == "user" else "Assistant"
        lines.append(f"{speaker}: {message['content'].strip()}")
    return "\n\n".join(lines) + "\nAssistant:"


def strip_stop(text: str, profile: ModelProfile) -> str:
    """Cut an answer at the first stop string (the few-shot adapter's next turn)."""
    cut = len(text)
    for stop in profile.stop_strings:
        i = text.find(stop)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].strip()


class StopOnEvent(StoppingCriteria):
    """Stop when a threading.Event is set (the Stop button)."""

    def __init__(self, event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
