"""Access logs as JSON lines on stdout, one per request, with the request id a client or a
load balancer sent (``X-Request-Id``) or one made up here."""

from __future__ import annotations

import json
import logging
import sys
import time

ACCESS = "lstmops.serve.access"
EVENTS = "lstmops.serve"  # errors and notable events: the detail a 5xx body leaves out


def configure() -> None:
    """Called when serving starts (never at import): the access logger writes bare JSON lines."""
    logger = logging.getLogger(ACCESS)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    events = logging.getLogger(EVENTS)
    if not events.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        events.addHandler(handler)
    events.setLevel(logging.INFO)
    events.propagate = False


def access(**fields: object) -> None:
    logger = logging.getLogger(ACCESS)
    if logger.isEnabledFor(logging.INFO):
        logger.info(json.dumps({"ts": round(time.time(), 3), **fields}, default=str))
