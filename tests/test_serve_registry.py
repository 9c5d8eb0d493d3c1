"""Hot reload against a real MLflow server: `lstmops serve --model-uri models:/NAME@champion`
follows the alias while several clients send at once, with no failed request and every answer
the one its `X-Model-Version` names; follows a rollback; keeps serving the old version when the
new one cannot be loaded, saying so in /readyz and /metrics; and rides out a registry outage
(a proxy in front of MLflow, switched off): started during it, it serves its kept copy, and it
follows the alias again once the registry is back."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import free_port
from .serve_support import expected, get, request, start, stop, tiny_model, wait_for, windows

pytestmark = pytest.mark.integration

POLL_S = 1.0
NAME = "serve-hot-reload"


def register(client, experiment_id: str, model_file: Path) -> str:
    """A version as the pipeline makes one: a run carrying the file under its sha256, registered
    with the hash and size recorded (registry/verify.py)."""
    from lstmops.registry.register import register_file

    run = client.create_run(experiment_id)
    version = register_file(client, NAME, model_file, run.info.run_id)
    client.set_terminated(run.info.run_id)
    return version.version


class Load:
    """Several clients sending back to back, each its own window, recording (time, status,
    answering version, forecasts, window index)."""

    CLIENTS = 4

    def __init__(self, url: str) -> None:
        self.url, self.stopped, self.answers = url, threading.Event(), []
        self.x = windows(self.CLIENTS, seed=11)
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(self.CLIENTS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout=timeout)

    def run(self, i: int) -> None:
        body = json.dumps({"inputs": self.x[i : i + 1].tolist()}).encode()
        while not self.stopped.is_set():
            status, headers, answer = request("POST", f"{self.url}/invocations", body,
                                              {"Content-Type": "application/json"})  # fmt: skip
            forecasts = json.loads(answer)["predictions"] if status == 200 else None
            self.answers.append((time.monotonic(), status, headers.get("x-model-version"), forecasts, i))
            time.sleep(0.01)

    def check_answers_match_their_versions(self, files: dict[str, Path]) -> None:
        """Each forecast is the one the version in its header gives: a swap never mixes them."""
        want = {version: expected(path, self.x) for version, path in files.items()}
        for _, status, version, forecasts, i in self.answers:
            if status == 200:
                np.testing.assert_allclose(forecasts, want[version][i : i + 1], rtol=0, atol=1e-5, err_msg=version)

    def first_answer_from(self, version: str, since: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, _, answered, _, _ in list(self.answers):
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
    assert (good_1, good_2) == ("1", "2")  # the files below are named by version
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
                 {"MLFLOW_TRACKING_URI": mlflow_server, "LSTMOPS_MODEL_CACHE": str(home / "cache")},
                 home, home / "serve.log")  # fmt: skip
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
        assert all(v == f"{NAME}/{v1}" for at, _, v, _, _ in load.answers if at > moved)

        # Fixed: the alias moves on to a good version and the error clears.
        client.set_registered_model_alias(NAME, "champion", v2)
        load.first_answer_from(f"{NAME}/{v2}", time.monotonic(), timeout=POLL_S + 10)
        assert json.loads(get(f"{url}/readyz")[2])["last_reload_error"] is None
    finally:
        load.stopped.set()
        load.join(timeout=10)
        code = stop(proc)
    statuses = {status for _, status, _, _, _ in load.answers}
    assert statuses == {200}, statuses
    assert len(load.answers) > 50
    assert {v for _, _, v, _, _ in load.answers} == {f"{NAME}/{v1}", f"{NAME}/{v2}"}
    load.check_answers_match_their_versions({f"{NAME}/{v}": home / v / "model.ts" for v in (v1, v2)})
    assert code == 0


def test_a_version_that_records_no_sha256_is_refused(mlflow_server, tmp_path):
    """Registered some other way (only `mlflow.pytorch.log_model`, pickle serialization): nothing
    says which bytes the version is, so the loader refuses it in one line rather than load
    whatever the artifact store holds (registry/verify.py)."""
    import mlflow
    import torch

    from lstmops.serve.loader import ModelLoadError, RegistrySource

    model_file = tiny_model(tmp_path / "model.ts", seed=5)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("serve-logged-model")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(torch.jit.load(str(model_file)), name="model", serialization_format="pickle",
                                        pip_requirements=["torch"], registered_model_name="serve-logged-only")  # fmt: skip
    source = RegistrySource(f"models:/serve-logged-only/{info.registered_model_version}", mlflow_server)
    with pytest.raises(ModelLoadError) as refused:
        source.fetch(source.resolve())
    message = str(refused.value)
    assert message.count("\n") == 0 and "records no sha256" in message
    assert message.startswith(f"serve-logged-only version {info.registered_model_version}: refused")


class Proxy:
    """A TCP forwarder in front of the MLflow server that can be switched off and on: an outage
    as a server sees one (connection refused), on a port that stays the same."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target = free_port(), target_port
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []

    def up(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        if self.listener is not None:
            try:  # close() alone does not wake a thread blocked in accept(); shutdown() does
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        for conn in self.open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # switched off
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_a_server_started_during_a_registry_outage_serves_its_kept_copy_and_catches_up(registry, mlflow_server):
    client, home, (v1, v2, _) = registry
    client.set_registered_model_alias(NAME, "champion", v1)
    proxy = Proxy(int(mlflow_server.rsplit(":", 1)[1]))
    proxy.up()
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{proxy.port}", "LSTMOPS_MODEL_CACHE": str(home / "outage-cache"),
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # fmt: skip
    args = ["--model-uri", f"models:/{NAME}@champion", "--poll-interval", "2", "--host", "127.0.0.1"]
    proc = None
    try:
        # A first life with the registry up: it loads v1 and keeps a copy on disk.
        port = free_port()
        proc = start([*args, "--port", str(port)], env, home, home / "first.log")
        wait_for(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
        assert stop(proc) == 0

        # The registry goes down, the alias moves meanwhile, and the server is restarted.
        proxy.down()
        client.set_registered_model_alias(NAME, "champion", v2)
        port = free_port()
        proc = start([*args, "--port", str(port)], env, home, home / "second.log")
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/readyz", proc, timeout=60)  # it started, and is ready, with the registry down
        detail = json.loads(get(f"{url}/readyz")[2])
        assert detail["version"] == f"{NAME}/{v1}" and detail["serving_kept_copy"] is True
        time.sleep(3)  # several failed polls: none of them pins anything
        status, headers, _ = request("POST", f"{url}/invocations", json.dumps({"inputs": windows(1).tolist()}).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
        assert status == 200 and headers["x-model-version"] == f"{NAME}/{v1}"

        # The registry is back: the server follows the alias to v2 within the back-off (at most the poll interval).
        proxy.up()
        deadline = time.monotonic() + 20
        while json.loads(get(f"{url}/readyz")[2])["version"] != f"{NAME}/{v2}":
            assert time.monotonic() < deadline, get(f"{url}/readyz")[2]
            time.sleep(0.2)
        detail = json.loads(get(f"{url}/readyz")[2])
        assert detail["serving_kept_copy"] is False and detail["last_reload_error"] is None
        assert stop(proc) == 0
    finally:
        proxy.down()
        if proc is not None and proc.poll() is None:
            stop(proc)
