"""Server settings: one frozen record, built by the CLI and handed to each worker as JSON
(``uvicorn`` starts extra worker processes from an import string, not from Python objects).

The limits that keep a server standing under overload and hostile input are read from
environment variables here (``LSTMOPS_*``, listed in ``ENV_LIMITS``), so a container or a
Kubernetes ConfigMap sets them without a command-line flag for each. A value that is not a
number, or is out of its range, stops the server at start with one line naming the variable:
the record holds an ``Invalid`` in its place, and ``check()`` (the first thing ``serve`` and
``build`` do) raises it, so the error surfaces where the CLI turns errors into one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

from lstmops.errors import LstmopsError

ENV = "LSTMOPS_SERVE_SETTINGS"
MIB = 1024 * 1024
SAGEMAKER_MAX_BODY = 6 * MIB  # SageMaker's own request limit: never useful to accept more
INSECURE_ENV = "LSTMOPS_INSECURE_NO_AUTH"
TRUE, FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


@dataclass(frozen=True)
class Invalid:
    """An environment value that cannot be used, kept until ``Settings.check()`` reports it."""

    message: str


def env_number(name: str, default: float, low: float, high: float, kind: type = int) -> float | Invalid:
    """``$name`` as a number in [low, high], or ``default`` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        return Invalid(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}")
    if not low <= value <= high:
        return Invalid(f"{name}={raw} is out of range: expected {low:g} to {high:g}")
    return value


def env_int(name: str, default: int, low: int, high: int) -> int | Invalid:
    return env_number(name, default, low, high, int)


def env_optional_int(name: str, low: int, high: int) -> int | Invalid | None:
    return env_int(name, 0, low, high) if os.environ.get(name, "").strip() else None


def env_flag(name: str) -> bool | Invalid:
    """A yes/no variable; anything but the usual spellings is refused, so a typo never means yes or no silently."""
    raw = os.environ.get(name, "").strip().lower()
    if raw not in TRUE + FALSE:
        return Invalid(f"{name}={raw!r}: expected 1/true/yes or 0/false/no")
    return raw in TRUE


