"""The product's front desk: everything a browser session can ask for, without Gradio.

``app.py`` turns these methods into UI events and API endpoints; tests call them directly.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
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
from agents.intent import IntentAgent
from agents.proposal import EditProposal
from agents.service import EditReport, EditService
from storage.records import CheckpointRecord, EditRecord

log = logging.getLogger(__name__)

CLEARED_NOTICE = {"en": "Chat history cleared. The next answer comes from the model's weights alone.",
                  "zh": "对话历史已清空。接下来的回答只来自模型权重。"}
EMPTY_NOTICE = "Type a message first (an empty message is ignored)."
TOO_LONG_NOTICE = ("Your message has {n:,} characters; at most {limit:,} are read. Shorten it, or send the question "
                   "on its own.")


MAX_TRACE_SAMPLES = 10
MAX_TRACE_TOKENS = 64
MAX_LENS_TOKENS = 256


class InspectError(ValueError):
    """Bad input to the Inspect tab; the message is meant for the person."""


class ProposalView(BaseModel):
    """What the confirmation card shows; ``id`` is the one-time handle for Apply."""

    id: str
    proposal: EditProposal
    method: str
    layer: int


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

    @property
    def checkpoints_dir(self) -> Path:
        return self.service.checkpoints_dir

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
        for thread in self.background:
            thread.join()

    def clean(self, session: str) -> str:
        self.sessions.get(session).clear()
        return CLEARED_NOTICE["en"]

    def history(self, session: str) -> list[dict]:
        return list(self.sessions.get(session).history)

    def _register(self, session: str, proposal: EditProposal) -> ProposalView:
        pid = self.service.register(session, proposal)
        return ProposalView(id=pid, proposal=proposal, method=self.service.default_method,
                            layer=self.service.editor.default_layer)

    # -- edits ------------------------------------------------------------------------------

    def apply_edit(self, session: str, pid: str, password: str, overrides: dict | None = None,
                   method: str | None = None, layer: int | None = None, progress=None,
                   address: str | None = None) -> EditReport:
        return self.service.apply(session, pid, password, overrides=overrides, method=method, layer=layer,
                                  progress=progress, address=address)

    def cancel_edit(self, session: str, pid: str) -> None:
        self.service.cancel(session, pid)

    def revert_edit(self, session: str, edit_id: int, password: str, address: str | None = None) -> EditRecord:
        return self.service.revert(session, edit_id, password, address)

    def list_edits(self, status: str | None = None, search: str | None = None) -> list[EditRecord]:
        return self.service.log.edits(status=status, search=search)

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

    # -- inspect ----------------------------------------------------------------------------

    def _inspect_path(self, name: str) -> Path:
        folder = self.checkpoints_dir.parent / "inspect"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}-{int(time.time() * 1000)}.png"

    def trace(self, prompt: str, subject: str, target: str | None = None, samples: int = 3,
              mark_layer: int | None = None, progress=None) -> tuple[Path, str]:
        """Causal-tracing heatmaps of ``prompt`` (PNG) and a one-paragraph reading of them."""
        from editing.inspection.plots import plot_trace, save
        from editing.inspection.tracing import causal_trace

        if not prompt.strip() or not subject.strip() or subject not in prompt:
            raise InspectError("Give a prompt and a subject that occurs in it.")
        if not 1 <= samples <= MAX_TRACE_SAMPLES:
            raise InspectError(f"Noise samples must be between 1 and {MAX_TRACE_SAMPLES}.")
        self._check_length(prompt, MAX_TRACE_TOKENS, "A causal trace")
        loaded = self.service.loaded
        with self.service.lock.read():
            result = causal_trace(loaded.model, loaded.tokenizer, prompt, subject, target or None,
                                  samples=samples, progress=progress, checks=self.service.editor.checks)
        path = self._inspect_path("trace")
        save(plot_trace(result, mark_layer), path)
        effect = result.effect("mlp")
        start, end = result.subject_range
        token, layer = divmod(int(effect[start:end].argmax()), effect.shape[1])
        summary = (f"Answer {result.answer.strip()!r}: P_clean = {result.p_clean:.3f}, P_corrupted = "
                   f"{result.p_corrupted:.3f}. The strongest MLP effect inside the subject is at token "
                   f"{result.tokens[start + token]!r}, layer {layer} (indirect effect {effect[start + token, layer]:.3f}).")
        return path, summary

    def lens(self, prompt: str, target: str | None = None, mark_layer: int | None = None) -> tuple[Path, str]:
        """Logit lens of ``prompt`` (PNG) and the automatic layer choice it implies."""
        from editing.inspection.lens import choose_layer, logit_lens
        from editing.inspection.plots import plot_lens, save

        if not prompt.strip():
            raise InspectError("Give a prompt.")
        self._check_length(prompt, MAX_LENS_TOKENS, "The logit lens")
        loaded = self.service.loaded
        with self.service.lock.read():
            result = logit_lens(loaded.model, loaded.tokenizer, prompt, target or None, spec=self.service.editor.spec)
        auto = choose_layer(result, self.service.editor.default_layer)
        path = self._inspect_path("lens")
        save(plot_lens(result, mark_layer if mark_layer is not None else auto), path)
        summary = (f"Top token per layer: {' · '.join(t.strip() or '␣' for t in result.top_tokens)}. "
                   f"Automatic layer choice (thesis Algorithm 2): **{auto}**; the model's default edit layer is "
                   f"{self.service.editor.default_layer}.")
        return path, summary

    def _check_length(self, prompt: str, limit: int, what: str) -> None:
        # a trace runs tokens × samples rows per layer: its cost grows with the square of the prompt
        n = len(self.service.loaded.tokenizer(prompt[: 20 * limit], add_special_tokens=False).input_ids)
        if n > limit:
            raise InspectError(f"{what} takes prompts of at most {limit} tokens; this one has more.")

    def model_info(self) -> str:
        loaded = self.service.loaded
        n = self.service.n_applied
        edits = f"base model + {n} edit{'s' if n != 1 else ''}"
        line = f"**{loaded.profile.display_name}** · {loaded.device.type} · {str(loaded.dtype).removeprefix('torch.')} · {edits}"
        if self.replay_problems:
            line += f" · ⚠ {len(self.replay_problems)} logged edit(s) could not be replayed"
        return line


def _proposal_sentence(view: ProposalView) -> str:
    p = view.proposal
    if p.language == "zh":
        old = f"（原答案：{p.target_old}）" if p.target_old else ""
        return (f"我理解这是一条更正：**{p.subject}** —「{p.prompt}」→ **{p.target_new}**{old}。"
                "请在下方卡片中确认，并输入编辑密码以修改模型权重。")
    old = f" (was: {p.target_old})" if p.target_old else ""
    return (f"I understood a correction: **{p.subject}** — “{p.prompt}” → **{p.target_new}**{old}. "
            "Check it in the card below and enter the edit password to change the model's weights.")
