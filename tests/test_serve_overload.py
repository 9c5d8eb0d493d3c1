"""Back-pressure, in process: past the admission bound or the queue bound a request is a 503 with
Retry-After naming the limit; a job whose deadline passed or whose client left is dropped before
the model runs; queue depth and shed requests are metrics; readiness does not follow saturation;
a 5xx carries the request id and no exception text.

The inference thread is held at a gate (its start-up hook waits on an event), so the queue fills
exactly as it does when the model is slower than the arrivals, without a timing race."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from lstmops.serve.app import Server, create_app
from lstmops.serve.batching import Batcher, Shed
from lstmops.serve.loader import FileSource, Loaded, ModelHolder, load_torchscript
from lstmops.serve.metrics import Metrics
from lstmops.serve.settings import Settings

from .serve_support import FEATURES, expected, tiny_model, windows

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "model.ts")


class Gated:
    """A server whose inference thread starts only when ``open()`` is called."""

    def __init__(self, model_file: Path, **settings) -> None:
        self.gate = threading.Event()
        self.settings = Settings(model=str(model_file), host="127.0.0.1", threads=1, **settings)
        self.metrics = Metrics()
        self.passes: list[int] = []  # windows per forward pass actually run
        holder = ModelHolder(FileSource(model_file))
        holder.load()
        batcher = Batcher(self.settings.max_batch, 0.0, observe=self.passes.append, setup=self.gate.wait,
                          max_queued=self.settings.max_queued_windows, timeout_s=self.settings.queue_timeout_ms / 1000,
                          dropped=lambda reason: self.metrics.shed.labels(reason).inc())  # fmt: skip
        self.server = Server(self.settings, holder, batcher, self.metrics, None)
        self.app = create_app(self.server)

    def open(self) -> None:
        self.gate.set()

    def wait_until(self, condition, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.005)


def body(n: int = 1) -> str:
    return json.dumps({"inputs": windows(n).tolist()})


def shed_count(client: TestClient, reason: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'lstmops_shed_requests_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no shed metric for {reason}")


def test_past_the_inflight_bound_requests_get_503_with_retry_after_and_the_server_stays_ready(model_file):
    gated = Gated(model_file, max_inflight=2)
    with TestClient(gated.app) as client, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(client.post, "/invocations", content=body(), headers=JSON) for _ in range(2)]
        gated.wait_until(lambda: gated.server.inflight == 2)
        refused = client.post("/invocations", content=body(), headers=JSON)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "the limit is 2 (LSTMOPS_MAX_INFLIGHT)" in refused.json()["error"]
        # Saturated is not unready: every replica saturates together, and pulling them all from
        # the Service would turn overload into an outage.
        assert client.get("/readyz").status_code == 200 and client.get("/ping").status_code == 200
        metrics = client.get("/metrics").text
        assert "lstmops_inflight_requests 2.0" in metrics and "lstmops_queued_windows 2.0" in metrics
        assert shed_count(client, "inflight") == 1
        gated.open()
        assert [f.result().status_code for f in held] == [200, 200]
        assert "lstmops_inflight_requests 0.0" in client.get("/metrics").text


def test_past_the_queue_bound_in_windows_requests_get_503_and_smaller_ones_still_fit(model_file):
    gated = Gated(model_file, max_queued_windows=4)
    with TestClient(gated.app) as client, ThreadPoolExecutor(2) as pool:
        three = pool.submit(client.post, "/invocations", content=body(3), headers=JSON)
        gated.wait_until(lambda: gated.server.batcher.queued == 3)
        refused = client.post("/invocations", content=body(2), headers=JSON)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "3 windows queued, the limit is 4" in refused.json()["error"]
        one = pool.submit(client.post, "/invocations", content=body(1), headers=JSON)
        gated.wait_until(lambda: gated.server.batcher.queued == 4)
        gated.open()
        assert three.result().status_code == 200 and one.result().status_code == 200
        assert shed_count(client, "queue_full") == 1


def test_a_request_larger_than_the_whole_queue_bound_is_served_when_the_queue_is_empty(model_file):
    gated = Gated(model_file, max_queued_windows=2)
    gated.open()
    with TestClient(gated.app) as client:
        answer = client.post("/invocations", content=body(5), headers=JSON)
        assert answer.status_code == 200, answer.text  # refusing it would refuse it forever


def test_a_job_past_its_deadline_is_dropped_unrun_with_a_503(model_file):
    gated = Gated(model_file, queue_timeout_ms=50)
    with TestClient(gated.app) as client, ThreadPoolExecutor(1) as pool:
        late = pool.submit(client.post, "/invocations", content=body(), headers=JSON)
        gated.wait_until(lambda: gated.server.batcher.queued == 1)
        time.sleep(0.2)  # four times the deadline, spent in the queue
        gated.open()
        answer = late.result()
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert "waited longer than 50 ms in the queue" in answer.json()["error"]
        assert gated.passes == []  # the model never ran for it
        assert shed_count(client, "deadline") == 1


def asgi_request(body_chunks: list[bytes], complete: bool) -> tuple[dict, list[dict]]:
    scope = {"type": "http", "method": "POST", "path": "/invocations", "raw_path": b"/invocations",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 5000),
             "headers": [(b"content-type", b"application/json")]}  # fmt: skip
    last = len(body_chunks) - 1
    messages = [{"type": "http.request", "body": c, "more_body": i < last or not complete} for i, c in enumerate(body_chunks)]
    return scope, messages


def run_asgi(gated: Gated, chunks: list[bytes], leave_after_s: float, complete: bool = True, then=None) -> list[dict]:
    """One request through the app as uvicorn would drive it: the body in ``chunks`` (the last
    one marked final if ``complete``), then a disconnect after ``leave_after_s``."""
    scope, messages = asgi_request(chunks, complete)
    sent: list[dict] = []

    async def scenario() -> None:
        left = asyncio.Event()

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        gated.server.batcher.start()
        task = asyncio.create_task(gated.app(scope, receive, send))
        await asyncio.sleep(leave_after_s)
        left.set()
        await task
        if then is not None:
            then()
            await asyncio.sleep(0.2)  # let the worker reach the abandoned job
        gated.server.batcher.stop()

    asyncio.run(scenario())
    return sent


def test_a_job_whose_client_disconnected_is_dropped_before_the_model_runs(model_file):
    gated = Gated(model_file)
    sent = run_asgi(gated, [body().encode()], leave_after_s=0.1, then=gated.open)
    assert sent[0]["status"] == 499  # for the log and metrics; uvicorn drops it on a closed connection
    assert gated.passes == []
    assert 'lstmops_shed_requests_total{reason="client_gone"} 1.0' in gated.metrics.render().decode()
    assert 'lstmops_requests_total{method="POST",path="/invocations",status="499"} 1.0' in gated.metrics.render().decode()


def test_a_client_that_aborts_mid_body_is_logged_as_499_not_a_500(model_file, caplog):
    gated = Gated(model_file)
    gated.open()
    whole = body().encode()
    with caplog.at_level("ERROR"):
        sent = run_asgi(gated, [whole[:100], whole[100:200]], leave_after_s=0.05, complete=False)
    # More body was promised, then the client left: no answer is possible, and none is an error.
    sent_chunks = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in sent_chunks] == [499]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert 'status="500"' not in gated.metrics.render().decode()


class Exploding(torch.nn.Module):
    """Passes every input check, then fails inside the forward pass with internals in the message."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA-like failure at /srv/secret/path.cpp:42 (internal detail)")


