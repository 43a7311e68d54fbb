"""The edit password and the login users: argon2 hashes (passlib, maintained as ``libpass``), attempt limits.

Only hashes are stored (the edit password in the log's settings table, login users in
``users``).  Failed attempts are counted in the database, so the limits survive restarts.

Who is locked out, and why not everyone:
- a browser session, after ``MAX_FAILURES`` wrong passwords in ``WINDOW_SECONDS``;
- a client address, after ``MAX_FAILURES_PER_ADDRESS`` — a session id is the client's to
  choose, so opening new sessions buys no more guesses, but an address is the network's;
- nobody else.  Locking edits for everyone once enough strangers had guessed wrong (the
  earlier rule) let anyone lock the operator out for ten minutes.  Instead, once
  ``SLOW_AFTER_FAILURES`` wrong passwords arrive from all addresses together, every check is
  spaced ``SLOW_SPACING_S`` after the previous one: guessing from many addresses is capped at
  ~600 tries in ten minutes, while the operator's right password still goes through (after a
  second's wait).  ``python app.py unlock`` (``PasswordStore.unlock``) clears every count.
"""

from __future__ import annotations

import threading
import time

from passlib.hash import argon2

from storage.db import EditLog

HASH_KEY = "edit_password_hash"
UNLOCKED_KEY = "auth_unlocked_at"
MAX_FAILURES = 5  # per browser session
MAX_FAILURES_PER_ADDRESS = 20  # per client address, over all its sessions
SLOW_AFTER_FAILURES = 50  # from all addresses together: checks are spaced from then on
SLOW_SPACING_S = 1.0
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
    def __init__(self, wait_seconds: int, *, scope: str = "session") -> None:
        where = "from your network address" if scope == "address" else "in this session"
        super().__init__(f"Too many wrong passwords {where}; try again in {max(1, wait_seconds // 60)} minute(s) "
                         "(the operator can lift this with `python app.py unlock`).")
        self.scope = scope


class WeakPassword(PasswordError, ValueError):
    def __init__(self) -> None:
        super().__init__(f"The password must have at least {MIN_LENGTH} characters.")


class PasswordStore:
    def __init__(self, log: EditLog, *, max_failures: int = MAX_FAILURES,
                 max_failures_per_address: int = MAX_FAILURES_PER_ADDRESS,
                 slow_after: int = SLOW_AFTER_FAILURES, slow_spacing_s: float = SLOW_SPACING_S,
                 window_s: int = WINDOW_SECONDS) -> None:
        self.log, self.window_s = log, window_s
        self.max_failures, self.max_failures_per_address = max_failures, max_failures_per_address
        self.slow_after, self.slow_spacing_s = slow_after, slow_spacing_s
        self._checking = threading.Lock()  # count, verify and record as one step: no parallel extra guesses
        self._last_check = 0.0

    @property
    def is_set(self) -> bool:
        return self.log.setting(HASH_KEY) is not None

    def set(self, password: str) -> None:
        self.log.set_setting(HASH_KEY, _hash(password))

    def unlock(self) -> None:
        """Forget every failed attempt so far (the operator's way back in after a lockout)."""
        # attempts are stamped to the second: counting restarts with the next one
        self.log.set_setting(UNLOCKED_KEY, _stamp(time.time() + 1))

    def _since(self) -> str:
        since = _stamp(time.time() - self.window_s)
        return max(since, self.log.setting(UNLOCKED_KEY) or since)

    def check(self, password: str, session: str, action: str, address: str | None = None) -> None:
        """Return if ``password`` is right; raise a ``PasswordError`` (and log the attempt) if not.

        An attempt refused by a limit is logged too (``action`` + ``:locked``), without being
        verified or counted towards the limits."""
        stored = self.log.setting(HASH_KEY)
        if stored is None:
            raise NoPasswordSet()
        with self._checking:
            since = self._since()
            failures = self.log.failures_since(since, session=session)
            from_address = self.log.failures_since(since, address=address) if address else 0
            if failures >= self.max_failures or from_address >= self.max_failures_per_address:
                self.log.record_auth(session, f"{action}:locked", False, address)
                raise TooManyAttempts(self.window_s, scope="session" if failures >= self.max_failures else "address")
            if self.log.failures_since(since) >= self.slow_after:
                time.sleep(max(0.0, self._last_check + self.slow_spacing_s - time.monotonic()))
            self._last_check = time.monotonic()
            ok = bool(password) and argon2.verify(password, stored)
            self.log.record_auth(session, action, ok, address)
        if not ok:
            remaining = self.max_failures - failures - 1
            if address:
                remaining = min(remaining, self.max_failures_per_address - from_address - 1)
            if remaining <= 0:
                raise TooManyAttempts(self.window_s,
                                      scope="session" if failures + 1 >= self.max_failures else "address")
            raise WrongPassword(remaining)


class UserStore:
    """Login users for ``--auth`` (Gradio's ``auth=`` callable): name -> argon2 hash."""

    def __init__(self, log: EditLog) -> None:
        self.log = log

    def add(self, name: str, password: str) -> None:
        name = name.strip()
        if not name or any(ch.isspace() for ch in name):
            raise PasswordError("A user name must be one word.")
        self.log.set_user(name, _hash(password))

    def verify(self, name: str, password: str) -> bool:
        stored = self.log.user_hash((name or "").strip())
        ok = stored is not None and bool(password) and argon2.verify(password, stored)
        self.log.record_auth(f"login:{name}", "login", ok)
        return ok

    @property
    def any(self) -> bool:
        return bool(self.log.users())


def _hash(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise WeakPassword()
    return argon2.hash(password)


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
