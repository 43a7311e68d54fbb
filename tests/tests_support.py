"""Builders shared by tests (the real services, in a temporary folder)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from agents.assistant import Assistant
from agents.chat import ChatAgent
from agents.intent import IntentAgent
from agents.locks import RWLock
from agents.service import EditService
from editing.engine import Editor
from runtime.loader import LoadedModel
from storage.db import EditLog
from storage.passwords import PasswordStore

PASSWORD = "correct horse"


def make_assistant(loaded: LoadedModel, tmp_path: Path, *, password: str | None = PASSWORD,
                   hparams: dict | None = None, db_path: Path | None = None) -> Assistant:
    lock = RWLock()
    chat = ChatAgent(loaded, lock)
    editor = Editor.for_model(loaded)
    log = EditLog(db_path or tmp_path / "amend.sqlite")
    passwords = PasswordStore(log)
    if password and not passwords.is_set:
        passwords.set(password)
    service = EditService(loaded, editor, log, passwords, tmp_path / "deltas", checkpoints_dir=tmp_path / "checkpoints",
                          lock=lock, chat=chat, hparams=hparams)
    return Assistant(chat, IntentAgent(), service)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_app(assistant: Assistant, *, auth: Callable[[str, str], bool] | None = None,
               concurrency: int | None = None) -> Iterator[str]:
    """The Gradio app on a free local port; yields its URL, closes it and reverts every edit."""
    import app

    demo = app.build_ui(assistant)
    demo.queue(default_concurrency_limit=concurrency) if concurrency else demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, auth=auth)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        assistant.stop_all()  # an answer still streaming must not outlive the test
        demo.close()
        assistant.service.close()
        assistant.service.stack.revert_all()


def run_together(*calls: Callable):
    """Run the calls in threads started together; return their results (or raise the first error)."""
    results: list = [None] * len(calls)
    errors: list[BaseException] = []
    start = threading.Barrier(len(calls))

    def worker(i, call):
        start.wait()
        try:
            results[i] = call()
        except BaseException as exc:  # noqa: B036 - re-raised below, in the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
