"""Amend: chat with a local LLM and correct its facts by editing its weights.

    python app.py                       # start on the default model (gemma3-270m) at 127.0.0.1:7860
    python app.py --model smollm2       # the other built-in model
    python app.py set-password          # set the edit password (prompted, not echoed)
    python app.py unlock                # forget failed password attempts (after a lockout)
    python app.py add-user NAME         # a login for --auth (prompted, not echoed)

This file wires the services together and draws the Gradio page; it never touches tensors.
"""


import argparse
import getpass
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("amend")

STATUSES = ["all", "applied", "pending", "failed", "reverted"]
LOG_COLUMNS = ["id", "time", "status", "subject", "prompt", "old", "new", "method", "layer", "seconds"]


@dataclass
class Settings:
    model: str = "gemma3-270m"
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    home: Path = Path.home() / ".cache" / "amend"
    db: Path | None = None
    replay: bool = True
    intent: str = "auto"  # auto | parser | llm
    method: str = "rome"
    trust_remote_code: bool = False
    auth: bool = False  # the whole UI behind a login (users from `app.py add-user`)

    @property
    def state_dir(self) -> Path:
        import re

        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.model).strip("-")[-60:] or "model"
        return self.home / "state" / slug

    @property
    def db_path(self) -> Path:
        return self.db or self.state_dir / "amend.sqlite"


# -- wiring -----------------------------------------------------------------------------------


def open_log(settings: Settings):
    from storage.db import EditLog
    from storage.passwords import PasswordStore

    edit_log = EditLog(settings.db_path)
    passwords = PasswordStore(edit_log)
    first_run_password = os.environ.get("AMEND_EDIT_PASSWORD")
    if first_run_password and not passwords.is_set:
        passwords.set(first_run_password)
        log.info("edit password set from AMEND_EDIT_PASSWORD")
    return edit_log, passwords


def build_assistant(settings: Settings):
    """Load the model and create every service; returns the ``Assistant`` facade."""
    from agents.assistant import Assistant
    from agents.chat import ChatAgent, GenerationSettings
    from agents.intent import IntentAgent
    from agents.locks import RWLock
    from agents.service import EditService
    from editing.engine import Editor
    from runtime import BUILTIN_PROFILES, load_model

    loaded = load_model(settings.model, device=settings.device, trust_remote_code=settings.trust_remote_code,
                        home=settings.home)
    lock = RWLock()
    chat = ChatAgent(loaded, lock)
    editor = Editor.for_model(loaded, home=settings.home)
    edit_log, passwords = open_log(settings)
    service = EditService(loaded, editor, edit_log, passwords, settings.state_dir / "deltas",
                          checkpoints_dir=settings.home / "checkpoints", lock=lock, chat=chat,
                          default_method=settings.method)
    background = [_precompute_statistics(editor)]
    problems = service.replay() if settings.replay else []
    background.append(_sample_contexts(editor))
    use_llm = settings.intent == "llm" or (settings.intent == "auto" and settings.model not in BUILTIN_PROFILES)
    generate = None
    if use_llm:
        def generate(prompt: str) -> str:
            return chat.complete(prompt, GenerationSettings(max_new_tokens=96))
    return Assistant(chat, IntentAgent(generate), service, problems,
                     background=[t for t in background if t is not None])


def _precompute_statistics(editor):
    """Compute the default layer's key statistics in the background on a first run (≈2–5
    minutes on a CPU), so the first edit does not wait for them; later runs read the cache."""
    import threading

    from editing.hparams import ROMEHyperParams

    n_tokens = ROMEHyperParams().mom2_n_tokens
    if editor.covariance.path(editor.default_layer, editor.corpus, n_tokens).exists():
        return None

    def work() -> None:
        # No model lock: holding the read lock this long would stall chat behind a waiting
        # edit; an edit's ROME step waits for these statistics on the cache's own lock anyway,
        # and so does every change of the weights (the replay below included), so the statistics
        # are those of the weights the cache's fingerprint names.
        try:
            editor.statistics(editor.default_layer, n_tokens)
            log.info("key statistics for layer %d ready", editor.default_layer)
        except Exception:  # noqa: BLE001 - the first edit will compute (and report) them instead
            log.exception("background statistics failed")

    log.info("computing key statistics for layer %d in the background (first run only)", editor.default_layer)
    thread = threading.Thread(target=work, name="statistics", daemon=True)
    thread.start()
    return thread


def _sample_contexts(editor):
    """Sample ROME's context prefixes (English and Chinese) in the background at start-up
    (2–5 s each on a CPU), so the first edit does not wait for them; they are kept for the
    session.  Started after the replay of logged edits, and without the model lock, like the
    statistics: holding the read lock would stall chat behind a waiting edit, and an edit that
    needs the prefixes waits for them on the editor's own lock."""
    import threading

    from editing.hparams import ROMEHyperParams

    hparams = ROMEHyperParams()

    def work() -> None:
        try:
            for language in ("en", "zh"):
                editor.templates(language, hparams.n_prefixes, hparams.prefix_lengths)
        except Exception:  # noqa: BLE001 - the first edit samples (and reports) them instead
            log.exception("sampling context prefixes failed")

    thread = threading.Thread(target=work, name="contexts", daemon=True)
    thread.start()
    return thread


