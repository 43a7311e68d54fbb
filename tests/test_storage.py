"""The edit log, its migrations and state machine, and the edit password."""

from __future__ import annotations

import sqlite3

import pytest

from storage.db import MIGRATIONS, EditLog, InvalidTransition
from storage.passwords import NoPasswordSet, PasswordStore, TooManyAttempts, WeakPassword, WrongPassword


def new_edit(log: EditLog, **extra):
    return log.add_pending(session="s", subject="Eiffel Tower", prompt="The Eiffel Tower is in",
                           target_new="Rome", method="rome", **extra)


def test_fresh_database_gets_every_migration(tmp_path):
    log = EditLog(tmp_path / "a.sqlite")
    assert log.migrations() == [name for name, _ in MIGRATIONS]
    assert log.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert log.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_existing_database_is_migrated_forward(tmp_path):
    path = tmp_path / "old.sqlite"
    log = EditLog(path)
    # make it look like a database written before migration 002
    log.db.execute("DELETE FROM _migrations WHERE name = '002_edit_model_name'")
    log.db.conn.commit()
    log.db.execute("CREATE TABLE edits_old AS SELECT * FROM edits")
    log.db.conn.commit()
    log.db["edits"].drop()
    log.db.execute("ALTER TABLE edits_old RENAME TO edits")
    log.db["edits"].transform(drop={"model_name"})
    log.close()
    reopened = EditLog(path)
    assert "002_edit_model_name" in reopened.migrations()
    assert "model_name" in reopened.db["edits"].columns_dict
    assert reopened.migrate() == []  # idempotent


def test_state_machine(tmp_path):
    log = EditLog(tmp_path / "a.sqlite")
    edit = new_edit(log)
    assert edit.status == "pending"
    with pytest.raises(InvalidTransition):
        log.transition(edit.id, "reverted")
    applied = log.transition(edit.id, "applied", after={"p": 0.9})
    assert applied.status == "applied" and applied.applied_at and applied.after == {"p": 0.9}
    reverted = log.transition(edit.id, "reverted")
    assert reverted.status == "reverted" and reverted.reverted_at
    failed = log.transition(new_edit(log).id, "failed", error="boom")
    assert failed.error == "boom"
    with pytest.raises(InvalidTransition):
        log.transition(failed.id, "applied")
    assert [e.status for e in log.edits()] == ["failed", "reverted"]
    assert [e.id for e in log.edits(status="failed")] == [failed.id]
    assert log.edits(search="Eiffel") and not log.edits(search="Colosseum")


def test_failed_transaction_leaves_no_trace(tmp_path):
    log = EditLog(tmp_path / "a.sqlite")
    edit = new_edit(log)
    with pytest.raises(RuntimeError):
        with log.transaction() as db:
            db["edits"].update(edit.id, {"status": "applied"})
            raise RuntimeError("crash between writes")
    assert log.get(edit.id).status == "pending"


def test_log_survives_reopen_from_another_connection(tmp_path):
    path = tmp_path / "a.sqlite"
    log = EditLog(path)
    edit = new_edit(log)
    log.transition(edit.id, "applied")
    other = sqlite3.connect(path)
    assert other.execute("SELECT status FROM edits").fetchone()[0] == "applied"


def test_password_hash_only_and_limits(tmp_path):
    log = EditLog(tmp_path / "a.sqlite")
    store = PasswordStore(log, max_failures=3)
    with pytest.raises(NoPasswordSet):
        store.check("x", "s", "apply_edit")
    with pytest.raises(WeakPassword):
        store.set("ab")
    store.set("hunter22")
    stored = log.setting("edit_password_hash")
    assert stored.startswith("$argon2") and "hunter22" not in stored
    store.check("hunter22", "s", "apply_edit")
    with pytest.raises(WrongPassword):
        store.check("nope", "s", "apply_edit")
    with pytest.raises(WrongPassword):
        store.check("nope", "s", "apply_edit")
    with pytest.raises(TooManyAttempts):
        store.check("nope", "s", "apply_edit")
    # the limit survives a restart, and even the right password is refused inside the window
    reopened = PasswordStore(EditLog(tmp_path / "a.sqlite"), max_failures=3)
    with pytest.raises(TooManyAttempts):
        reopened.check("hunter22", "s", "apply_edit")
    reopened.check("hunter22", "other-session", "apply_edit")  # per session
    attempts = log.auth_attempts()
    assert attempts[0].action == "apply_edit" and attempts[0].success
    assert attempts[1].action == "apply_edit:locked" and not attempts[1].success  # refused, logged, not counted
    assert sum(not a.success for a in attempts if a.action == "apply_edit") == 3


