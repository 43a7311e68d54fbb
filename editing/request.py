"""Edit requests: one validated, frozen description of the fact to write.

All templating rules live here: where the subject sits, whether the target needs a leading
space, how long prompt and target may be.
"""

from __future__ import annotations

import unicodedata

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from transformers import PreTrainedTokenizerBase

from editing.errors import EmptyTarget, PromptTooLong, SubjectNotInPrompt, TargetTooLong
from runtime.language import Language, is_cjk, language_of

MAX_TARGET_TOKENS = 32
MAX_PROMPT_TOKENS = 256
class EditRequest(BaseModel):
    """``prompt`` holds ``{}`` for the subject, or contains the subject verbatim.

    Example: prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower",
    target_new="Rome".  ``question`` is the chat form ("Where is the Eiffel Tower?") used to
    optimise the edit through the chat template as well.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    question: str | None = None
    # how the chat answer to ``question`` begins before the new answer, as the model says it
    # (" 拉赫蒂市政厅的建筑师是"); set by ``Editor.compute`` where ``chat_opening`` is on
    answer_opening: str | None = None

    @field_validator("subject", "prompt")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("target_new")
    @classmethod
    def _target(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise EmptyTarget()
        return value

    @model_validator(mode="after")
    def _subject_in_prompt(self) -> EditRequest:
        check_subject_in_prompt(self.subject, self.prompt)
        return self

    @property
    def template(self) -> str:
        """The prompt with ``{}`` at the (first) subject position; any other brace is the
        prompt's own text (doubled, so that ``template.format(subject)`` gives ``text``)."""
        if "{}" in self.prompt:
            before, _, after = self.prompt.partition("{}")
        else:
            before, _, after = self.prompt.partition(self.subject)
        return _literal(before) + "{}" + _literal(after)

    @property
    def text(self) -> str:
        """The prompt as the model reads it: the subject in its place, every other character as typed."""
        if "{}" in self.prompt:
            return self.prompt.replace("{}", self.subject, 1)
        return self.prompt

    @property
    def language(self) -> Language:
        return language_of(self.text + self.target_new)

    def target_text(self, target: str | None = None) -> str:
        """The target as it follows the prompt: " Rome" after English text, "医学" after Chinese."""
        return continuation(self.text, self.target_new if target is None else target)

    def check_lengths(self, tokenizer: PreTrainedTokenizerBase) -> None:
        n_target = len(tokenizer(self.target_text(), add_special_tokens=False).input_ids)
        if n_target == 0:  # characters the tokenizer drops
            raise EmptyTarget()
        if n_target > MAX_TARGET_TOKENS:
            raise TargetTooLong(n_target, MAX_TARGET_TOKENS)
        n_prompt = len(tokenizer(self.text, add_special_tokens=False).input_ids)
        if n_prompt > MAX_PROMPT_TOKENS:
            raise PromptTooLong(n_prompt, MAX_PROMPT_TOKENS)


def check_subject_in_prompt(subject: str, prompt: str) -> None:
    """The one subject check (the request's and the proposal's): a non-empty subject that the
    prompt holds verbatim, or a ``{}`` where it goes."""
    if not subject or ("{}" not in prompt and subject not in prompt):
        raise SubjectNotInPrompt(subject, prompt)


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def continuation(prompt: str, target: str) -> str:
    """Join rule: a space between Latin words, none after CJK text or before punctuation."""
    target = target.strip()
    if not prompt or prompt[-1].isspace():
        return target
    last, first = prompt[-1], target[:1]
    if is_cjk(last) or is_cjk(first) or unicodedata.category(first).startswith("P"):
        return target
    return " " + target
