"""The edit password: an argon2 hash (passlib, maintained as ``libpass``), attempt limits.

Only the hash is stored (in the log's settings table).  Failed attempts are counted in the
database, so the limits survive restarts: per browser session, and over all sessions together,
since a session id is chosen by the client and a new one costs an attacker nothing.
"""

from __future__ import annotations

import threading
import time

from passlib.hash import argon2

from storage.db import EditLog

HASH_KEY = "edit_password_hash"
MAX_FAILURES = 5  # per session
MAX_FAILURES_ALL = 20  # all sessions together
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
    def __init__(self, wait_seconds: int, *, everyone: bool = False) -> None:
        where = "from all sessions; edits are locked for everyone" if everyone else "in this session"
        super().__init__(f"Too many wrong passwords {where}; try again in {max(1, wait_seconds // 60)} minute(s).")
        self.everyone = everyone


class WeakPassword(PasswordError, ValueError):
    def __init__(self) -> None:
        super().__init__(f"The edit password must have at least {MIN_LENGTH} characters.")


class PasswordStore:
    def __init__(self, log: EditLog, *, max_failures: int = MAX_FAILURES, max_failures_all: int = MAX_FAILURES_ALL,
                 window_s: int = WINDOW_SECONDS) -> None:
        self.log, self.max_failures, self.max_failures_all, self.window_s = log, max_failures, max_failures_all, window_s
        self._checking = threading.Lock()  # count, verify and record as one step: no parallel extra guesses

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
        """Return if ``password`` is right; raise a ``PasswordError`` (and log the attempt) if not.

        An attempt refused by a limit is logged too (``action`` + ``:locked``), without being
        verified or counted towards the limits."""
        stored = self.log.setting(HASH_KEY)
        if stored is None:
            raise NoPasswordSet()
        with self._checking:
            since = self._since()
            failures = self.log.failures_since(session, since)
            failures_all = self.log.failures_since(None, since)
            if failures >= self.max_failures or failures_all >= self.max_failures_all:
                self.log.record_auth(session, f"{action}:locked", False)
                raise TooManyAttempts(self.window_s, everyone=failures < self.max_failures)
            ok = bool(password) and argon2.verify(password, stored)
            self.log.record_auth(session, action, ok)
        if not ok:
            remaining = min(self.max_failures - failures, self.max_failures_all - failures_all) - 1
            if remaining <= 0:
                raise TooManyAttempts(self.window_s, everyone=failures + 1 < self.max_failures)
            raise WrongPassword(remaining)
