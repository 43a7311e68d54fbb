"""The edit password: an argon2 hash (passlib, maintained as ``libpass``), attempt limits.

Only the hash is stored (in the log's settings table).  Failed attempts are counted per
session in the database, so the limit survives restarts.
"""

from __future__ import annotations

import time

from passlib.hash import argon2

from storage.db import EditLog

HASH_KEY = "edit_password_hash"
MAX_FAILURES = 5
WINDOW_SECONDS = 600
MIN_LENGTH = 4


class PasswordError(Exception):
    """Base of the password errors; their messages are shown to people as they are."""


class NoPasswordSet(PasswordError):
    def __init__(self) -> None:
        super().__init__(
            "No edit password is set, so edits are refused. Set one with `python app.py set-password` "
            "or start the app once with AMEND_EDIT_PASSWORD=... in the environment."
        )


class WrongPassword(PasswordError):
    def __init__(self, remaining: int) -> None:
        super().__init__(f"Wrong edit password; nothing was changed. {remaining} attempt(s) left in this window.")
        self.remaining = remaining


class TooManyAttempts(PasswordError):
    def __init__(self, wait_seconds: int) -> None:
        super().__init__(
            f"Too many wrong passwords in this session; try again in {max(1, wait_seconds // 60)} minute(s)."
        )


class WeakPassword(PasswordError, ValueError):
    def __init__(self) -> None:
        super().__init__(f"The edit password must have at least {MIN_LENGTH} characters.")


class PasswordStore:
    def __init__(self, log: EditLog, *, max_failures: int = MAX_FAILURES, window_s: int = WINDOW_SECONDS) -> None:
        self.log, self.max_failures, self.window_s = log, max_failures, window_s

    @property
    def is_set(self) -> bool:
        return self.log.setting(HASH_KEY) is not None

    def set(self, password: str) -> None:
        if len(password) < MIN_LENGTH:
            raise WeakPassword()
        self.log.set_setting(HASH_KEY, argon2.hash(password))

    def _since(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - self.window_s))

    def check(self, password: str, session: str, action: str) -> None:
        """Return if ``password`` is right; raise a ``PasswordError`` (and log the attempt) if not."""
        stored = self.log.setting(HASH_KEY)
        if stored is None:
            raise NoPasswordSet()
        failures = self.log.failures_since(session, self._since())
        if failures >= self.max_failures:
            raise TooManyAttempts(self.window_s)
        ok = bool(password) and argon2.verify(password, stored)
        self.log.record_auth(session, action, ok)
        if not ok:
            remaining = self.max_failures - failures - 1
            if remaining <= 0:
                raise TooManyAttempts(self.window_s)
            raise WrongPassword(remaining)
