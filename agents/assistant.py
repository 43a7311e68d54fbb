"""The product's front desk: everything a browser session can ask for, without Gradio.

``app.py`` turns these methods into UI events and API endpoints; tests call them directly.
The page talks to this facade only (and to its ``inspection`` service): never to the editor,
the loaded model or the lock behind them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from agents.chat import (
    MAX_MESSAGE_CHARS,
    ChatAgent,
    GenerationSettings,
    SessionStore,
    clean_message,
    is_clean_command,
    language_of,
)
from agents.inspection import InspectionService
from agents.intent import IntentAgent
from agents.proposal import EditProposal
from agents.service import METHODS, BatchReport, EditReport, EditService, EditServiceError
from editing.facts import FactRow
from storage.records import CheckpointRecord, EditRecord

log = logging.getLogger(__name__)

CLEARED_NOTICE = {"en": "Chat history cleared. The next answer comes from the model's weights alone.",
                  "zh": "对话历史已清空。接下来的回答只来自模型权重。"}
EMPTY_NOTICE = "Type a message first (an empty message is ignored)."
MAX_IMPORT_BYTES = 2_000_000
TOO_LONG_NOTICE = ("Your message has {n:,} characters; at most {limit:,} are read. Shorten it, or send the question "
                   "on its own.")


class SupersededEdit(BaseModel):
    """An applied edit of the same fact that the proposal would supersede."""

    id: int
    target_new: str


class ProposalView(BaseModel):
    """What the confirmation card shows; ``id`` is the one-time handle for Apply; ``supersedes``
    are applied edits of the same fact (the card offers to revert the latest instead)."""

    id: str
    proposal: EditProposal
    method: str
    layer: int
    supersedes: list[SupersededEdit] = []


@dataclass
class ChatTurn:
    answer: str
    proposal: ProposalView | None = None
    notice: str | None = None
    history: list[dict] = field(default_factory=list)


class Assistant:
    def __init__(self, chat: ChatAgent, intent: IntentAgent, service: EditService,
                 replay_problems: list[str] | None = None, sessions: SessionStore | None = None,
                 background: list[threading.Thread] = ()) -> None:
        self.chat, self.intent, self.service = chat, intent, service
        self.sessions = sessions or SessionStore()
        self.replay_problems = replay_problems or []
        self.background = list(background)  # start-up work (statistics, context prefixes) still running
        self.inspection = InspectionService(service.loaded, service.editor, service.lock,
                                            service.checkpoints_dir.parent / "inspect")

    @property
    def checkpoints_dir(self) -> Path:
        return self.service.checkpoints_dir

    # -- what the page shows of the model ---------------------------------------------------------

    methods = METHODS

    @property
    def default_method(self) -> str:
        return self.service.default_method

    @property
    def default_layer(self) -> int:
        return self.service.editor.default_layer

    @property
    def depth(self) -> int:
        return self.service.editor.depth

    # -- chat -----------------------------------------------------------------------------

    def chat_stream(self, session: str, message: str, settings: GenerationSettings | None = None) -> Iterator[ChatTurn]:
        """Yield the turn as it grows; the last one carries the proposal, if the message was a correction."""
        state = self.sessions.get(session)
        if isinstance(message, str) and len(message) > MAX_MESSAGE_CHARS:
            notice = TOO_LONG_NOTICE.format(n=len(message), limit=MAX_MESSAGE_CHARS)
            yield ChatTurn(answer="", notice=notice, history=list(state.history))
            return
        message = clean_message(message) if isinstance(message, str) else ""
        if not message:
            yield ChatTurn(answer="", notice=EMPTY_NOTICE, history=list(state.history))
            return
        if is_clean_command(message):
            state.clear()
            yield ChatTurn(answer="", notice=CLEARED_NOTICE[language_of(message)], history=[])
            return
        previous_answer = next((m["content"] for m in reversed(state.history) if m["role"] == "assistant"), None)
        previous_question = next((m["content"] for m in reversed(state.history) if m["role"] == "user"), None)
        proposal = self.intent.propose(message, previous_answer, previous_question)
        state.stop_event = threading.Event()
        history = list(state.history)
        answer = ""
        if proposal is not None:
            # a correction is answered by the confirmation card, not by the model arguing back
            view = self._register(session, proposal)
            answer = _proposal_sentence(view)
            state.history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]
            yield ChatTurn(answer=answer, proposal=view, history=list(state.history))
            return
        for answer in self.chat.stream(history, message, settings, state.stop_event):
            yield ChatTurn(answer=answer, history=[*history, {"role": "user", "content": message},
                                                   {"role": "assistant", "content": answer}])
        state.history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]
        yield ChatTurn(answer=answer, history=list(state.history))

    def stop(self, session: str) -> None:
        self.sessions.get(session).stop_event.set()

    def stop_all(self) -> None:
        """Stop every session's generation and wait until none is running (shutdown)."""
        self.sessions.stop_all()
        with self.service.lock.write():
            pass

    def close(self) -> None:
        """Stop every generation and wait for the start-up work: a thread still inside the model
        when the interpreter exits aborts the process."""
        self.stop_all()
        self.service.close()
        for thread in self.background:
            thread.join()

    def clean(self, session: str) -> str:
        self.sessions.get(session).clear()
        return CLEARED_NOTICE["en"]

    def history(self, session: str) -> list[dict]:
        return list(self.sessions.get(session).history)

    def _register(self, session: str, proposal: EditProposal) -> ProposalView:
        pid = self.service.register(session, proposal)
        supersedes = [SupersededEdit(id=r.id, target_new=r.target_new)
                      for r in self.service.superseded_by(proposal.subject, proposal.prompt)]
        return ProposalView(id=pid, proposal=proposal, method=self.default_method, layer=self.default_layer,
                            supersedes=supersedes)

    # -- edits ------------------------------------------------------------------------------

    def apply_edit(self, session: str, pid: str, password: str, overrides: dict | None = None,
                   method: str | None = None, layer: int | None = None, progress=None,
                   address: str | None = None) -> EditReport:
        return self.service.apply(session, pid, password, overrides=overrides, method=method, layer=layer,
                                  progress=progress, address=address)

    def finish_report(self, report: EditReport) -> Iterator[EditReport]:
        """The rest of an applied edit's "after" column, piece by piece (``EditService.finish``)."""
        return self.service.finish(report)

    def cancel_edit(self, session: str, pid: str) -> None:
        self.service.cancel(session, pid)

    def revert_edit(self, session: str, edit_id: int, password: str, address: str | None = None) -> EditRecord:
        return self.service.revert(session, edit_id, password, address)

    def revert_superseded(self, session: str, pid: str, password: str, address: str | None = None) -> EditRecord:
        """"Revert edit N instead": revert the latest applied edit of the proposal's fact and drop
        the proposal (a correction back to what the model said before edit N)."""
        view = self.service.pending(session, pid)
        superseded = self.service.superseded_by(view.subject, view.prompt)
        if not superseded:
            raise EditServiceError("No applied edit of this fact is left to revert; apply the proposal instead.")
        record = self.service.revert(session, superseded[-1].id, password, address)
        self.service.cancel(session, pid)
        return record

    def preview_import(self, path: str | Path) -> list[FactRow]:
        """The rows of an uploaded corrections file (CSV or JSON Lines), each valid or saying why not."""
        return self.service.preview_import(*_read_upload(path))

    def import_edits(self, session: str, path: str | Path, password: str, progress=None,
                     address: str | None = None) -> BatchReport:
        text, name = _read_upload(path)
        return self.service.import_edits(session, text, name, password, progress=progress, address=address)

    def list_edits(self, status: str | None = None, search: str | None = None) -> list[EditRecord]:
        return self.service.log.edits(status=status, search=search)

    def edit(self, edit_id: int) -> EditRecord:
        """One edit's row (raises ``KeyError`` for an unknown id)."""
        return self.service.log.get(edit_id)

    def edit_detail(self, session: str, edit_id: int) -> dict:
        """One edit's row as ``session`` may see it: never a session, the question only to the
        session that asked it (``EditRecord.public``)."""
        record = self.service.log.get(edit_id)
        return record.public(own=record.session == self.service.log.pseudonym(session))

    def save_checkpoint(self, session: str, password: str, address: str | None = None) -> CheckpointRecord:
        return self.service.save_checkpoint(session, password, address)

    def export(self, fmt: str, out_dir: Path) -> Path:
        """The log as CSV or JSON, as any session may see it (no sessions, no questions)."""
        rows = [r.public() for r in self.list_edits()]
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"amend-edits.{fmt}"
        if fmt == "json":
            path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
        else:
            buffer = io.StringIO()
            columns = [c for c in EditRecord.model_fields if c not in ("session", "question")]
            writer = csv.DictWriter(buffer, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v for k, v in row.items()})
            path.write_text(buffer.getvalue(), encoding="utf-8")
        return path

    def model_info(self) -> str:
        loaded = self.service.loaded
        n = self.service.n_applied
        edits = f"base model + {n} edit{'s' if n != 1 else ''}"
        line = f"**{loaded.profile.display_name}** · {loaded.device.type} · {str(loaded.dtype).removeprefix('torch.')} · {edits}"
        if self.replay_problems:
            line += f" · ⚠ {len(self.replay_problems)} logged edit(s) could not be replayed"
        return line


