"""Optional bearer-token auth for ``/invocations``. The token comes from ``LSTMOPS_AUTH_TOKEN``
or from the file ``LSTMOPS_AUTH_TOKEN_FILE`` names (a mounted Kubernetes Secret); no token
configured means no auth."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from lstmops.errors import LstmopsError

TOKEN_ENV = "LSTMOPS_AUTH_TOKEN"
TOKEN_FILE_ENV = "LSTMOPS_AUTH_TOKEN_FILE"


def configured_token(env: dict[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip()
    if env.get(TOKEN_FILE_ENV):
        path = Path(env[TOKEN_FILE_ENV])
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise LstmopsError(f"{path}: cannot read the auth token file ({exc.strerror})") from None
        if not token:
            raise LstmopsError(f"{path}: the auth token file is empty")
        return token
    return None


def authorized(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
