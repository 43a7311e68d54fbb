"""The edit proposal: what the intent agent understood a correction to mean."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class EditProposal(BaseModel):
    """A proposed fact edit. It is a suggestion only: applying it needs a person's
    confirmation and the edit password (``agents.service.EditService.apply``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str
    prompt: str  # contains the subject verbatim, e.g. "The Eiffel Tower is located in"
    target_new: str
    target_old: str | None = None
    question: str | None = None  # the user's earlier question, for the chat form of the edit
    language: Literal["en", "zh"]
    extractor: Literal["llm", "parser"]

    @field_validator("subject", "prompt", "target_new")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _subject_in_prompt(self) -> EditProposal:
        if self.subject not in self.prompt:
            raise ValueError(f"subject {self.subject!r} does not occur in prompt {self.prompt!r}")
        if self.target_old and self.target_old.strip().lower() == self.target_new.strip().lower():
            raise ValueError("the new target equals the old one")
        return self
