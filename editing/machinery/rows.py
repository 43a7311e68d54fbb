"""The rows an edit is optimised on: the prompt behind each context prefix, its chat form,
and the KL prompts, tokenised once with the target and the subject's positions.

Shared by every method (ROME's v*, FT's ΔW); the chat form is the question as the product
sends it (``runtime.conversation``) followed by the prompt, so the edit shows in chat answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from editing.machinery.tokens import PromptTarget, prompt_target
from editing.request import EditRequest

ChatPromptFn = Callable[[str], str]  # question -> rendered chat text up to the assistant's answer

ESSENCE = {"en": "{} is a", "zh": "{}是"}
DEFAULT_QUESTION = {"en": "Complete the sentence: {}", "zh": "请补全这句话：{}"}


@dataclass
class EditRows:
    """The prompts an edit is optimised on, tokenised once."""

    rewrite: list[PromptTarget]  # prefixed prompts (+ chat form) -> target
    kl: list[PromptTarget]  # essence (+ same-subject) prompts; target unused, last position matters
    n_chat_rows: int = 0


def build_rows(
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    templates: list[str],
    *,
    chat_prompt: ChatPromptFn | None,
    locality_prompts: list[str] = (),
) -> EditRows:
    text, target = request.text, request.target_text()
    rewrite = [prompt_target(tokenizer, t.format(text), target, request.subject) for t in templates]
    n_chat = 0
    if chat_prompt is not None:
        question = request.question or DEFAULT_QUESTION[request.language].format(text)
        chat_text = chat_prompt(question) + text
        rewrite.append(prompt_target(tokenizer, chat_text, target, request.subject))
        n_chat = 1
    kl_texts = [ESSENCE[request.language].format(request.subject), *locality_prompts]
    kl = [prompt_target(tokenizer, t, "x", request.subject) for t in kl_texts]
    return EditRows(rewrite, kl, n_chat)
