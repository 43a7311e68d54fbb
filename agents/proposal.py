"""The edit proposal: what the intent agent understood a correction to mean."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from editing.request import check_subject_in_prompt
from runtime.language import Language, language_of


class EditProposal(BaseModel):
    """A proposed fact edit, as the confirmation card shows it.  It is a suggestion only:
    applying it needs a person's confirmation and the edit password
    (``agents.service.EditService.apply``).

    Why a type of its own: it is the agent's reading of a chat message, with what only the
    chat knows (the answer it replaces, the question it answered, which extractor read it),
    before any model has checked it.  ``editing.request.EditRequest`` is what the engine
    edits (validated against the tokenizer, placed in the prompt), and
    ``storage.records.EditRecord`` is the log's row of what was done.  ``language`` is not
    the extractor's to say: it is ``runtime.language.language_of`` of the prompt and the new
    answer, the same text the request's language is read from.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str
    prompt: str  # contains the subject verbatim, e.g. "The Eiffel Tower is located in"
    target_new: str
    target_old: str | None = None
    question: str | None = None  # the question the correction answered (chat form of the edit)
    language: Language = "en"
    extractor: Literal["llm", "parser"]

    @model_validator(mode="before")
    @classmethod
    def _language(cls, data: Any) -> Any:
        if isinstance(data, dict):
            text = f"{data.get('prompt') or ''}{data.get('target_new') or ''}"
            data = {**data, "language": language_of(text)}
        return data

    @field_validator("subject", "prompt", "target_new")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _subject_in_prompt(self) -> EditProposal:
        check_subject_in_prompt(self.subject, self.prompt)
        if self.target_old and self.target_old.strip().lower() == self.target_new.strip().lower():
            raise ValueError("the new target equals the old one")
        return self