def test_new_sessions_do_not_reset_the_limit_and_strangers_cannot_lock_the_operator_out(tmp_path):
    """A session id is the client's choice: guessing from a fresh session each time still hits
    the limit of that client's address.  The operator, from another address, still gets in;
    ``unlock`` (``python app.py unlock``) clears the counts."""
    store = PasswordStore(EditLog(tmp_path / "a.sqlite"), max_failures=3, max_failures_per_address=4,
                          slow_after=2, slow_spacing_s=0.01)
    store.set("hunter22")
    for i in range(3):
        with pytest.raises(WrongPassword):
            store.check("guess", f"attacker-{i}", "revert_edit", address="10.0.0.9")
    with pytest.raises(TooManyAttempts, match="network address") as refused:
        store.check("guess", "attacker-3", "revert_edit", address="10.0.0.9")
    assert refused.value.scope == "address"
    with pytest.raises(TooManyAttempts, match="network address"):  # the right password too, from there
        store.check("hunter22", "attacker-4", "apply_edit", address="10.0.0.9")
    store.check("hunter22", "owner", "apply_edit", address="127.0.0.1")  # past the global slow-down
    assert store.log.failures_since("2000-01-01T00:00:00Z") == 4
    store.unlock()
    store.check("hunter22", "attacker-5", "apply_edit", address="10.0.0.9")
    reopened = PasswordStore(EditLog(tmp_path / "a.sqlite"), max_failures=3, max_failures_per_address=4)
    assert reopened.log.failures_since(reopened._since()) == 0  # the unlock survives a restart


def test_sessions_are_stored_as_pseudonyms(tmp_path):
    """What the log keeps of a browser session cannot be used as one (its id would hand over
    that browser's chat history); the same session always maps to the same pseudonym."""
    log = EditLog(tmp_path / "a.sqlite")
    edit = log.add_pending(session="victim-session-hash", subject="Eiffel Tower", prompt="The Eiffel Tower is in",
                           target_new="Rome", method="rome")
    log.record_auth("victim-session-hash", "apply_edit", False)
    raw = log.db.execute("SELECT session FROM edits UNION SELECT session FROM auth_attempts").fetchall()
    assert raw == [(edit.session,)] and "victim" not in edit.session
    assert edit.session == EditLog(tmp_path / "a.sqlite").pseudonym("victim-session-hash")
    assert EditLog(tmp_path / "b.sqlite").pseudonym("victim-session-hash") != edit.session  # keyed per log
    assert "session" not in edit.public() and "question" not in edit.public()


def test_login_users(tmp_path):
    from storage.passwords import UserStore

    users = UserStore(EditLog(tmp_path / "a.sqlite"))
    assert not users.any
    users.add("ada", "lovelace")
    assert users.any and users.verify("ada", "lovelace")
    assert not users.verify("ada", "wrong") and not users.verify("bob", "lovelace")
    assert "lovelace" not in str(users.log.db.execute("SELECT * FROM users").fetchall())


def test_a_locked_or_read_only_log_is_a_clear_error(tmp_path):
    from storage.db import LogUnavailable

    path = tmp_path / "a.sqlite"
    log = EditLog(path, timeout_s=0.2)
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    with pytest.raises(LogUnavailable, match="locked"):
        new_edit(log)
    blocker.rollback()
    log.db.execute("PRAGMA query_only = ON")  # what a read-only file does to every write
    with pytest.raises(LogUnavailable, match="readonly|read-only|query"):
        new_edit(log)
    log.db.execute("PRAGMA query_only = OFF")
    assert log.edits() == []
