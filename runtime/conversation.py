"""How the loaded model chats: one definition for the product and for every measurement of it.

The text a question is sent as (the product's system prompt, then the model's chat template
or, for a base model, the few-shot ``User:``/``Assistant:`` adapter), the generation settings
and the stop rule live here.  The chat agent (``agents.chat``) streams answers through it for
people; the editing engine optimises the chat form of an edit through ``prompt_text``; the
evaluation's chat-level metric and the benchmarks ask ``answer`` — the same answer the chat
agent gives to a fresh conversation, byte for byte (``tests/test_chat.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

import prompts
from runtime.chat_format import Message, render_chat, strip_stop
from runtime.language import language_of
from runtime.loader import LoadedModel


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy, reproducible
    timeout_s: float = 120.0  # longest wait for the next token before giving up (streaming)


class _StopWhen(StoppingCriteria):
    """Ends the answer once ``done(answer so far)`` holds (one row)."""

    def __init__(self, decode: Callable[[torch.Tensor], str], start: int, done: Callable[[str], bool]) -> None:
        self.decode, self.start, self.done = decode, start, done

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        finished = self.done(self.decode(input_ids[0, self.start :]))
        return torch.full((input_ids.shape[0],), finished, dtype=torch.bool, device=input_ids.device)


class Conversation:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def system_message(self, text: str) -> Message:
        """The product's system prompt, in the language of ``text`` (the person's message)."""
        return {"role": "system", "content": prompts.load(f"system_{language_of(text)}")}

    def render(self, turns: Sequence[Message]) -> str:
        """The text the model continues to answer the last of ``turns`` (system prompt first)."""
        last = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "")
        return render_chat([self.system_message(last), *turns], self.loaded.tokenizer, self.loaded.profile)

    @property
    def answer_lead(self) -> str:
        """What comes between ``prompt_text`` and an answer's first character: the few-shot
        transcript's answers follow "Assistant: " (so the model's first token carries the space);
        a chat template's assistant turn starts the answer directly."""
        return " " if self.loaded.profile.chat_format == "fewshot" else ""

    def prompt_text(self, question: str) -> str:
        """The exact text a fresh conversation sends for ``question``."""
        return self.render([{"role": "user", "content": question}])

    def encode(self, text: str) -> list[int]:
        # The rendered text already carries BOS / special tokens where the template wants them;
        # the few-shot transcript of a base model needs the tokenizer's BOS.
        add = self.loaded.profile.chat_format == "fewshot"
        return self.loaded.tokenizer(text, add_special_tokens=add).input_ids

    def generate_kwargs(self, input_ids: torch.Tensor, settings: GenerationSettings) -> dict[str, Any]:
        """``model.generate`` arguments of an answer (greedy at temperature 0); the profile's
        suppressed tokens are on the model's generation config (``runtime.loader``)."""
        tok = self.loaded.tokenizer
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=settings.max_new_tokens,
            eos_token_id=self.loaded.eos_token_ids or None,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else self.loaded.eos_token_ids[0],
        )
        if settings.temperature > 0:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=0.95)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def finish(self, text: str) -> str:
        """An answer as shown: cut at the first stop string (the few-shot adapter's next turn)."""
        return strip_stop(text, self.loaded.profile)

    @torch.inference_mode()
    def answer(self, question: str, settings: GenerationSettings | None = None, *,
               done: Callable[[str], bool] | None = None) -> str:
        """The answer a fresh conversation gets to ``question``.  ``done(answer so far)`` may
        end it early once the caller's verdict can no longer change; generation also ends where
        the answer as shown ends (a stop string), as the chat agent's does."""
        settings = settings or GenerationSettings()
        tok = self.loaded.tokenizer
        ids = torch.tensor([self.encode(self.prompt_text(question))], device=self.loaded.device)

        def decode(new: torch.Tensor) -> str:
            return tok.decode(new, skip_special_tokens=True)

        def ended(text: str) -> bool:
            shown = self.finish(text)
            return len(shown) < len(text.strip()) or (done is not None and done(shown))

        criteria = StoppingCriteriaList([_StopWhen(decode, ids.shape[1], ended)])
        out = self.loaded.model.generate(**self.generate_kwargs(ids, settings), stopping_criteria=criteria)
        return self.finish(decode(out[0, ids.shape[1] :]))
