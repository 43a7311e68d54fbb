"""Rows of the edit log, as pydantic models (they cross from storage to the agents and UI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

EditStatus = Literal["pending", "applied", "failed", "reverted"]


class EditRecord(BaseModel):
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


class AuthAttempt(BaseModel):
    id: int
    at: str
    session: str
    action: str
    success: bool


class CheckpointRecord(BaseModel):
    id: int
    created_at: str
    path: str
    edit_ids: list[int]
    seconds: float | None = None
