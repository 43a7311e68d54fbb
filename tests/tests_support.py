"""Builders shared by tests (the real services, in a temporary folder)."""

from __future__ import annotations

from pathlib import Path

from agents.assistant import Assistant
from agents.chat import ChatAgent
from agents.intent import IntentAgent
from agents.locks import RWLock
from agents.service import EditService
from editing.engine import Editor
from runtime.loader import LoadedModel, amend_home
from storage.db import EditLog
from storage.passwords import PasswordStore

PASSWORD = "correct horse"


def make_assistant(loaded: LoadedModel, tmp_path: Path, *, password: str | None = PASSWORD,
                   hparams: dict | None = None, db_path: Path | None = None) -> Assistant:
    lock = RWLock()
    chat = ChatAgent(loaded, lock)
    editor = Editor(loaded.model, loaded.tokenizer, stats_dir=amend_home() / "stats",
                    default_layer=loaded.profile.default_edit_layer, chat_prompt=chat.prompt_text)
    log = EditLog(db_path or tmp_path / "amend.sqlite")
    passwords = PasswordStore(log)
    if password and not passwords.is_set:
        passwords.set(password)
    service = EditService(loaded, editor, log, passwords, tmp_path / "deltas", lock=lock, chat=chat, hparams=hparams)
    return Assistant(chat, IntentAgent(), service, tmp_path / "checkpoints")
