"""The edit log: SQLite through sqlite-utils, WAL, synchronous=FULL, named migrations.

The log is the source of truth.  An edit's row is written as ``pending`` before the
weights change and moved to ``applied`` or ``failed`` after; ``reverted`` when undone.
All writes go through one connection under one lock, each in one transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from storage.records import AuthAttempt, CheckpointRecord, EditRecord, EditStatus

JSON_COLUMNS = ("hparams", "before", "after")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LogUnavailable(RuntimeError):
    """The edit log cannot be read or written (locked by another program, read-only, disk
    full); the message says which and that nothing was changed."""


class InvalidTransition(ValueError):
    def __init__(self, edit_id: int, current: str, wanted: str) -> None:
        super().__init__(f"edit {edit_id} is {current}; it cannot become {wanted}")


ALLOWED: dict[str, set[str]] = {
    "pending": {"applied", "failed"},
    "applied": {"reverted"},
    "reverted": set(),
    "failed": set(),
}


# -- migrations: append only; each runs once, in its own transaction ------------------------

def _m001_initial(db: sqlite_utils.Database) -> None:
    db["edits"].create(
        {
            "id": int, "created_at": str, "session": str, "subject": str, "prompt": str, "question": str,
            "target_old": str, "target_new": str, "method": str, "layer": int, "hparams": str,
            "model_fingerprint": str, "delta_id": str, "delta_path": str, "delta_sha256": str,
            "before": str, "after": str, "seconds": float, "status": str, "error": str,
            "applied_at": str, "reverted_at": str,
        },
        pk="id",
        not_null={"created_at", "session", "subject", "prompt", "target_new", "method", "status"},
    )
    db["edits"].create_index(["status"])
    db["auth_attempts"].create(
        {"id": int, "at": str, "session": str, "action": str, "success": int}, pk="id"
    )
    db["auth_attempts"].create_index(["session", "at"])
    db["checkpoints"].create({"id": int, "created_at": str, "path": str, "edit_ids": str, "seconds": float}, pk="id")
    db["settings"].create({"key": str, "value": str}, pk="key")


def _m002_edit_model_name(db: sqlite_utils.Database) -> None:
    db["edits"].add_column("model_name", str)


SESSION_SECRET_KEY = "session_secret"


def _tag(secret: str, session: str) -> str:
    return "s-" + hmac.new(secret.encode(), session.encode(), hashlib.sha256).hexdigest()[:16]


def _m003_private_sessions_and_users(db: sqlite_utils.Database) -> None:
    """Sessions are stored as keyed pseudonyms, never as the browser's session id (which would
    let whoever reads a row take over that browser's chat); login users for ``--auth``; the
    client address of password attempts (their lockout is per address)."""
    secret = secrets.token_hex(32)
    db["settings"].upsert({"key": SESSION_SECRET_KEY, "value": secret}, pk="key")
    for table in ("edits", "auth_attempts"):
        for row in list(db[table].rows):
            if row["session"] and not row["session"].startswith("s-"):
                db[table].update(row["id"], {"session": _tag(secret, row["session"])})
    db["auth_attempts"].add_column("address", str)
    db["users"].create({"name": str, "hash": str, "created_at": str}, pk="name")


def _m004_batches(db: sqlite_utils.Database) -> None:
    """Facts imported together share one delta and a batch id (reverted as one)."""
    db["edits"].add_column("batch_id", str)
    db["edits"].create_index(["batch_id"])


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_initial", _m001_initial),
    ("002_edit_model_name", _m002_edit_model_name),
    ("003_private_sessions_and_users", _m003_private_sessions_and_users),
    ("004_batches", _m004_batches),
]


class EditLog:
    def __init__(self, path: str | Path, *, timeout_s: float = 30) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=timeout_s)
            self.db = sqlite_utils.Database(conn)
            if str(path) != ":memory:":
                self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=FULL")
            self.migrate()
        except sqlite3.Error as exc:
            raise LogUnavailable(f"the edit log {self.path} cannot be opened: {exc}") from exc
        self._secret = self.setting(SESSION_SECRET_KEY)

    # -- infrastructure -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        with self._lock:
            conn = self.db.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:  # locked by another program past the timeout, read-only
                raise LogUnavailable(f"the edit log {self.path} cannot be written ({exc}); nothing was changed") from exc
            try:
                yield self.db
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise LogUnavailable(f"the edit log {self.path} cannot be written ({exc}); nothing was changed") from exc
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise LogUnavailable(f"the edit log {self.path} cannot be written ({exc}); nothing was changed") from exc

    def pseudonym(self, session: str) -> str:
        """What the log stores for a browser session: a keyed hash (the key is this database's
        own), the same for every row of that session, useless as a session id."""
        return _tag(self._secret, session)

    def migrate(self) -> list[str]:
        """Apply the migrations this database has not seen; returns their names."""
        with self._lock:
            if "_migrations" not in self.db.table_names():
                self.db["_migrations"].create({"name": str, "applied_at": str}, pk="name")
            done = {row["name"] for row in self.db["_migrations"].rows}
            applied = []
            for name, step in MIGRATIONS:
                if name in done:
                    continue
                with self.transaction() as db:
                    step(db)
                    db["_migrations"].insert({"name": name, "applied_at": now()})
                applied.append(name)
            return applied

    def migrations(self) -> list[str]:
        return [row["name"] for row in self.db["_migrations"].rows_where(order_by="name")]

    # -- edits ----------------------------------------------------------------------------

    def add_pending(self, **fields: Any) -> EditRecord:
        """A new ``pending`` row; ``session`` is stored as its pseudonym."""
        row = {"created_at": now(), "status": "pending", **fields}
        row["session"] = self.pseudonym(row["session"])
        for key in JSON_COLUMNS:
            if key in row:
                row[key] = json.dumps(row[key], ensure_ascii=False, default=str)
        with self.transaction() as db:
            edit_id = db["edits"].insert(row).last_pk
        return self.get(edit_id)

    def get(self, edit_id: int) -> EditRecord:
        try:
            row = self.db["edits"].get(edit_id)
        except sqlite_utils.db.NotFoundError:
            raise KeyError(f"no edit with id {edit_id}") from None
        return _edit(row)

    def transition(self, edit_id: int, status: EditStatus, **fields: Any) -> EditRecord:
        """Move an edit to ``status`` (checked against the state machine) and set ``fields``."""
        with self.transaction() as db:
            current = db["edits"].get(edit_id)["status"]
            if status not in ALLOWED[current]:
                raise InvalidTransition(edit_id, current, status)
            stamp = {"applied": "applied_at", "reverted": "reverted_at"}.get(status)
            update = {"status": status, **fields}
            if stamp:
                update[stamp] = now()
            if status == "applied":
                update["reverted_at"] = None
            for key in JSON_COLUMNS:
                if key in update:
                    update[key] = json.dumps(update[key], ensure_ascii=False, default=str)
            db["edits"].update(edit_id, update)
        return self.get(edit_id)

    def add_pending_batch(self, facts: list[dict[str, Any]], **shared: Any) -> list[EditRecord]:
        """One ``pending`` row per fact of an imported batch, in one transaction."""
        batch_id = secrets.token_hex(6)
        ids = []
        with self.transaction() as db:
            for fact in facts:
                row = {"created_at": now(), "status": "pending", "batch_id": batch_id, **shared, **fact}
                row["session"] = self.pseudonym(row["session"])
                for key in JSON_COLUMNS:
                    if key in row:
                        row[key] = json.dumps(row[key], ensure_ascii=False, default=str)
                ids.append(db["edits"].insert(row).last_pk)
        return [self.get(i) for i in ids]

    def change(self, statuses: dict[int, EditStatus], fields: dict[int, dict[str, Any]] | None = None,
               ) -> list[EditRecord]:
        """Several rows in one transaction: each of ``statuses`` moves to its status (checked against
        the state machine), each of ``fields`` gets those fields — a batch applied or reverted as
        one, or a revert that rebases the edit superseding it."""
        fields = fields or {}
        with self.transaction() as db:
            for edit_id in {**statuses, **fields}:
                update = dict(fields.get(edit_id, {}))
                if edit_id in statuses:
                    current, status = db["edits"].get(edit_id)["status"], statuses[edit_id]
                    if status not in ALLOWED[current]:
                        raise InvalidTransition(edit_id, current, status)
                    update["status"] = status
                    stamp = {"applied": "applied_at", "reverted": "reverted_at"}.get(status)
                    if stamp:
                        update[stamp] = now()
                for key in JSON_COLUMNS:
                    if key in update:
                        update[key] = json.dumps(update[key], ensure_ascii=False, default=str)
                db["edits"].update(edit_id, update)
        return [self.get(i) for i in {**statuses, **fields}]

    def batch(self, batch_id: str) -> list[EditRecord]:
        return [_edit(r) for r in self.db["edits"].rows_where("batch_id = ?", [batch_id], order_by="id")]

    def annotate(self, edit_id: int, **fields: Any) -> EditRecord:
        """Set ``fields`` of an edit without changing its status (the card's "after" column,
        measured once the edit is in)."""
        with self.transaction() as db:
            db["edits"].get(edit_id)  # raises NotFoundError for an unknown id
            db["edits"].update(edit_id, {k: json.dumps(v, ensure_ascii=False, default=str) if k in JSON_COLUMNS else v
                                         for k, v in fields.items()})
        return self.get(edit_id)

    def edits(self, status: str | None = None, search: str | None = None, limit: int = 1000) -> list[EditRecord]:
        where, args = [], {}
        if status and status != "all":
            where.append("status = :status")
            args["status"] = status
        if search:
            where.append("(subject LIKE :q OR prompt LIKE :q OR target_new LIKE :q OR target_old LIKE :q)")
            args["q"] = f"%{search}%"
        rows = self.db["edits"].rows_where(" AND ".join(where) or None, args, order_by="id desc", limit=limit)
        return [_edit(r) for r in rows]

    def applied(self) -> list[EditRecord]:
        """Applied edits in the order they were applied (for replay)."""
        rows = self.db["edits"].rows_where("status = 'applied'", order_by="applied_at, id")
        return [_edit(r) for r in rows]

    # -- auth -----------------------------------------------------------------------------

    def record_auth(self, session: str, action: str, success: bool, address: str | None = None) -> None:
        with self.transaction() as db:
            db["auth_attempts"].insert({"at": now(), "session": self.pseudonym(session), "action": action,
                                        "success": int(success), "address": address})

    def failures_since(self, since: str, *, session: str | None = None, address: str | None = None) -> int:
        """Wrong passwords since ``since``: in ``session``, from ``address``, or (neither) in all;
        attempts refused by a limit unchecked (action ``…:locked``) are not counted."""
        query = "SELECT count(*) FROM auth_attempts WHERE success = 0 AND at >= ? AND action NOT LIKE '%:locked'"
        args: list = [since]
        if session is not None:
            query += " AND session = ?"
            args.append(self.pseudonym(session))
        if address is not None:
            query += " AND address = ?"
            args.append(address)
        return self.db.execute(query, args).fetchone()[0]

    def auth_attempts(self, limit: int = 100) -> list[AuthAttempt]:
        rows = self.db["auth_attempts"].rows_where(order_by="id desc", limit=limit)
        return [AuthAttempt(**{**r, "success": bool(r["success"])}) for r in rows]

    # -- login users (``--auth``) ----------------------------------------------------------------

    def set_user(self, name: str, password_hash: str) -> None:
        with self.transaction() as db:
            db["users"].upsert({"name": name, "hash": password_hash, "created_at": now()}, pk="name")

    def user_hash(self, name: str) -> str | None:
        try:
            return self.db["users"].get(name)["hash"]
        except sqlite_utils.db.NotFoundError:
            return None

    def users(self) -> list[str]:
        return [r["name"] for r in self.db["users"].rows_where(order_by="name")]

    # -- settings and checkpoints -----------------------------------------------------------

    def setting(self, key: str) -> str | None:
        try:
            return self.db["settings"].get(key)["value"]
        except sqlite_utils.db.NotFoundError:
            return None

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db["settings"].upsert({"key": key, "value": value}, pk="key")

    def add_checkpoint(self, path: str, edit_ids: list[int], seconds: float) -> CheckpointRecord:
        with self.transaction() as db:
            pk = db["checkpoints"].insert(
                {"created_at": now(), "path": path, "edit_ids": json.dumps(edit_ids), "seconds": seconds}
            ).last_pk
        row = self.db["checkpoints"].get(pk)
        return CheckpointRecord(**{**row, "edit_ids": json.loads(row["edit_ids"])})

    def close(self) -> None:
        self.db.conn.close()


def _edit(row: dict) -> EditRecord:
    row = dict(row)
    for key in JSON_COLUMNS:
        row[key] = json.loads(row[key]) if row.get(key) else {}
    return EditRecord(**row)