def test_a_server_failure_is_a_500_with_the_request_id_and_no_exception_text(model_file, caplog):
    gated = Gated(model_file)
    gated.open()
    gated.server.holder.current = Loaded(torch.jit.script(Exploding()), "boom", FEATURES, 12, 4)
    with TestClient(gated.app) as client, caplog.at_level("ERROR"):
        answer = client.post("/invocations", content=body(), headers={**JSON, "X-Request-Id": "req-77"})
    assert answer.status_code == 500
    assert answer.json() == {"error": "inference failed; see the server log for request req-77", "request_id": "req-77"}
    assert "secret" not in answer.text
    assert any("req-77" in r.getMessage() and "secret/path.cpp" in r.getMessage() for r in caplog.records)


def test_dropped_and_refused_jobs_leave_the_queue_count_exact(model_file):
    """The bound is only as good as its count: after shedding, dropping and serving, nothing is left counted."""
    model = load_torchscript(model_file, "v")
    gate = threading.Event()
    batcher = Batcher(max_batch=8, max_wait_s=0.0, setup=gate.wait, max_queued=3, timeout_s=0.05)
    x = torch.from_numpy(windows(1))

    async def scenario() -> list:
        batcher.start()
        jobs = [batcher.submit(model, x) for _ in range(3)]
        with pytest.raises(Shed, match="the limit is 3"):
            batcher.submit(model, x)
        jobs[0].abandoned = True
        await asyncio.sleep(0.1)  # the others pass their deadline
        gate.set()
        results = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        fresh = await batcher.predict(model, x)
        return [*results, fresh]

    try:
        *dropped, fresh = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert [r.reason for r in dropped] == ["client_gone", "deadline", "deadline"]
    np.testing.assert_allclose(fresh, expected(model_file, x.numpy()), rtol=0, atol=1e-6)
    assert batcher.queued == 0
