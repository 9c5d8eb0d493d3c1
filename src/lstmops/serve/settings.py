"""Server settings: one frozen record, built by the CLI and handed to each worker as JSON
(``uvicorn`` starts extra worker processes from an import string, not from Python objects)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

ENV = "LSTMOPS_SERVE_SETTINGS"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    model: str | None = None  # a TorchScript file
    model_uri: str | None = None  # models:/NAME@ALIAS or models:/NAME/VERSION
    host: str = "0.0.0.0"  # a container's port must be reachable from outside it
    port: int = 8080
    workers: int = 1
    poll_interval: float = 30.0
    max_batch: int = 32
    max_wait_ms: float = 0.0
    max_body_bytes: int = 6 * MIB  # SageMaker's request limit
    threads: int | None = None  # torch threads per worker; None: from the CPUs the container has
    graceful_timeout: float = 25.0  # SageMaker and Kubernetes send SIGKILL 30 s after SIGTERM

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_env() -> Settings:
        return Settings(**json.loads(os.environ[ENV]))
