"""`lstmops serve --workers 2` as a process: the workers pool their Prometheus metrics, so any
scrape, whichever worker answers it, counts every worker's requests; each worker shows its model;
the shared files go away with the server."""

from __future__ import annotations

import json
import re
import time

import pytest

from .conftest import free_port
from .serve_support import get, request, start, stop, tiny_model, wait_for, windows

pytestmark = pytest.mark.integration

REQUESTS = 40


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every sample of ``name`` in a Prometheus text page."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def workers_loaded(port: int) -> set[str]:
    """The pids of the workers whose model gauge says a model is loaded (any scrape shows all)."""
    page = get(f"http://127.0.0.1:{port}/metrics")[2].decode()
    loaded = samples(page, "lstmops_model_loaded")
    return {re.search(r'pid="(\d+)"', labels).group(1) for labels, value in loaded.items() if value == 1}


def test_two_workers_report_every_request_on_every_scrape_and_clean_up(tmp_path):
    model = tiny_model(tmp_path / "model.ts")
    port = free_port()
    env = {"TMPDIR": str(tmp_path)}  # where the server keeps the shared metric files
    proc = start(["--model", str(model), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"], env, tmp_path,
                 tmp_path / "log")  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", proc, timeout=120)
        deadline = time.monotonic() + 120  # ready means one worker is; the other may still be loading
        while len(workers_loaded(port)) < 2:
            assert time.monotonic() < deadline, workers_loaded(port)
            time.sleep(0.2)
        body = json.dumps({"inputs": windows(1).tolist()}).encode()
        for _ in range(REQUESTS):  # a new connection each: the kernel hands them to either worker
            status, _, _ = request("POST", f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
            assert status == 200
        assert list(tmp_path.glob("lstmops-metrics-*"))  # the shared files exist while it serves
        for _ in range(8):  # each scrape may reach either worker
            page = get(f"http://127.0.0.1:{port}/metrics")[2].decode()
            answered = samples(page, "lstmops_requests_total")
            assert answered['{method="POST",path="/invocations",status="200"}'] == REQUESTS
            assert len(workers_loaded(port)) == 2
            assert samples(page, "lstmops_inflight_requests") == {"": 0.0}  # summed over live workers
    finally:
        assert stop(proc) == 0
    assert not list(tmp_path.glob("lstmops-metrics-*"))  # removed with the server
