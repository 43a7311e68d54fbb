"""The one place where a confirmed correction becomes a weight change.

``EditService.apply`` is the single mutating step: a pending proposal (held server-side,
addressed by a one-time id) + the edit password -> a logged, applied, reversible delta.
The log row is written ``pending`` before the weights change and ``applied`` after; on any
failure the weights are restored and the row marked ``failed``, so the model and the log
never disagree.

A person waits seconds, not tens of seconds, after Apply: the card's "before" column is
measured in the background while the card is on screen (``register``), Apply returns once the
weights are in with P(new)/P(old) before and after, and the slow part of the "after" column
(completion, chat answer, unrelated probes) is measured by ``finish``, outside the edit mutex
and the write lock, and streamed into the card.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from agents import fluency
from agents.chat import ChatAgent
from agents.faults import pause_point
from agents.locks import RWLock
from agents.probes import Probe, Prober
from agents.proposal import EditProposal
from editing.delta import WeightDelta
from editing.engine import Editor, same_fact
from editing.errors import DeltaMismatch, EditingError
from editing.facts import FactRow, read_facts
from editing.fingerprint import weights_checksum
from editing.hparams import hparams_for
from editing.request import EditRequest
from runtime.loader import LoadedModel, remove_unfinished, save_checkpoint
from storage.db import EditLog, LogUnavailable
from storage.passwords import PasswordStore
from storage.records import CheckpointRecord, EditRecord

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int, float | None], None]
PROPOSAL_TTL_S = 3600
MAX_PENDING = 1000  # proposals held at once, over all sessions (the oldest go first)
OVERRIDABLE = ("subject", "prompt", "target_new", "target_old", "question")
METHODS = ("rome", "ft", "kn")
FACT_FIELDS = {"subject", "prompt", "target_new"}  # what makes a log row an edit request

class EditServiceError(Exception):
    """An edit could not be done; the message is meant for the person."""


class UnknownProposal(EditServiceError):
    def __init__(self) -> None:
        super().__init__("This proposal is unknown, expired or already used; make the correction again.")


@dataclass
class Pending:
    id: str
    session: str
    proposal: EditProposal
    created: float = field(default_factory=time.time)
    # the "before" column, measured in the background while the card is on screen, and what
    # it was measured for: the request's fields and the weights (``DeltaStack.version``)
    before: Future | None = None
    before_for: tuple | None = None


class EditReport(BaseModel):
    edit: EditRecord
    before: Probe
    after: Probe  # the scores first; ``EditService.finish`` fills in the rest
    seconds: float  # from Apply to the weights being in, with the scores after
    engine_seconds: float = 0.0  # of which computing the delta (``Editor.compute``)
    layer: int
    method: str
    weights_version: int  # the weights the report describes
    supersedes: list[int] = []  # applied edits of the same fact that this one overrides (still applied)

    @property
    def lands(self) -> bool:
        """Whether the edited model now gives the new answer after the prompt (each of its
        tokens the top choice): an edit that did not is applied, and the card says so."""
        return self.after.predicted


class BatchReport(BaseModel):
    """An imported file of corrections: one log row per fact, all written by one delta."""

    edits: list[EditRecord]
    before: list[Probe]  # P(new)/P(old) per fact, in the file's order
    after: list[Probe]
    seconds: float
    engine_seconds: float
    layer: int

    @property
    def landed(self) -> int:
        """How many facts the model now gives (each token of the new answer its top choice)."""
        return sum(a.predicted for a in self.after)


class EditService:
    def __init__(
        self,
        loaded: LoadedModel,
        editor: Editor,
        log_db: EditLog,
        passwords: PasswordStore,
        deltas_dir: Path,
        *,
        checkpoints_dir: Path | None = None,
        lock: RWLock | None = None,
        chat: ChatAgent | None = None,
        default_method: Literal["rome", "ft", "kn"] = "rome",
        hparams: dict[str, dict] | None = None,
    ) -> None:
        self.loaded, self.editor, self.log, self.passwords = loaded, editor, log_db, passwords
        self.deltas_dir = Path(deltas_dir)
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else self.deltas_dir.parent / "checkpoints"
        self.lock = lock or RWLock()
        self.chat = chat or ChatAgent(loaded, self.lock)
        self.stack = editor.stack  # the model's edit state, owned by the editor
        self.prober = Prober(loaded, self.lock, self.chat)
        # one background worker measures "before" columns: proposals wait their turn rather than
        # each taking the cores from chat
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="before-probe")
        self.default_method = default_method
        for method, overrides in (hparams or {}).items():  # a bad setting fails at start, not at an edit
            hparams_for(method, overrides)
        self.hparams = hparams or {}
        self._pending: dict[str, Pending] = {}
        self._pending_lock = threading.Lock()  # sessions register and use proposals from many threads
        self._edit_mutex = threading.Lock()  # one edit, revert or checkpoint at a time; chat keeps running

    # -- proposals ------------------------------------------------------------------------

    def register(self, session: str, proposal: EditProposal) -> str:
        """Keep a proposal server-side; the client only ever holds its one-time id.  Its
        "before" column starts being measured in the background at once."""
        now = time.time()
        pid = secrets.token_urlsafe(12)
        pending = Pending(pid, session, proposal)
        try:
            request, _ = self._validated(proposal, {})
        except EditServiceError:
            request = None  # Apply will say what is wrong with it
        if request is not None:
            pending.before_for = self._before_key(request, proposal.target_old)
            pending.before = self._background.submit(self.prober.full, request, proposal.target_old)
        with self._pending_lock:
            for old in [p for p, v in self._pending.items() if now - v.created > PROPOSAL_TTL_S]:
                expired = self._pending.pop(old)
                if expired.before is not None:
                    expired.before.cancel()
            while len(self._pending) >= MAX_PENDING:  # insertion order: the oldest first
                dropped = self._pending.pop(next(iter(self._pending)))
                if dropped.before is not None:
                    dropped.before.cancel()
            self._pending[pid] = pending
        return pid

    def _before_key(self, request: EditRequest, target_old: str | None) -> tuple:
        return (request.model_dump_json(), target_old, self.stack.version)

    def pending(self, session: str, pid: str) -> EditProposal:
        item = self._pending.get(pid) if isinstance(pid, str) else None
        if item is None or item.session != session:
            raise UnknownProposal()
        return item.proposal

    def close(self) -> None:
        """Drop the "before" measurements still queued and wait for the one running."""
        self._background.shutdown(wait=True, cancel_futures=True)

    def _take(self, session: str, pid: str) -> Pending:
        """Remove and return a session's proposal: of two Applies with one id, one gets it."""
        with self._pending_lock:
            item = self._pending.get(pid) if isinstance(pid, str) else None
            if item is None or item.session != session:
                raise UnknownProposal()
            del self._pending[pid]
        return item

    def cancel(self, session: str, pid: str) -> None:
        pending = self._take(session, pid)
        if pending.before is not None:
            pending.before.cancel()

    # -- the mutating step ------------------------------------------------------------------

    def apply(
        self,
        session: str,
        pid: str,
        password: str,
        *,
        overrides: dict[str, Any] | None = None,
        method: str | None = None,
        layer: int | str | None = None,
        progress: ProgressFn | None = None,
        address: str | None = None,
    ) -> EditReport:
        """Check everything that can be checked without changing anything — the proposal id,
        the password, the fields, the method, the layer — then use the proposal up and edit.

        ``overrides`` are the card's fields: a field given as None keeps the proposal's value,
        a field given empty is refused (a cleared field is not "keep what was there")."""
        proposal = self.pending(session, pid)  # an unknown id is refused before the password is tried
        self._check_password(password, session, "apply_edit", address)  # raises; nothing changes
        request, proposal = self._validated(proposal, overrides or {})
        method = method or self.default_method
        if method not in METHODS:
            raise EditServiceError(f"Unknown method {method!r}; choose {' or '.join(METHODS)}.")
        try:
            with self.lock.read():  # "auto" reads the logit lens of the prompt
                layer = self.editor.resolve_layer(layer, request)
        except (EditingError, ValueError) as exc:
            raise EditServiceError(f"The edit is not valid: {_short(exc)}") from exc
        pending = self._take(session, pid)  # one-time from here on: of two Applies with this id, one goes ahead
        with self._edit_mutex:
            return self._apply(session, proposal, request, method, layer, progress, pending)

    def _check_password(self, password: str, session: str, action: str, address: str | None) -> None:
        if not isinstance(password, str):
            password = ""
        try:
            self.passwords.check(password, session, action, address)
        except LogUnavailable as exc:  # the attempt cannot be recorded, so it is not made
            raise EditServiceError(f"Nothing was changed: {exc}.") from exc

    def _validated(self, proposal: EditProposal, overrides: dict[str, Any]) -> tuple[EditRequest, EditProposal]:
        unknown = set(overrides) - set(OVERRIDABLE)
        if unknown:
            raise EditServiceError(f"cannot override {', '.join(sorted(unknown))}")
        fields = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if not isinstance(value, str):
                raise EditServiceError(f"The {_FIELD_NAMES[key]} must be text.")
            if not value.strip() and key in ("subject", "prompt", "target_new"):
                raise EditServiceError(f"The {_FIELD_NAMES[key]} is empty; fill it in (or cancel the proposal).")
            fields[key] = value.strip() or None
        try:
            proposal = EditProposal.model_validate({**proposal.model_dump(), **fields})
            request = EditRequest(prompt=proposal.prompt, subject=proposal.subject, target_new=proposal.target_new,
                                  target_true=proposal.target_old, question=proposal.question)
            request.check_lengths(self.loaded.tokenizer)
        except (ValidationError, EditingError, ValueError) as exc:
            raise EditServiceError(f"The edit is not valid: {_short(exc)}") from exc
        return request, proposal

    def _before(self, pending: Pending, request: EditRequest, target_old: str | None) -> Probe:
        """The "before" column: the background measurement when it is of this request on these
        weights, else measured now (the person changed a field, or another edit landed)."""
        if pending.before is not None and pending.before_for == self._before_key(request, target_old):
            try:
                return pending.before.result()
            except Exception:  # noqa: BLE001 - measured again below, where an error is reported
                log.exception("the background before-probe failed")
        elif pending.before is not None:
            pending.before.cancel()
        return self.prober.full(request, target_old)

    def _apply(self, session: str, proposal: EditProposal, request: EditRequest, method: str, layer: int,
               progress: ProgressFn | None, pending: Pending) -> EditReport:
        report = progress or (lambda *a: None)
        report("checking the model's current answer", 0, 1, None)
        before = self._before(pending, request, proposal.target_old)
        supersedes = [r.id for r in self.superseded_by(request.subject, request.text)]
        start = time.perf_counter()
        try:
            record = self.log.add_pending(
                session=session, subject=request.subject, prompt=request.text, question=request.question,
                target_old=proposal.target_old, target_new=request.target_new, method=method, layer=layer,
                model_fingerprint=self.editor.fingerprint, model_name=self.loaded.name, before=before.model_dump(),
            )
        except LogUnavailable as exc:
            raise EditServiceError(f"The edit was not made: {exc}.") from exc
        delta: WeightDelta | None = None
        applied = False
        try:
            with self.lock.read():  # computing only reads the weights; chat may continue
                outcome = self.editor.compute(request, method, layer, self.hparams.get(method), progress=progress)
            delta = outcome.delta
            pause_point("edit:computed", self._weights_info)
            report("writing weights", 1, 1, None)
            path = self.deltas_dir / f"edit-{record.id:05d}-{delta.id}.safetensors"
            digest = delta.save(path, before_rename=lambda: pause_point("edit:delta-writing", self._weights_info))
            with self.editor.changing_weights(), self.lock.write():  # no generation runs while weights change
                self.stack.apply(delta)
                applied = True
            report("checking the edited model", 1, 1, None)
            after = self.prober.scores(request, proposal.target_old)
            seconds = time.perf_counter() - start
            record = self.log.transition(
                record.id, "applied", delta_id=delta.id, delta_path=str(path), delta_sha256=digest,
                hparams=delta.meta.get("hparams", {}), after=after.model_dump(), seconds=round(seconds, 2),
                layer=outcome.layer,  # KN's: where its strongest knowledge neuron is
            )
        except BaseException as exc:
            if applied and delta is not None:
                with self.editor.changing_weights(), self.lock.write():
                    self.stack.revert(delta.id)
            self._remove_delta_files(record.id)
            try:
                self.log.transition(record.id, "failed", error=_short(exc))
            except LogUnavailable:  # still pending: the next start marks it failed
                log.exception("edit %d could not be marked failed", record.id)
            if isinstance(exc, EditingError):
                raise EditServiceError(f"The edit failed and nothing was changed: {_short(exc)}") from exc
            if isinstance(exc, LogUnavailable):
                raise EditServiceError(f"The edit was undone and nothing was changed: {exc}.") from exc
            if isinstance(exc, OSError):  # disk full, no permission: the delta or its row could not be saved
                raise EditServiceError(f"The edit could not be saved ({exc.strerror or exc}); "
                                       "nothing was changed.") from exc
            raise
        log.info("edit %d applied: %s -> %s (%s, layer %d, %.1f s)", record.id, record.subject, record.target_new,
                 method, layer, seconds)
        return EditReport(edit=record, before=before, after=after, seconds=seconds, layer=outcome.layer, method=method,
                          weights_version=self.stack.version, engine_seconds=outcome.seconds, supersedes=supersedes)

    # -- many facts at once --------------------------------------------------------------

    def preview_import(self, text: str, name: str = "") -> list[FactRow]:
        """The rows of a corrections file, each valid or saying why not (also: too long for this
        model's tokenizer, the same fact twice in the file)."""
        try:
            rows = read_facts(text, name)
        except ValueError as exc:
            raise EditServiceError(f"The file cannot be imported: {exc}.") from exc
        seen: dict[tuple[str, str], int] = {}
        checked = []
        for row in rows:
            if row.error is None:
                request = row.request()
                try:
                    request.check_lengths(self.loaded.tokenizer)
                except EditingError as exc:
                    row = row.model_copy(update={"error": str(exc)})
                key = (" ".join(request.subject.split()).casefold(), " ".join(request.text.split()).casefold())
                if row.error is None and key in seen:
                    row = row.model_copy(update={"error": f"the same fact as line {seen[key]}"})
                if row.error is None:
                    seen.setdefault(key, row.line)
            checked.append(row)
        return checked

    def import_edits(self, session: str, text: str, name: str, password: str, *, progress: ProgressFn | None = None,
                     address: str | None = None) -> BatchReport:
        """Write every fact of a corrections file in one ROME solve (``Editor.compute_batch``):
        one log row per fact, one delta for all of them, reverted as one.  Refused, with every
        bad line named, unless every row is valid."""
        self._check_password(password, session, "import_edits", address)
        rows = self.preview_import(text, name)
        bad = [r for r in rows if r.error]
        if bad:
            listed = "; ".join(f"line {r.line}: {r.error}" for r in bad[:10]) + (" …" if len(bad) > 10 else "")
            raise EditServiceError(f"Nothing was imported: {len(bad)} of {len(rows)} rows are not valid ({listed}). "
                                   "Fix or remove them and import again.")
        if not rows:
            raise EditServiceError("The file holds no corrections (a CSV needs a header: subject,prompt,target_new).")
        with self._edit_mutex:
            return self._apply_batch(session, rows, progress)

    def _apply_batch(self, session: str, rows: list[FactRow], progress: ProgressFn | None) -> BatchReport:
        report = progress or (lambda *a: None)
        requests = [r.request() for r in rows]
        report("checking the model's current answers", 0, len(rows), None)
        before = [self.prober.scores(q, r.target_old) for q, r in zip(requests, rows)]
        layer = self.editor.default_layer
        start = time.perf_counter()
        try:
            records = self.log.add_pending_batch(
                [{"subject": q.subject, "prompt": q.text, "question": q.question, "target_old": r.target_old,
                  "target_new": q.target_new, "before": b.model_dump()} for q, r, b in zip(requests, rows, before)],
                session=session, method="rome", layer=layer, model_fingerprint=self.editor.fingerprint,
                model_name=self.loaded.name)
        except LogUnavailable as exc:
            raise EditServiceError(f"Nothing was imported: {exc}.") from exc
        path: Path | None = None
        delta: WeightDelta | None = None
        applied = False
        try:
            with self.lock.read():  # computing only reads the weights; chat may continue
                outcome = self.editor.compute_batch(requests, layer, self.hparams.get("rome"), progress=progress)
            delta = outcome.delta
            report("writing weights", len(rows), len(rows), None)
            path = self.deltas_dir / f"batch-{records[0].id:05d}-{delta.id}.safetensors"
            digest = delta.save(path)
            with self.editor.changing_weights(), self.lock.write():
                self.stack.apply(delta)
                applied = True
            after = [self.prober.scores(q, r.target_old) for q, r in zip(requests, rows)]
            seconds = round(time.perf_counter() - start, 2)
            records = self.log.change({r.id: "applied" for r in records}, {
                r.id: {"delta_id": delta.id, "delta_path": str(path), "delta_sha256": digest, "after": a.model_dump(),
                       "hparams": delta.meta.get("hparams", {}), "seconds": seconds}
                for r, a in zip(records, after)})
        except BaseException as exc:
            if applied and delta is not None:
                with self.editor.changing_weights(), self.lock.write():
                    self.stack.revert(delta.id)
            if path is not None:
                path.unlink(missing_ok=True)
                Path(f"{path}.json").unlink(missing_ok=True)
            try:
                self.log.change({r.id: "failed" for r in records}, {r.id: {"error": _short(exc)} for r in records})
            except LogUnavailable:  # still pending: the next start marks them failed
                log.exception("the batch of edits %d–%d could not be marked failed", records[0].id, records[-1].id)
            if isinstance(exc, EditingError):
                raise EditServiceError(f"The import failed and nothing was changed: {_short(exc)}") from exc
            if isinstance(exc, (LogUnavailable, OSError)):
                raise EditServiceError(f"The import was undone and nothing was changed: {_short(exc)}.") from exc
            raise
        log.info("batch of %d edits applied (%d–%d, layer %d, %.1f s)", len(records), records[0].id, records[-1].id,
                 layer, seconds)
        return BatchReport(edits=records, before=before, after=after, seconds=seconds, layer=layer,
                           engine_seconds=outcome.seconds)

    def finish(self, report: EditReport) -> Iterator[EditReport]:
        """The slow part of the "after" column, one piece at a time, each yielded as the report
        so far; then logged with the edit.  Runs without the edit mutex or the write lock; if
        another edit or revert changes the weights meanwhile, it stops and says so."""
        record = report.edit
        request = EditRequest(prompt=record.prompt, subject=record.subject, target_new=record.target_new,
                              target_true=record.target_old, question=record.question)
        after = report.after
        for after in self.prober.rest(request, report.after):
            if self.stack.version != report.weights_version:
                after = after.model_copy(update={"note": "another edit changed the weights before this report was "
                                                         "finished; the rest was not measured"})
                break
            report = report.model_copy(update={"after": after})
            yield report
        if after.complete:
            verdict = fluency.check(report.before, after, request)
            after = after.model_copy(update={"fluency": verdict})
            if verdict.broken:
                log.warning("edit %d applied but its answers are broken: %s", record.id, "; ".join(verdict.problems))
        try:
            edit = self.log.annotate(record.id, after=after.model_dump())
        except (LogUnavailable, KeyError):
            log.exception("the after-probe of edit %d could not be logged", record.id)
            edit = report.edit
        yield report.model_copy(update={"after": after, "edit": edit})

    def _weights_info(self) -> dict:
        return {"weights": weights_checksum(self.loaded.model)}

    def _remove_delta_files(self, edit_id: int) -> None:
        for path in self.deltas_dir.glob(f"edit-{edit_id:05d}-*"):
            path.unlink(missing_ok=True)

    def superseded_by(self, subject: str, prompt: str) -> list[EditRecord]:
        """The applied edits of the same fact — the same subject and prompt, case and spacing
        aside — that an edit of (subject, prompt) would supersede, oldest first."""
        try:
            request = EditRequest(prompt=prompt, subject=subject, target_new="-")
        except (ValidationError, EditingError):
            return []
        return [r for r in self.log.applied() if same_fact(r.model_dump(include=FACT_FIELDS), request)]

    def revert(self, session: str, edit_id: int, password: str, address: str | None = None) -> EditRecord:
        """Revert an applied edit (and the rest of its batch, if it was imported with others).

        An edit that a later applied edit supersedes (same fact, same layer) is reverted so that
        the later one keeps the value it wrote: that one is rebased onto the weights without it
        (``Editor.rebased``), its new delta saved and logged in the same transaction."""
        self._check_password(password, session, "revert_edit", address)
        with self._edit_mutex:
            try:
                record = self.log.get(edit_id)
            except KeyError as exc:
                raise EditServiceError(f"There is no edit {edit_id} in the log.") from exc
            if record.status != "applied":
                raise EditServiceError(f"Edit {edit_id} is {record.status}, not applied; there is nothing to revert.")
            if record.delta_id not in self.stack:
                raise EditServiceError(f"Edit {edit_id} is logged as applied but is not in the model: it was not "
                                       "replayed at start-up (see the problems shown then); nothing to revert.")
            rows = self.log.batch(record.batch_id) if record.batch_id else [record]
            rows = [r for r in rows if r.status == "applied"]
            delta = next(d for d in self.stack.applied if d.id == record.delta_id)
            rebase = self._rebase_for(delta, rows)
            fields = {}
            if rebase is not None:
                successor, rebased, path, digest = rebase
                fields[successor.id] = {"delta_id": rebased.id, "delta_path": str(path), "delta_sha256": digest}
            saved = self.stack.snapshot()
            try:
                with self.editor.changing_weights(), self.lock.write():
                    self.stack.revert(delta.id)
                    if rebase is not None:
                        self.stack.replace(successor.delta_id, rebased)
                changed = self.log.change({r.id: "reverted" for r in rows}, fields)
            except BaseException:
                with self.editor.changing_weights(), self.lock.write():  # keep model and log in agreement
                    self.stack.restore(saved)
                if rebase is not None:
                    Path(path).unlink(missing_ok=True)
                raise
            if rebase is not None and successor.delta_path:
                Path(successor.delta_path).unlink(missing_ok=True)  # replaced by the rebased delta
                Path(f"{successor.delta_path}.json").unlink(missing_ok=True)
            return next(r for r in changed if r.id == edit_id)

    def _rebase_for(self, delta: WeightDelta, rows: list[EditRecord]):
        """The newest later applied single edit that supersedes one of ``rows`` on the same matrix,
        rebased without ``delta`` and saved: (its record, the rebased delta, path, sha256) or None."""
        if delta.keys is None or len(rows) != 1:
            return None
        fact = _fact(rows[0])
        if fact is None:
            return None
        later = [r for r in self.log.applied() if r.id > rows[0].id and not r.batch_id and r.layer == rows[0].layer
                 and same_fact(r.model_dump(include=FACT_FIELDS), fact)]
        for successor in reversed(later):  # the newest: A → B → C, A reverted, C's answer stays
            newer = next((d for d in self.stack.applied if d.id == successor.delta_id), None)
            if newer is None or newer.keys is None or newer.param != delta.param:
                continue
            rebased = self.editor.rebased(newer, without=delta)
            path = self.deltas_dir / f"edit-{successor.id:05d}-{rebased.id}.safetensors"
            return successor, rebased, path, rebased.save(path)
        return None

    # -- persistence ------------------------------------------------------------------------

    def replay(self) -> list[str]:
        """Start-up recovery: finish what a crash interrupted, then re-apply the log's applied
        edits; returns the problems found.

        A row still ``pending`` is an edit that a crash interrupted before it was logged as
        applied: its weights were lost with the process, so it becomes ``failed``.  Files that
        no applied or reverted edit names — a delta's temporary file, a delta saved for an edit
        that never got logged as applied — and half-written checkpoint folders are deleted, so
        nothing half-made is ever used or listed."""
        problems = []
        for record in self.log.edits(status="pending", limit=1_000_000):
            self.log.transition(record.id, "failed", error="interrupted: the app stopped before this edit finished")
            problems.append(f"edit {record.id} ({record.subject} → {record.target_new}) was interrupted by a "
                            "stop of the app and is marked failed")
            log.warning(problems[-1])
        self._remove_unlisted_files()
        for folder in remove_unfinished(self.checkpoints_dir):
            log.warning("removed %s, a checkpoint a stop of the app left unfinished", folder)
        replayed: set[str] = set()
        for record in self.log.applied():
            if record.delta_id in replayed:  # the other facts of a batch share its delta
                continue
            try:
                if record.model_fingerprint and record.model_fingerprint != self.editor.fingerprint:
                    raise DeltaMismatch(f"it was made for another model ({record.model_fingerprint})")
                if not record.delta_path or not Path(record.delta_path).exists():
                    raise DeltaMismatch(f"its delta file {record.delta_path} is missing")
                delta = WeightDelta.load(record.delta_path, expected_sha256=record.delta_sha256)
                with self.editor.changing_weights(), self.lock.write():
                    self.stack.apply(delta)
                replayed.add(delta.id)
            except (DeltaMismatch, OSError, KeyError) as exc:
                problems.append(f"edit {record.id} ({record.subject} → {record.target_new}) not replayed: {exc}")
                log.warning(problems[-1])
        return problems

    def _remove_unlisted_files(self) -> None:
        if not self.deltas_dir.exists():
            return
        listed = {Path(r.delta_path).name for status in ("applied", "reverted")
                  for r in self.log.edits(status=status, limit=1_000_000) if r.delta_path}
        for path in self.deltas_dir.iterdir():
            name = path.name.removesuffix(".json")
            if path.is_file() and name not in listed:
                log.warning("removing %s: no applied or reverted edit names it (left by a stop of the app)", path)
                path.unlink(missing_ok=True)

    def save_checkpoint(self, session: str, password: str, address: str | None = None) -> CheckpointRecord:
        self._check_password(password, session, "save_checkpoint", address)
        with self._edit_mutex:  # the manifest lists exactly the edits in the saved weights
            try:
                return self._save_checkpoint(self.checkpoints_dir)
            except OSError as exc:  # disk full, no permission: the temporary folder is gone
                raise EditServiceError(f"The checkpoint could not be written ({exc.strerror or exc}); "
                                       "nothing was saved.") from exc
            except LogUnavailable as exc:
                raise EditServiceError(f"The checkpoint was written but could not be logged: {exc}.") from exc

    def _save_checkpoint(self, root: Path) -> CheckpointRecord:
        start = time.perf_counter()
        applied = [r for r in self.log.applied() if r.delta_id in self.stack]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = root / f"{_slug(self.loaded.name)}-{stamp}-{len(applied)}edits"
        if out.exists():  # two saves within a second
            out = out.with_name(f"{out.name}-{secrets.token_hex(2)}")
        manifest = {
            "base_model": self.loaded.name,
            "base_fingerprint": self.editor.fingerprint,
            "edits": [{"id": r.id, "subject": r.subject, "prompt": r.prompt, "target_new": r.target_new,
                       "method": r.method, "layer": r.layer, "delta_sha256": r.delta_sha256} for r in applied],
        }
        with self.lock.read():
            save_checkpoint(self.loaded, out, manifest,
                            before_rename=lambda: pause_point("checkpoint:writing", self._weights_info))
        return self.log.add_checkpoint(str(out), [r.id for r in applied], round(time.perf_counter() - start, 2))

    @property
    def n_applied(self) -> int:
        return len(self.stack)


_FIELD_NAMES = {"subject": "subject", "prompt": "prompt", "target_new": "new answer", "target_old": "current answer",
                "question": "question"}


def _fact(record: EditRecord) -> EditRequest | None:
    try:
        return EditRequest(prompt=record.prompt, subject=record.subject, target_new=record.target_new)
    except (ValidationError, EditingError):
        return None


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
    return str(exc) or type(exc).__name__


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[-60:] or "model"
