"""Rows of the edit log, as pydantic models (they cross from storage to the agents and UI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

EditStatus = Literal["pending", "applied", "failed", "reverted"]


class EditRecord(BaseModel):
    """One row of the edit log.  ``session`` is the editing browser session's pseudonym (never
    its id); ``question`` is the person's own chat message, so ``public()`` leaves both out."""

    model_config = ConfigDict(extra="ignore")

    id: int
    created_at: str
    session: str
    subject: str
    prompt: str
    question: str | None = None
    target_old: str | None = None
    target_new: str
    method: str
    layer: int | None = None
    hparams: dict[str, Any] = {}
    model_fingerprint: str | None = None
    delta_id: str | None = None
    delta_path: str | None = None
    delta_sha256: str | None = None
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    seconds: float | None = None
    status: EditStatus
    error: str | None = None
    applied_at: str | None = None
    reverted_at: str | None = None
    batch_id: str | None = None  # facts imported together share one delta (reverted as one)


    def public(self, *, own: bool = False) -> dict[str, Any]:
        """The row as any session may see it: no session pseudonym, and the question only for
        the session that asked it (``own``)."""
        return self.model_dump(exclude={"session"} if own else {"session", "question"})


class AuthAttempt(BaseModel):
    id: int
    at: str
    session: str
    action: str
    success: bool
    address: str | None = None


class CheckpointRecord(BaseModel):
    id: int
    created_at: str
    path: str
    edit_ids: list[int]
    seconds: float | None = None
