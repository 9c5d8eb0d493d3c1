"""Bearer-token auth for ``/invocations``, which cannot be switched off by accident.

The token comes from ``LSTMOPS_AUTH_TOKEN`` or from the file ``LSTMOPS_AUTH_TOKEN_FILE`` names (a
mounted Kubernetes Secret). A variable that is set but empty or whitespace is a mistake, not a
wish for no auth, and stops the server. With no token at all, a server bound beyond loopback
refuses to start unless ``LSTMOPS_INSECURE_NO_AUTH=1`` (``--insecure-no-auth``) says so.

The file is re-read when it changes (checked at most once a second), so rotating the Secret
needs no restart; a rotation that leaves the file empty or unreadable keeps the last good token
and says so in the log, rather than locking every client out or letting every client in.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from pathlib import Path

from lstmops.errors import LstmopsError

TOKEN_ENV = "LSTMOPS_AUTH_TOKEN"
TOKEN_FILE_ENV = "LSTMOPS_AUTH_TOKEN_FILE"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
RECHECK_S = 1.0

log = logging.getLogger("lstmops.serve")


class Token:
    """The expected token: fixed (from the environment) or followed (from a file)."""

    def __init__(self, value: str | None = None, path: Path | None = None, recheck_s: float = RECHECK_S) -> None:
        self.path, self.recheck_s = path, recheck_s
        self._value = value
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if path is not None:
            self._value = read_token_file(path)
            self._stamp = stamp(path)
            self._checked = time.monotonic()

    def current(self) -> str:
        if self.path is not None and time.monotonic() - self._checked >= self.recheck_s:
            self._refresh()
        assert self._value  # never empty: refused at construction and on every reload
        return self._value

    def _refresh(self) -> None:
        with self._lock:
            self._checked = time.monotonic()
            try:
                now = stamp(self.path)
                if now == self._stamp:
                    return
                self._value, self._stamp = read_token_file(self.path), now
                log.warning("auth token reloaded from %s", self.path)
            except (OSError, LstmopsError) as exc:
                log.error("auth token file %s unusable after a change, keeping the previous token: %s", self.path, exc)


def stamp(path: Path) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten (Kubernetes swaps a symlink: a new inode)."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise LstmopsError(f"{path}: cannot read the auth token file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise LstmopsError(f"{path}: the auth token file is not text") from None
    if not token:
        raise LstmopsError(f"{path}: the auth token file is empty")
    return token


def configured_token(env: dict[str, str] | None = None) -> Token | None:
    """The token the environment configures, or None when it configures none. A variable set
    to nothing usable is an error, never "no auth"."""
    env = os.environ if env is None else env
    if TOKEN_ENV in env:
        value = env[TOKEN_ENV].strip()
        if not value:
            raise LstmopsError(f"{TOKEN_ENV} is set but empty or whitespace: set a token, or unset it")
        return Token(value)
    if TOKEN_FILE_ENV in env:
        if not env[TOKEN_FILE_ENV].strip():
            raise LstmopsError(f"{TOKEN_FILE_ENV} is set but empty: name the token file, or unset it")
        return Token(path=Path(env[TOKEN_FILE_ENV]))
    return None


def require_auth(token: Token | None, host: str, insecure_no_auth: bool) -> None:
    """Refuse to listen beyond loopback without a token unless told so in as many words."""
    if token is None and not insecure_no_auth and host not in LOOPBACK:
        raise LstmopsError(
            f"no auth token for a server on {host}: set {TOKEN_ENV} or {TOKEN_FILE_ENV}, bind to 127.0.0.1, "
            "or pass --insecure-no-auth (LSTMOPS_INSECURE_NO_AUTH=1) where something else guards the port"
        )


def authorized(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time. An empty credential is
    refused whatever the token (so an empty token could never match one)."""
    scheme, _, given = (header or "").strip().partition(" ")
    given = given.strip()
    return scheme.lower() == "bearer" and bool(given) and bool(token) and hmac.compare_digest(given.encode(), token.encode())