def _read_upload(path: str | Path) -> tuple[str, str]:
    """(text, file name) of an uploaded file: UTF-8, at most ``MAX_IMPORT_BYTES``."""
    if not path:
        raise EditServiceError("Choose a CSV or JSON Lines file of corrections first.")
    path = Path(path)
    try:
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise EditServiceError(f"The file is {path.stat().st_size:,} bytes; at most {MAX_IMPORT_BYTES:,} are read.")
        return path.read_bytes().decode("utf-8"), path.name
    except UnicodeDecodeError as exc:
        raise EditServiceError("The file is not UTF-8 text; save it as CSV (UTF-8) or JSON Lines.") from exc
    except OSError as exc:
        raise EditServiceError(f"The file cannot be read ({exc.strerror or exc}).") from exc


def _proposal_sentence(view: ProposalView) -> str:
    p = view.proposal
    if p.language == "zh":
        old = f"（原答案：{p.target_old}）" if p.target_old else ""
        return (f"我理解这是一条更正：**{p.subject}** —「{p.prompt}」→ **{p.target_new}**{old}。"
                "请在下方卡片中确认，并输入编辑密码以修改模型权重。")
    old = f" (was: {p.target_old})" if p.target_old else ""
    return (f"I understood a correction: **{p.subject}** — “{p.prompt}” → **{p.target_new}**{old}. "
            "Check it in the card below and enter the edit password to change the model's weights.")
