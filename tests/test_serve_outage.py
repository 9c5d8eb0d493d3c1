"""Registry outages, in process: a registry that cannot be reached (a port where nothing listens)
is retried with back-off and never pinned as a failed version; a server started while it is down
serves the last good model kept on disk, or starts not-ready (alive, 503 with Retry-After) rather
than exiting; a kept copy in a directory others may write is not trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lstmops.serve.app import create_app
from lstmops.serve.loader import (
    FileSource,
    ModelCache,
    ModelHolder,
    ModelLoadError,
    RegistrySource,
    RegistryUnavailable,
    load_torchscript,
)
from lstmops.serve.server import build
from lstmops.serve.settings import Settings

from .conftest import free_port
from .serve_support import tiny_model, windows

URI = "models:/outage-model@champion"


@pytest.fixture
def dead_registry(monkeypatch) -> str:
    """A tracking URI where nothing listens; MLflow told not to retry, so each try fails at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return f"http://127.0.0.1:{free_port()}"


def test_a_registry_that_cannot_be_reached_is_an_outage_not_a_bad_version(dead_registry, tmp_path):
    source = RegistrySource(URI, dead_registry, tmp_path)
    with pytest.raises(RegistryUnavailable, match="cannot resolve the alias"):
        source.resolve()


def test_started_while_the_registry_is_down_it_serves_the_kept_copy(dead_registry, tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "v3.ts", seed=3)
    ModelCache(tmp_path / "cache", f"{dead_registry}|{URI}").save(model, "outage-model/3")
    settings = Settings(model_uri=URI, cache_dir=str(tmp_path / "cache"), host="127.0.0.1", threads=1,
                        poll_interval=3600)  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead_registry)
    server = build(settings)
    with TestClient(create_app(server)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        detail = ready.json()
        assert detail["version"] == "outage-model/3" and detail["serving_kept_copy"] is True
        assert "cannot resolve the alias" in detail["last_reload_error"]
        answer = client.post("/invocations", content=json.dumps({"inputs": windows(1).tolist()}),
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code == 200 and answer.headers["x-model-version"] == "outage-model/3"


def test_started_while_the_registry_is_down_with_no_copy_it_is_alive_but_not_ready(dead_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead_registry)
    server = build(Settings(model_uri=URI, cache_dir=str(tmp_path / "empty"), host="127.0.0.1", threads=1,
                            poll_interval=3600))  # fmt: skip
    with TestClient(create_app(server)) as client:
        assert client.get("/healthz").status_code == 200  # a restart would not bring the registry back
        assert client.get("/readyz").status_code == 503 and client.get("/ping").status_code == 503
        answer = client.post("/invocations", content=json.dumps({"inputs": windows(1).tolist()}),
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json() == {"error": "no model loaded yet"}


class Flaky:
    """A registry that is down for the first ``down`` calls, then serves version 7 from a file."""

    follows = True

    def __init__(self, model: Path, down: int) -> None:
        self.model, self.down, self.calls = model, down, 0

    def resolve(self) -> str:
        self.calls += 1
        if self.calls <= self.down:
            raise RegistryUnavailable("models:/m@champion: cannot resolve the alias (connection refused)")
        return "m/7"

    def fetch(self, version: str):
        return load_torchscript(self.model, version)

    def cached(self):
        return None


def test_an_outage_is_retried_with_growing_waits_and_never_pinned(tmp_path):
    holder = ModelHolder(Flaky(tiny_model(tmp_path / "m.ts"), down=4))
    holder.load()
    assert holder.current is None and holder.needs_polling()
    waits = []
    for _ in range(3):
        waits.append(holder.next_wait(interval=30.0))
        holder.poll()
    assert holder.failed_version is None  # an outage says nothing about the version
    for i, wait in enumerate(waits):  # 1, 2, 4 s, less up to a fifth of jitter
        assert 0.8 * 2**i <= wait <= 2**i
    assert holder.next_wait(interval=3.0) <= 3.0  # never longer than the poll interval
    holder.poll()
    assert holder.current is not None and holder.current.version == "m/7"
    assert holder.outages == 0 and holder.last_error is None and holder.next_wait(30.0) == 30.0


def test_a_version_that_cannot_load_is_still_pinned_until_the_alias_moves(tmp_path):
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"not TorchScript")
    source = Flaky(junk, down=0)
    holder = ModelHolder(source)
    with pytest.raises(ModelLoadError, match="cannot load as TorchScript"):
        holder.load()  # at start: one line and exit 1, as before
    holder.poll()
    holder.poll()
    assert holder.failed_version == "m/7" and holder.reload_failures == 1  # tried once, not on every poll


def test_a_kept_copy_in_a_directory_others_can_write_is_not_loaded(tmp_path):
    cache = ModelCache(tmp_path / "cache", "key")
    cache.save(tiny_model(tmp_path / "m.ts"), "m/1")
    assert cache.load() is not None and cache.load().version == "m/1"
    cache.dir.chmod(0o777)
    assert cache.load() is None


def test_a_fixed_file_never_polls(tmp_path):
    holder = ModelHolder(FileSource(tiny_model(tmp_path / "m.ts")))
    holder.load()
    assert not holder.needs_polling()
