"""Hot reload against a real MLflow server: `lstmops serve --model-uri models:/NAME@champion`
follows the alias under load with no failed request, follows a rollback, and keeps serving
the old version when the new one cannot be loaded, saying so in /readyz and /metrics."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from .conftest import free_port
from .serve_support import get, request, start, stop, tiny_model, wait_for, windows

pytestmark = pytest.mark.integration

POLL_S = 1.0
NAME = "serve-hot-reload"


def register(client, experiment_id: str, model_file: Path) -> str:
    """A version as the pipeline makes one: a run carrying torchscript/model.ts, registered."""
    run = client.create_run(experiment_id)
    client.log_artifact(run.info.run_id, str(model_file), "torchscript")
    client.set_terminated(run.info.run_id)
    source = f"{run.info.artifact_uri}/torchscript"
    return client.create_model_version(NAME, source, run_id=run.info.run_id).version


class Load(threading.Thread):
    """Requests back to back, recording (time, status, answering version)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stopped, self.answers = url, threading.Event(), []
        self.body = json.dumps({"inputs": windows(1).tolist()}).encode()

    def run(self) -> None:
        while not self.stopped.is_set():
            status, headers, _ = request("POST", f"{self.url}/invocations", self.body,
                                         {"Content-Type": "application/json"})  # fmt: skip
            self.answers.append((time.monotonic(), status, headers.get("x-model-version")))
            time.sleep(0.01)

    def first_answer_from(self, version: str, since: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, _, answered in list(self.answers):
                if at >= since and answered == version:
                    return at - since
            time.sleep(0.05)
        raise TimeoutError(f"no answer from {version} within {timeout} s")


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    home = tmp_path_factory.mktemp("registry")
    experiment = client.create_experiment("serve-hot-reload")
    client.create_registered_model(NAME)
    good_1 = register(client, experiment, tiny_model(home / "1" / "model.ts", seed=1))
    good_2 = register(client, experiment, tiny_model(home / "2" / "model.ts", seed=2))
    junk = home / "3" / "model.ts"
    junk.parent.mkdir()
    junk.write_bytes(b"this is not TorchScript")
    broken = register(client, experiment, junk)
    client.set_registered_model_alias(NAME, "champion", good_1)
    return client, home, (good_1, good_2, broken)


def test_alias_moves_and_rollbacks_are_followed_under_load_with_no_failed_request(registry, mlflow_server):
    client, home, (v1, v2, broken) = registry
    port = free_port()
    proc = start(["--model-uri", f"models:/{NAME}@champion", "--poll-interval", str(POLL_S),
                  "--host", "127.0.0.1", "--port", str(port)],
                 {"MLFLOW_TRACKING_URI": mlflow_server}, home, home / "serve.log")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    load = Load(url)
    try:
        wait_for(f"{url}/readyz", proc, timeout=60)
        assert json.loads(get(f"{url}/readyz")[2])["version"] == f"{NAME}/{v1}"
        load.start()
        time.sleep(0.5)

        # Release: the new version answers within a poll interval plus its load time.
        moved = time.monotonic()
        client.set_registered_model_alias(NAME, "champion", v2)
        took = load.first_answer_from(f"{NAME}/{v2}", moved, timeout=POLL_S + 10)
        print(f"\nswap to {v2} answered after {took:.2f} s (poll interval {POLL_S} s)")

        # Rollback: the alias moves back, and so does the server.
        moved = time.monotonic()
        client.set_registered_model_alias(NAME, "champion", v1)
        load.first_answer_from(f"{NAME}/{v1}", moved, timeout=POLL_S + 10)

        # A version that cannot load: the old one keeps serving; readyz and metrics say why.
        moved = time.monotonic()
        client.set_registered_model_alias(NAME, "champion", broken)
        time.sleep(3 * POLL_S + 2)
        ready_status, _, ready = get(f"{url}/readyz")
        detail = json.loads(ready)
        assert ready_status == 200 and detail["version"] == f"{NAME}/{v1}"
        assert "cannot load as TorchScript" in detail["last_reload_error"]
        assert detail["reload_failures"] == 1  # tried once, not on every poll
        metrics = get(f"{url}/metrics")[2].decode()
        assert "lstmops_model_reload_failures_total 1.0" in metrics
        assert 'lstmops_model_reload_error{error="' in metrics
        assert f'lstmops_model_loaded{{version="{NAME}/{v1}"}} 1.0' in metrics
        assert all(v == f"{NAME}/{v1}" for at, _, v in load.answers if at > moved)

        # Fixed: the alias moves on to a good version and the error clears.
        client.set_registered_model_alias(NAME, "champion", v2)
        load.first_answer_from(f"{NAME}/{v2}", time.monotonic(), timeout=POLL_S + 10)
        assert json.loads(get(f"{url}/readyz")[2])["last_reload_error"] is None
    finally:
        load.stopped.set()
        load.join(timeout=10)
        code = stop(proc)
    statuses = {status for _, status, _ in load.answers}
    assert statuses == {200}, statuses
    assert len(load.answers) > 50
    assert code == 0


def test_a_version_without_the_run_artifact_is_served_from_its_logged_model(mlflow_server, tmp_path):
    """Registered some other way (only `mlflow.pytorch.log_model`, pickle serialization, which
    stores a ScriptModule as TorchScript): the loader finds the TorchScript inside it."""
    import mlflow
    import torch

    from lstmops.serve.loader import RegistrySource

    model_file = tiny_model(tmp_path / "model.ts", seed=5)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("serve-logged-model")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(torch.jit.load(str(model_file)), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"], registered_model_name="serve-logged-only")  # fmt: skip
    source = RegistrySource(f"models:/serve-logged-only/{info.registered_model_version}", mlflow_server)
    assert not source.follows  # a fixed version is never polled
    loaded = source.fetch(source.resolve())
    assert loaded.version == f"serve-logged-only/{info.registered_model_version}"
    x = torch.from_numpy(windows(2))
    torch.testing.assert_close(loaded.predict(x), torch.jit.load(str(model_file))(x))