# -- the page -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who sent an event: the browser session (Gradio's session hash) and the client address."""

    session: str = "local"
    address: str | None = None


class PageError(ValueError):
    """A control's value the page cannot use; the message is meant for the person."""


SKIP = object()  # "leave this component as it is"


def _whole(value, what: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PageError(f"The {what} must be a whole number.") from None
    if not number.is_integer():
        raise PageError(f"The {what} must be a whole number.")
    return int(number)


class Page:
    """What each control of the page does.  Plain functions of the ``Assistant`` facade and the
    controls' values, returning the new values by component name (``build_ui`` binds names to
    components; ``True``/``False`` shows or hides a group, ``SKIP`` leaves a component alone).
    Tested directly, without a browser (``tests/test_page.py``)."""

    def __init__(self, assistant) -> None:
        self.assistant = assistant

    # -- chat
    def chat(self, caller: Caller, message: str, temperature=0.0, max_new_tokens=128) -> Iterator[dict]:
        """Send a message: the chat so far while it streams; a correction opens the confirmation card."""
        from agents.chat import GenerationSettings

        tokens = _whole(max_new_tokens, "number of new tokens") or 128
        try:
            heat = float(temperature or 0.0)
        except (TypeError, ValueError):
            raise PageError("The temperature must be a number.") from None
        if not 1 <= tokens <= 512 or not 0.0 <= heat <= 2.0:
            raise PageError("Max new tokens must be 1–512 and the temperature 0–2.")
        settings = GenerationSettings(max_new_tokens=tokens, temperature=heat)
        box = ""  # clear the textbox once; later values leave alone what the person types meanwhile
        turn = None
        for turn in self.assistant.chat_stream(caller.session, message, settings):
            yield {"chatbot": turn.history, "msg": box, "notice": turn.notice or "", "proposal_json": None,
                   "card": False}
            box = SKIP
        if turn is not None and turn.proposal is not None:
            view, p = turn.proposal, turn.proposal.proposal
            yield {"proposal_json": view.model_dump(mode="json"), "card": True, "pid": view.id, "subject": p.subject,
                   "prompt": p.prompt, "target_new": p.target_new, "target_old": p.target_old or "",
                   "supersede_note": supersede_note(view), "supersede_row": bool(view.supersedes)}

    def clean(self, caller: Caller) -> dict:
        """Clear this session's chat history (the same as typing `clean`)."""
        return {"chatbot": [], "notice": self.assistant.clean(caller.session), "proposal_json": None, "card": False}

    def stop(self, caller: Caller) -> dict:
        """Stop the answer being generated for this session."""
        self.assistant.stop(caller.session)
        return {}

    # -- edits
    def apply(self, caller: Caller, pid: str, password: str, subject: str, prompt: str, target_new: str,
              method: str, layer, auto_layer: bool, progress=None) -> Iterator[dict]:
        """Apply the pending proposal `pid` (needs the edit password): the report as soon as the
        weights are in, then its slower rows as they are measured."""
        chosen = "auto" if auto_layer else _whole(layer, "layer")
        overrides = {"subject": subject, "prompt": prompt, "target_new": target_new}
        report = self.assistant.apply_edit(caller.session, pid, password, overrides=overrides, method=method,
                                           layer=chosen, progress=progress, address=caller.address)
        yield {"result_md": render_report(report), "result_card": True, "card": False, "password": "",
               "info": self.assistant.model_info(), "last_edit": report.edit.id,
               "report_json": _public(report), "table": self.log_rows()}
        for part in self.assistant.finish_report(report):
            # the log table too: a Dataframe left out of a streamed update loses its rows in the browser
            yield {"result_md": render_report(part), "report_json": _public(part), "table": self.log_rows()}

    def cancel(self, caller: Caller, pid: str) -> dict:
        """Drop the pending proposal `pid`."""
        self.assistant.cancel_edit(caller.session, pid)
        return {"card": False, "pid": "", "notice": "Proposal cancelled; nothing was changed."}

    def revert_instead(self, caller: Caller, pid: str, password: str) -> dict:
        """Revert the applied edit the proposal would supersede, instead of applying the proposal."""
        record = self.assistant.revert_superseded(caller.session, pid, password, address=caller.address)
        return {"card": False, "pid": "", "password": "",
                "notice": f"Edit {record.id} reverted instead: {record.subject} → {record.target_new} is undone.",
                "info": self.assistant.model_info(), "table": self.log_rows()}

    def preview_import(self, path) -> dict:
        """The rows of a corrections file (CSV with a header subject,prompt,target_new[,question], or
        JSON Lines): each valid or saying why not."""
        rows = self.assistant.preview_import(path)
        bad = sum(r.error is not None for r in rows)
        notice = (f"{len(rows)} correction(s) read; " + (f"**{bad} not valid** — fix or remove them, then import."
                                                          if bad else "all valid. Enter the edit password to import."))
        return {"import_preview": [[r.line, r.subject, r.prompt, r.target_new, r.question or "", r.error or "ok"]
                                   for r in rows], "import_notice": notice}

    def import_edits(self, caller: Caller, path, password: str, progress=None) -> dict:
        """Import a corrections file (needs the edit password): every fact in one solve, one log row each."""
        report = self.assistant.import_edits(caller.session, path, password, progress, address=caller.address)
        first, last = report.edits[0].id, report.edits[-1].id
        return {"import_notice": f"Imported {len(report.edits)} correction(s) as edits {first}–{last} in "
                                 f"{report.seconds:.1f} s (layer {report.layer}); the model now gives "
                                 f"{report.landed} of them. Reverting any of them reverts the whole import.",
                "import_password": "", "info": self.assistant.model_info(), "table": self.log_rows()}

    def keep(self) -> dict:
        return {"result_card": False}

    def revert(self, caller: Caller, edit_id, password: str) -> dict:
        """Revert the applied edit `edit_id` (needs the edit password)."""
        edit_id = _whole(edit_id, "edit id")
        if edit_id is None:
            raise PageError("Choose the id of an applied edit first.")
        record = self.assistant.revert_edit(caller.session, edit_id, password, address=caller.address)
        batch = " with the rest of its import" if record.batch_id else ""
        return {"notice": f"Edit {record.id} reverted{batch}: {record.subject} → {record.target_new} is undone; "
                          "every other applied edit stays as it was written.",
                "info": self.assistant.model_info(), "table": self.log_rows(), "password": ""}

    def save(self, caller: Caller, password: str) -> dict:
        """Save the edited model as a checkpoint folder loadable with --model PATH (needs the password)."""
        record = self.assistant.save_checkpoint(caller.session, password, address=caller.address)
        return {"notice": f"Checkpoint saved with {len(record.edit_ids)} edit(s) in {record.seconds:.1f} s: "
                          f"`{record.path}` (load it with `python app.py --model {record.path}`).", "password": ""}

    # -- the log
    def log_rows(self, status: str = "all", search: str = "") -> list[list]:
        rows = []
        for r in self.assistant.list_edits(status=status or "all", search=search or None):
            rows.append([r.id, r.created_at.replace("T", " ").rstrip("Z"), r.status, r.subject, r.prompt,
                         r.target_old or "", r.target_new, r.method, r.layer, r.seconds])
        return rows

    def list(self, search: str, status: str) -> dict:
        """The edit log as rows: id, time, status, subject, prompt, old, new, method, layer, seconds."""
        return {"table": self.log_rows(status, search)}

    def detail(self, caller: Caller, edit_id) -> dict:
        """One edit's log row (no session; the question only for the session that asked it)."""
        edit_id = _whole(edit_id, "edit id")
        return {"detail": None if edit_id is None else self.assistant.edit_detail(caller.session, edit_id)}

    def export(self, fmt: str) -> dict:
        """Export the edit log as CSV or JSON (no sessions, no questions)."""
        if not isinstance(fmt, str) or fmt.lower() not in ("csv", "json"):
            raise PageError("Choose CSV or JSON.")
        return {"export_file": str(self.assistant.export(fmt.lower(), self.assistant.checkpoints_dir.parent / "exports"))}

    def select(self, row_index, rows) -> dict:
        """The id of the clicked row of the log table."""
        try:
            return {"edit_id": int(rows.iloc[row_index, 0]) if hasattr(rows, "iloc") else int(rows[row_index][0])}
        except (IndexError, ValueError, TypeError, KeyError):
            return {"edit_id": None}

    def inspect_edit(self, edit_id) -> dict:
        """Fill the Inspect tab from a logged edit: its prompt, subject, new target and layer."""
        edit_id = _whole(edit_id, "edit id")
        if edit_id is None:
            raise PageError("Choose an edit id in the log first.")
        record = self.assistant.edit(edit_id)
        return {"inspect_prompt": record.prompt, "inspect_subject": record.subject,
                "inspect_target": record.target_new, "inspect_layer": record.layer, "tab": "inspect"}

    # -- inspection
    def trace(self, prompt: str, subject: str, target: str, samples, mark_layer, progress=None) -> dict:
        """Causal tracing heatmaps (residual, MLP, attention) of `prompt` with `subject` corrupted."""
        path, summary = self.assistant.inspection.trace(prompt, subject, target or None,
                                                        _whole(samples, "number of samples") or 0,
                                                        _whole(mark_layer, "layer"), progress)
        return {"trace_image": str(path), "trace_summary": summary}

    def lens(self, prompt: str, target: str, mark_layer) -> dict:
        """Logit lens of `prompt`: top token and P(answer), P(target) per layer, and the automatic layer."""
        path, summary = self.assistant.inspection.lens(prompt, target or None, _whole(mark_layer, "layer"))
        return {"lens_image": str(path), "lens_summary": summary}

    def refresh(self) -> dict:
        return {"info": self.assistant.model_info(), "table": self.log_rows()}


def build_ui(assistant):
    """The Gradio Blocks app: the layout, and each event bound to a ``Page`` handler."""
    import functools
    import inspect

    import gradio as gr

    from agents.inspection import InspectError
    from agents.service import EditServiceError
    from storage.db import LogUnavailable
    from storage.passwords import PasswordError

    page = Page(assistant)
    meant_for_people = (EditServiceError, PasswordError, InspectError, PageError, LogUnavailable, KeyError)
    components: dict[str, gr.components.Component] = {}

    def for_people(fn, exc: Exception) -> Exception:
        """The error a person reads: the service's own messages as they are, anything unexpected
        as its type and text (the traceback goes to the log)."""
        if isinstance(exc, meant_for_people):
            text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError quotes itself
            return gr.Error(text, print_exception=False)
        log.exception("%s failed", fn.__name__)
        return gr.Error(f"Something went wrong ({type(exc).__name__}: {exc}); nothing was changed. "
                        "The server log has the details.", print_exception=False)

    def values(named: dict, rename: dict[str, str] | None = None) -> dict:
        """A handler's values by name -> Gradio's values by component."""
        out = {}
        for name, value in named.items():
            component = components[(rename or {}).get(name, name)]
            if value is SKIP:
                value = gr.skip()
            elif name in ("card", "result_card", "supersede_row"):
                value = gr.update(visible=value)
            elif name == "tab":
                value = gr.Tabs(selected=value)
            out[component] = value
        return out

    def guarded(fn):
        """Every event's errors reach the person as a sentence (``for_people``)."""
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except gr.Error:
                    raise
                except Exception as exc:
                    raise for_people(fn, exc) from exc
            return stream

        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise for_people(fn, exc) from exc
        return call

    def caller(request: gr.Request | None) -> Caller:
        client = getattr(request, "client", None)
        return Caller(getattr(request, "session_hash", None) or "local", getattr(client, "host", None))

    def reporter(progress):
        def report(stage: str, step: int, total: int, loss: float | None = None):
            desc = stage if loss is None else f"{stage} step {step}/{total}, loss {loss:.3f}"
            progress((step, max(total, 1)) if total else 0, desc=desc)
        return report

    # -- events: the Page handler, with the session, the progress bar and the components filled in
    @guarded
    def chat(message: str, temperature: float, max_new_tokens: int, request: gr.Request):
        """Send a message. Yields the chat so far; a correction opens the confirmation card."""
        for named in page.chat(caller(request), message, temperature, max_new_tokens):
            yield values(named)

    @guarded
    def clean(request: gr.Request):
        """Clear this session's chat history (the same as typing `clean`)."""
        return values(page.clean(caller(request)))

    @guarded
    def stop(request: gr.Request):
        """Stop the answer being generated for this session."""
        page.stop(caller(request))

    @guarded
    def apply(pid: str, password: str, subject: str, prompt: str, target_new: str, method: str, layer: float | None,
              auto_layer: bool, request: gr.Request, progress=gr.Progress()):
        """Apply the pending proposal `pid` (needs the edit password); the before/after report, its
        slower rows streamed in as they are measured."""
        for named in page.apply(caller(request), pid, password, subject, prompt, target_new, method, layer,
                                auto_layer, reporter(progress)):
            yield values(named)

    @guarded
    def cancel(pid: str, request: gr.Request):
        """Drop the pending proposal `pid`."""
        return values(page.cancel(caller(request), pid))

    @guarded
    def revert_instead(pid: str, password: str, request: gr.Request):
        """Revert the applied edit that the pending proposal `pid` would supersede, and drop the proposal."""
        return values(page.revert_instead(caller(request), pid, password))

    @guarded
    def preview_import(path: str | None):
        """Read a corrections file (CSV or JSON Lines): every row, valid or with what is wrong."""
        return values(page.preview_import(path))

    @guarded
    def import_edits(path: str | None, password: str, request: gr.Request, progress=gr.Progress()):
        """Import a corrections file (needs the edit password): one solve, one log row per fact."""
        return values(page.import_edits(caller(request), path, password, reporter(progress)))

    @guarded
    def revert_last(edit_id: float, password: str, request: gr.Request):
        return values(page.revert(caller(request), edit_id, password), {"notice": "result_md",
                                                                        "password": "result_password"})

    @guarded
    def save_last(password: str, request: gr.Request, progress=gr.Progress()):
        progress(0, desc="writing the checkpoint")
        return values(page.save(caller(request), password), {"notice": "result_md", "password": "result_password"})

    @guarded
    def revert(edit_id: float, password: str, request: gr.Request):
        """Revert the applied edit `edit_id` (needs the edit password)."""
        return values(page.revert(caller(request), edit_id, password), {"notice": "log_notice",
                                                                        "password": "log_password"})

    @guarded
    def save(password: str, request: gr.Request, progress=gr.Progress()):
        """Save the edited model as a checkpoint folder loadable with --model PATH (needs the password)."""
        progress(0, desc="writing the checkpoint")
        return values(page.save(caller(request), password), {"notice": "log_notice", "password": "log_password"})

    @guarded
    def list_edits(search: str, status: str):
        """The edit log as rows: id, time, status, subject, prompt, old, new, method, layer, seconds."""
        return values(page.list(search, status))

    @guarded
    def detail(edit_id: float, request: gr.Request):
        """One edit's log row (no session; the question only for the session that asked it)."""
        return values(page.detail(caller(request), edit_id))

    @guarded
    def export(fmt: str):
        """Export the edit log as CSV or JSON (no sessions, no questions)."""
        return values(page.export(fmt))

    def select(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return values(page.select(row, rows))

    @guarded
    def inspect_edit(edit_id: float):
        """Fill the Inspect tab from a logged edit: its prompt, subject, new target and layer."""
        return values(page.inspect_edit(edit_id))

    @guarded
    def trace(prompt: str, subject: str, target: str, samples: float, mark_layer: float | None,
              progress=gr.Progress()):
        """Causal tracing heatmaps (residual, MLP, attention) of `prompt` with `subject` corrupted."""
        return values(page.trace(prompt, subject, target, samples, mark_layer,
                                 lambda kind, done, total: progress((done, total), desc=f"restoring {kind} states")))

    @guarded
    def lens(prompt: str, target: str, mark_layer: float | None):
        """Logit lens of `prompt`: top token and P(answer), P(target) per layer, and the automatic layer."""
        return values(page.lens(prompt, target, mark_layer))

    with gr.Blocks(title="Amend") as demo:
        gr.Markdown("# Amend\nChat with a local model. When it gets a fact wrong, say so — "
                    "you confirm, and the correction is written into its weights. Type `clean` to start over.")
        c = components
        c["info"] = gr.Markdown(assistant.model_info())
        with gr.Tabs() as c["tab"]:
            with gr.Tab("Chat", id="chat"):
                c["chatbot"] = gr.Chatbot(height=420, label="Conversation")
                with gr.Row():
                    c["msg"] = gr.Textbox(placeholder="Ask something, or correct the model: “Actually, …” / “不对，…”",
                                          show_label=False, scale=8, autofocus=True)
                    send = gr.Button("Send", variant="primary", scale=1)
                    stop_btn = gr.Button("Stop", scale=1)
                    new_chat = gr.Button("New chat", scale=1)
                c["notice"] = gr.Markdown()
                with gr.Accordion("Generation settings", open=False):
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                    max_new_tokens = gr.Slider(16, 512, value=128, step=16, label="Max new tokens")
                c["proposal_json"] = gr.JSON(visible=False, label="proposal")
                with gr.Group(visible=False) as c["card"]:
                    gr.Markdown("### Proposed edit — check it, then apply with the edit password")
                    c["pid"] = gr.Textbox(visible=False, label="proposal id")
                    with gr.Row():
                        c["subject"] = gr.Textbox(label="Subject")
                        c["prompt"] = gr.Textbox(label="Prompt (contains the subject)", scale=2)
                        c["target_new"] = gr.Textbox(label="New answer")
                        c["target_old"] = gr.Textbox(label="Current answer", interactive=False)
                    with gr.Row():
                        method = gr.Radio(list(assistant.methods), value=assistant.default_method, label="Method")
                        layer = gr.Number(value=assistant.default_layer, precision=0,
                                          label=f"Layer (0–{assistant.depth - 1})")
                        auto_layer = gr.Checkbox(False, label="Choose the layer automatically (logit lens)")
                        c["password"] = gr.Textbox(type="password", label="Edit password")
                    with gr.Row(visible=False) as c["supersede_row"]:
                        c["supersede_note"] = gr.Markdown()
                        revert_instead_btn = gr.Button("Revert that edit instead", scale=0)
                    with gr.Row():
                        apply_btn = gr.Button("Apply edit", variant="primary")
                        cancel_btn = gr.Button("Cancel")
                with gr.Group(visible=False) as c["result_card"]:
                    c["result_md"] = gr.Markdown()
                    c["last_edit"] = gr.Number(visible=False, label="edit id")
                    c["report_json"] = gr.JSON(visible=False, label="report")
                    with gr.Row():
                        c["result_password"] = gr.Textbox(type="password", label="Edit password (to revert or save)")
                        keep_btn = gr.Button("Keep")
                        revert_now = gr.Button("Revert now")
                        save_now = gr.Button("Save checkpoint")
            with gr.Tab("Edit log", id="log"):
                with gr.Row():
                    search = gr.Textbox(label="Search subject / prompt / answers", scale=3)
                    status = gr.Dropdown(STATUSES, value="all", label="Status")
                    refresh = gr.Button("Refresh")
                c["table"] = gr.Dataframe(headers=LOG_COLUMNS, value=page.log_rows(), interactive=False, wrap=True)
                with gr.Row():
                    c["edit_id"] = gr.Number(value=None, label="Edit id (click a row)", precision=0)
                    c["log_password"] = gr.Textbox(type="password", label="Edit password")
                    revert_btn = gr.Button("Revert edit")
                    save_btn = gr.Button("Save checkpoint")
                    inspect_btn = gr.Button("Inspect")
                c["log_notice"] = gr.Markdown()
                c["detail"] = gr.JSON(label="Edit detail")
                with gr.Accordion("Import corrections", open=False):
                    gr.Markdown("A CSV file with the header `subject,prompt,target_new` (optionally `question`) or "
                                "JSON Lines with those keys, one fact per row (at most 200). Every fact is written in "
                                "one solve; each gets its own log row, and the import is reverted as one.")
                    with gr.Row():
                        import_file = gr.File(label="Corrections file", file_types=[".csv", ".jsonl", ".json"],
                                              type="filepath")
                        with gr.Column():
                            c["import_password"] = gr.Textbox(type="password", label="Edit password")
                            import_btn = gr.Button("Import the file", variant="primary")
                    c["import_notice"] = gr.Markdown()
                    c["import_preview"] = gr.Dataframe(headers=["line", "subject", "prompt", "new answer", "question",
                                                                "check"], interactive=False, wrap=True)
                with gr.Row():
                    export_fmt = gr.Radio(["CSV", "JSON"], value="CSV", label="Export format")
                    export_btn = gr.Button("Export log")
                    c["export_file"] = gr.File(label="Export")
            with gr.Tab("Inspect", id="inspect"):
                gr.Markdown("Where does the model keep a fact? Causal tracing corrupts the subject's embeddings "
                            "and restores one state at a time (ROME's Figure 1); the logit lens decodes every "
                            "layer's last-token state.")
                with gr.Row():
                    c["inspect_prompt"] = gr.Textbox(label="Prompt", value="The Eiffel Tower is located in the city of",
                                                     scale=3)
                    c["inspect_subject"] = gr.Textbox(label="Subject", value="Eiffel Tower")
                    c["inspect_target"] = gr.Textbox(label="Target (optional)")
                with gr.Row():
                    inspect_samples = gr.Slider(1, 10, value=3, step=1, label="Noise samples")
                    c["inspect_layer"] = gr.Number(label="Mark layer (optional)", precision=0)
                    trace_btn = gr.Button("Causal trace", variant="primary")
                    lens_btn = gr.Button("Logit lens")
                c["trace_summary"] = gr.Markdown()
                c["trace_image"] = gr.Image(label="Causal trace", type="filepath")
                c["lens_summary"] = gr.Markdown()
                c["lens_image"] = gr.Image(label="Logit lens", type="filepath")

        def out(*names: str) -> list:
            return [c[n] for n in names]

        chat_out = out("chatbot", "msg", "notice", "proposal_json", "card", "pid", "subject", "prompt", "target_new",
                       "target_old", "supersede_note", "supersede_row")
        card_fields = out("pid", "password", "subject", "prompt", "target_new") + [method, layer, auto_layer]
        # a message sent while an answer streams runs right after it instead of being dropped
        send.click(chat, [c["msg"], temperature, max_new_tokens], chat_out, api_name="chat", trigger_mode="always_last")
        c["msg"].submit(chat, [c["msg"], temperature, max_new_tokens], chat_out, api_name="chat_submit",
                        api_visibility="private", trigger_mode="always_last")
        stop_btn.click(stop, None, None, api_name="stop", queue=False)
        new_chat.click(clean, None, out("chatbot", "notice", "proposal_json", "card"), api_name="clean")
        apply_btn.click(apply, card_fields, out("result_md", "result_card", "card", "password", "info", "last_edit",
                                                "report_json", "table"), api_name="apply_edit")
        cancel_btn.click(cancel, [c["pid"]], out("card", "pid", "notice"), api_name="cancel_edit")
        revert_instead_btn.click(revert_instead, out("pid", "password"),
                                 out("card", "pid", "password", "notice", "info", "table"), api_name="revert_instead")
        keep_btn.click(lambda: values(page.keep()), None, out("result_card"), api_name="keep_edit",
                       api_visibility="private")
        revert_now.click(revert_last, out("last_edit", "result_password"),
                         out("result_md", "info", "table", "result_password"), api_name="revert_last",
                         api_visibility="private")
        save_now.click(save_last, out("result_password"), out("result_md", "result_password"), api_name="save_last",
                       api_visibility="private")
        refresh.click(list_edits, [search, status], out("table"), api_name="list_edits")
        search.submit(list_edits, [search, status], out("table"), api_name="search_edits", api_visibility="private")
        status.change(list_edits, [search, status], out("table"), api_name="filter_edits", api_visibility="private")
        c["table"].select(select, out("table"), out("edit_id"), api_name="select_edit", api_visibility="private")
        c["edit_id"].change(detail, out("edit_id"), out("detail"), api_name="edit_detail")
        revert_btn.click(revert, out("edit_id", "log_password"), out("log_notice", "info", "table", "log_password"),
                         api_name="revert_edit")
        save_btn.click(save, out("log_password"), out("log_notice", "log_password"), api_name="save_checkpoint")
        export_btn.click(export, [export_fmt], out("export_file"), api_name="export_edits")
        import_file.change(preview_import, [import_file], out("import_preview", "import_notice"),
                           api_name="preview_import")
        import_btn.click(import_edits, [import_file, c["import_password"]],
                         out("import_notice", "import_password", "info", "table"), api_name="import_edits")
        inspect_btn.click(inspect_edit, out("edit_id"), out("inspect_prompt", "inspect_subject", "inspect_target",
                                                            "inspect_layer", "tab"),
                          api_name="inspect_edit", api_visibility="private")
        trace_btn.click(trace, out("inspect_prompt", "inspect_subject", "inspect_target") + [inspect_samples,
                                                                                               c["inspect_layer"]],
                        out("trace_image", "trace_summary"), api_name="trace")
        lens_btn.click(lens, out("inspect_prompt", "inspect_target", "inspect_layer"), out("lens_image", "lens_summary"),
                       api_name="logit_lens")
        demo.load(lambda: values(page.refresh()), None, out("info", "table"), api_name="refresh",
                  api_visibility="private")
    return demo


def supersede_note(view) -> str:
    """The card's line about applied edits of the same fact the proposal would supersede."""
    if not view.supersedes:
        return ""
    latest = view.supersedes[-1]
    earlier = "".join(f", #{e.id} (→ {e.target_new})" for e in view.supersedes[:-1])
    return (f"⚠ This fact was edited before: edit **#{latest.id}** (→ **{latest.target_new}**){earlier}. "
            "Applying supersedes it (the newer answer wins; reverting either later keeps the model consistent). "
            f"To go back to what the model said before edit #{latest.id}, revert it instead.")


def render_report(report) -> str:
    """The result card: what the edit did, before and after; rows still being measured say so."""
    from runtime.language import language_of

    b, a = report.before, report.after
    pending = "… (measuring)"
    rows = [("P(new answer)", f"{b.target_prob:.1%}", f"{a.target_prob:.1%}")]
    if b.old_prob is not None and a.old_prob is not None:
        rows.append(("P(old answer)", f"{b.old_prob:.1%}", f"{a.old_prob:.1%}"))
    rows += [
        ("Completion of the prompt", b.completion or "", a.completion if a.completion is not None else pending),
        ("Chat answer", b.chat_answer or "", a.chat_answer if a.chat_answer is not None else pending),
    ]
    rows += [(f"Unrelated: {p}", b.unrelated[p], a.unrelated.get(p, pending if not a.complete else ""))
             for p in b.unrelated]
    table = "\n".join(f"| {k} | {_cell(x)} | {_cell(y)} |" for k, x, y in rows)
    e = report.edit
    zh = language_of(e.prompt) == "zh"
    if report.lands:
        headline = "修改成功！是否保存修改？" if zh else "Edit applied. Keep it, revert it, or save a checkpoint?"
    else:
        headline = (f"已修改权重，但模型还没有给出新答案（P = {a.target_prob:.1%}）：可以换一层再试，或撤销。" if zh else
                    f"Edit applied, but the model does not give the new answer yet (P(new) = {a.target_prob:.1%}): "
                    "try another layer or method, or revert it.")
    if a.fluency is not None and a.fluency.broken:
        problems = "; ".join(a.fluency.problems)
        headline = (f"已修改权重，但模型的回答坏了（{problems}）：建议撤销（Revert now）。" if zh else
                    f"⚠ Edit applied, but the model's answers are broken: {problems}. Revert it (Revert now) "
                    "unless the answers below are what you want.")
    note = f"\n\n_{a.note}_" if a.note else ""
    if report.supersedes:
        note += f"\n\nSupersedes edit{'s' if len(report.supersedes) > 1 else ''} " + \
            ", ".join(f"#{i}" for i in report.supersedes) + " (same fact; still in the log as applied)."
    return (f"### {headline}\nEdit **#{e.id}**: {e.subject} — “{e.prompt}” → **{e.target_new}** "
            f"({report.method.upper()}, layer {report.layer}, {report.seconds:.1f} s)\n\n"
            f"| | before | after |\n|---|---|---|\n{table}{note}")


def _public(report) -> dict:
    """The report as the page and the API return it: the edit's row without its session."""
    return report.model_dump(mode="json", exclude={"edit": {"session"}})


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


# -- command line -------------------------------------------------------------------------------


COMMANDS = {
    "run": "run the app (the default)",
    "set-password": "set the edit password (prompted, not echoed)",
    "unlock": "forget every failed password attempt (the operator's way in after a lockout)",
    "add-user": "add or change a login for --auth: app.py add-user NAME (password prompted)",
}


def parse_args(argv: list[str]) -> tuple[str, Settings, list[str]]:
    env = os.environ
    parser = argparse.ArgumentParser(prog="app.py", description="Amend: correct a local LLM by editing its weights.",
                                     epilog="commands: " + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
    parser.add_argument("command", nargs="?", default="run", choices=list(COMMANDS), help="what to do (default: run)")
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=env.get("AMEND_MODEL", "gemma3-270m"),
                        help="built-in alias (gemma3-270m, smollm2), a local folder, or a Hugging Face id")
    parser.add_argument("--device", default=env.get("AMEND_DEVICE", "auto"), choices=["auto", "cpu", "cuda"])
    parser.add_argument("--host", default=env.get("AMEND_HOST", "127.0.0.1"),
                        help="interface to bind; anything but 127.0.0.1 exposes the app to your network")
    parser.add_argument("--port", type=int, default=int(env.get("AMEND_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link (explicit choice)")
    parser.add_argument("--auth", action="store_true", default=env.get("AMEND_AUTH") == "1",
                        help="put the whole page behind a login (users from `app.py add-user NAME`)")
    parser.add_argument("--home", type=Path, default=Path(env.get("AMEND_HOME", Path.home() / ".cache" / "amend")),
                        help="data folder: converted models, statistics, edit log, deltas, checkpoints")
    parser.add_argument("--db", type=Path, default=env.get("AMEND_DB"), help="edit log database (SQLite) path")
    parser.add_argument("--no-replay", dest="replay", action="store_false",
                        help="start from the unedited weights instead of re-applying logged edits")
    parser.add_argument("--intent", default=env.get("AMEND_INTENT", "auto"), choices=["auto", "parser", "llm"],
                        help="how corrections are recognised; auto = parser on built-in models, LLM+parser otherwise")
    parser.add_argument("--method", default="rome", choices=["rome", "ft", "kn"], help="default editing method")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model's own Python code (only for models you trust)")
    args = parser.parse_args(argv)
    if args.command == "add-user" and len(args.names) != 1:
        parser.error("add-user takes one user name: app.py add-user NAME")
    if args.command != "add-user" and args.names:
        parser.error(f"unexpected arguments: {' '.join(args.names)}")
    settings = Settings(model=args.model, device=args.device, host=args.host, port=args.port, share=args.share,
                        home=args.home, db=Path(args.db) if args.db else None, replay=args.replay,
                        intent=args.intent, method=args.method, trust_remote_code=args.trust_remote_code,
                        auth=args.auth)
    return args.command, settings, args.names


def _new_password(prompt: str) -> str | None:
    first = getpass.getpass(f"{prompt}: ")
    if first != getpass.getpass("Repeat it: "):
        print("The two passwords differ; nothing was changed.", file=sys.stderr)
        return None
    return first


def set_password(settings: Settings) -> int:
    from storage.passwords import PasswordError

    edit_log, passwords = open_log(settings)
    password = _new_password("New edit password")
    if password is None:
        return 1
    try:
        passwords.set(password)
    except PasswordError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"Edit password set (argon2 hash stored in {settings.db_path}).")
    return 0


def unlock(settings: Settings) -> int:
    edit_log, passwords = open_log(settings)
    passwords.unlock()
    print(f"Failed password attempts forgotten ({settings.db_path}); edits and logins are open again.")
    return 0


def add_user(settings: Settings, name: str) -> int:
    from storage.passwords import PasswordError, UserStore

    edit_log, _ = open_log(settings)
    password = _new_password(f"Password for {name}")
    if password is None:
        return 1
    try:
        UserStore(edit_log).add(name, password)
    except PasswordError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"User {name!r} can log in when the app runs with --auth (argon2 hash stored in {settings.db_path}).")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, settings, names = parse_args(sys.argv[1:] if argv is None else argv)
    from storage.db import LogUnavailable

    try:
        if command == "set-password":
            return set_password(settings)
        if command == "unlock":
            return unlock(settings)
        if command == "add-user":
            return add_user(settings, names[0])
        return run(settings)
    except LogUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(settings: Settings) -> int:
    from filelock import FileLock, Timeout

    from runtime.loader import ModelLoadError
    from storage.passwords import UserStore

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    state_lock = FileLock(settings.state_dir / ".app.lock")
    try:  # two apps on one edit log would each replay and edit the same weights' deltas
        state_lock.acquire(timeout=0)
    except Timeout:
        print(f"error: another Amend is running on {settings.state_dir}; stop it, or give this one its own --home",
              file=sys.stderr)
        return 2
    auth = None
    if settings.auth:
        users = UserStore(open_log(settings)[0])
        if not users.any:
            print("error: --auth needs at least one user: python app.py add-user NAME", file=sys.stderr)
            return 2
        auth = users.verify
    try:
        assistant = build_assistant(settings)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in assistant.replay_problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not assistant.service.passwords.is_set:
        print("note: no edit password is set; edits will be refused until you run "
              "`python app.py set-password` or start with AMEND_EDIT_PASSWORD=...", file=sys.stderr)
    demo = build_ui(assistant)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=settings.host, server_port=settings.port, share=settings.share, auth=auth,
                auth_message="Amend: log in with a user from `python app.py add-user`." if auth else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