@dataclass(frozen=True)
class Settings:
    model: str | None = None  # a TorchScript file
    model_uri: str | None = None  # models:/NAME@ALIAS or models:/NAME/VERSION
    host: str = "0.0.0.0"  # a container's port must be reachable from outside it
    port: int = 8080
    workers: int = 1
    poll_interval: float = 30.0
    # Windows per forward pass. 64: per window a pass of 64 costs less than one of 32 in fp32 and
    # bf16 alike (0.18 against 0.19 ms, 0.12 against 0.13), and serving capacity rose by a quarter
    # (benchmarks/serve_load.py: 3,293 req/s against 2,604), for a pass of about 12 ms.
    max_batch: int = 64
    max_wait_ms: float = 0.0
    # About 50 windows of the default forecaster as JSON; SageMaker's 6 MiB is the ceiling.
    max_body_bytes: int = 1 * MIB
    threads: int | None = None  # torch threads per worker; None: from the CPUs the container has
    graceful_timeout: float = 25.0  # SageMaker and Kubernetes send SIGKILL 30 s after SIGTERM

    # --- back-pressure (serve/app.py, serve/batching.py) -----------------------------------------
    # Requests to /invocations admitted at once (reading, parsing, queued or running); past it,
    # 503 + Retry-After as soon as the headers are parsed. Two full batches of one-window
    # requests: one runs while the next is read and parsed. At 64, capacity on 2 cores was a
    # tenth lower (3,293 req/s against 3,643); more only waits longer (docs/serving.md).
    max_inflight: int = field(default_factory=lambda: env_int("LSTMOPS_MAX_INFLIGHT", 128, 1, 100_000))
    # Windows waiting for the inference thread; past it, 503 + Retry-After. Two full batches
    # (max_batch): one waits while one is read, so a client sending full batches back to back on
    # two connections is never refused; a request admitted waits about two forward passes at most.
    max_queued_windows: int = field(default_factory=lambda: env_int("LSTMOPS_MAX_QUEUED_WINDOWS", 128, 1, 1_000_000))
    # A job still queued this long after it was admitted is dropped (503): its client has likely given up.
    queue_timeout_ms: float = field(default_factory=lambda: env_number("LSTMOPS_QUEUE_TIMEOUT_MS", 1000.0, 1, 600_000, float))
    retry_after_s: int = field(default_factory=lambda: env_int("LSTMOPS_RETRY_AFTER_S", 1, 0, 3600))
    # uvicorn's connection/task ceiling, a last resort against file-descriptor exhaustion: it
    # counts idle keep-alive connections too and answers everything 503 past it, probes included,
    # so it sits well above max_inflight (which sheds /invocations only).
    limit_concurrency: int = field(default_factory=lambda: env_int("LSTMOPS_LIMIT_CONCURRENCY", 1024, 16, 1_000_000))

    # --- input limits, checked before anything the size of the input is allocated ----------------
    max_windows: int = field(default_factory=lambda: env_int("LSTMOPS_MAX_WINDOWS", 64, 1, 100_000))
    # Steps per window; None: 4x the forecaster's input_steps (a classifier: its own max_length).
    max_steps: int | None = field(default_factory=lambda: env_optional_int("LSTMOPS_MAX_STEPS", 1, 10_000_000))
    # windows x steps x features of one request (a classifier's padded batch): 16 MB of float32.
    max_elements: int = field(default_factory=lambda: env_int("LSTMOPS_MAX_ELEMENTS", 4_000_000, 1, 10**9))
    parse_threads: int = field(default_factory=lambda: env_int("LSTMOPS_PARSE_THREADS", 2, 1, 64))
    # Bodies up to this size are parsed on the event loop: a window of the default forecaster
    # (9 KB of JSON) parses in about 0.25 ms, less than the hand-off to a thread costs with the
    # GIL it then contends for; larger bodies go to the pool, so none stalls the loop for long.
    parse_inline_bytes: int = field(default_factory=lambda: env_int("LSTMOPS_PARSE_INLINE_BYTES", 16384, 0, 1_000_000))

    # --- the forward pass (serve/fastpath.py): fp32 (the file's own) or bf16 (its LSTM in bfloat16)
    precision: str = field(default_factory=lambda: os.environ.get("LSTMOPS_PRECISION", "").strip().lower() or "fp32")

    # --- slow clients (serve/guard.py) ----------------------------------------------------------
    header_timeout_s: float = field(default_factory=lambda: env_number("LSTMOPS_HEADER_TIMEOUT_S", 5.0, 0.1, 300, float))
    body_timeout_s: float = field(default_factory=lambda: env_number("LSTMOPS_BODY_TIMEOUT_S", 15.0, 0.1, 600, float))

    # --- auth and the registry ---------------------------------------------------------------------
    insecure_no_auth: bool = field(default_factory=lambda: env_flag(INSECURE_ENV))
    # Where the last good model from the registry is kept, to serve while the registry is down.
    cache_dir: str | None = field(default_factory=lambda: os.environ.get("LSTMOPS_MODEL_CACHE") or None)

    def check(self) -> Settings:
        """Raise LstmopsError for the first unusable value; the settings themselves otherwise."""
        for value in (getattr(self, f.name) for f in fields(self)):
            if isinstance(value, Invalid):
                raise LstmopsError(value.message)
        if self.precision not in ("fp32", "bf16"):
            raise LstmopsError(f"LSTMOPS_PRECISION={self.precision!r}: expected fp32 or bf16")
        if not 0 < self.max_body_bytes <= SAGEMAKER_MAX_BODY:
            raise LstmopsError(
                f"body limit {self.max_body_bytes:,} bytes is out of range: at most 6 MiB (SageMaker's own limit)"
            )
        return self

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_env() -> Settings:
        return Settings(**json.loads(os.environ[ENV]))
