"""Access logs as JSON lines on stdout, one per request, with the request id a client or a
load balancer sent (``X-Request-Id``) or one made up here."""

from __future__ import annotations

import logging
import sys
import time
from typing import BinaryIO

import orjson

ACCESS = "lstmops.serve.access"
EVENTS = "lstmops.serve"  # errors and notable events: the detail a 5xx body leaves out


# Where access lines go when configure() set up the access logger: written straight to stdout's
# bytes, since a LogRecord and its handlers cost more than the rest of answering a refused or
# failed request. Configured otherwise (a handler of the user's own), lines go through logging.
_stdout: BinaryIO | None = None


def configure() -> None:
    """Called when serving starts (never at import): the access logger writes bare JSON lines."""
    global _stdout
    logger = logging.getLogger(ACCESS)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        _stdout = getattr(sys.stdout, "buffer", None)
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
    if not logger.isEnabledFor(logging.INFO):
        return
    line = orjson.dumps({"ts": round(time.time(), 3), **fields}, default=str)
    if _stdout is not None and not logger.disabled:
        _stdout.write(line + b"\n")
        _stdout.flush()  # a line as soon as it happens, as logging's StreamHandler does
    else:
        logger.info(line.decode())
