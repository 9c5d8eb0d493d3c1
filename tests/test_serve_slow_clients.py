"""Slow and vanishing clients against `lstmops serve` as a process (real uvicorn, real sockets):
a client that trickles its headers or its body, or connects and says nothing, is answered 408
and disconnected once its time is up instead of holding the connection; one that aborts mid-body
is logged as 499 with no traceback; hostile traffic leaves no 5xx and the server ready."""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path

import pytest

from .conftest import free_port
from .serve_support import get, request, start, stop, tiny_model, wait_for, windows
from .test_serve_app import malformed

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.5  # header and body timeouts of the server under test
HOLD_S = 8.0  # how long a slow client would hold a connection if nothing cut it off


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("slow")
    model = tiny_model(home / "model.ts")
    port = free_port()
    env = {"LSTMOPS_HEADER_TIMEOUT_S": str(TIMEOUT_S), "LSTMOPS_BODY_TIMEOUT_S": str(TIMEOUT_S)}
    proc = start(["--model", str(model), "--host", "127.0.0.1", "--port", str(port)], env, home, home / "log")
    wait_for(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
    yield port, home / "log", proc
    stop(proc)


def trickle(port: int, first: bytes, drip: bytes) -> tuple[bytes, float]:
    """Send ``first``, then one byte of ``drip`` every 0.1 s for up to HOLD_S; return what the
    server answered and after how many seconds it closed the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=HOLD_S + 5) as conn:
        conn.sendall(first)
        answer = b""
        for byte in drip[: int(HOLD_S * 10)]:
            try:
                conn.sendall(bytes([byte]))
            except OSError:  # the server closed: what it sent before is in the receive buffer
                break
            conn.settimeout(0.1)
            try:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                continue
            except OSError:  # reset: bytes sent after the server closed (its answer was read before)
                break
        conn.settimeout(2)
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, time.monotonic() - started


def access_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_a_client_trickling_its_headers_is_cut_off_with_a_408(server):
    port, _, _ = server
    answer, held = trickle(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 200)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"request headers not received within 0.5 s" in answer
    assert held < HOLD_S / 2  # cut off, not held for as long as the client liked


def test_a_client_that_connects_and_says_nothing_is_cut_off(server):
    port, _, _ = server
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=HOLD_S) as conn:
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < HOLD_S / 2


def test_a_client_trickling_its_body_is_cut_off_with_a_408_and_logged_so(server):
    port, log, _ = server
    body = json.dumps({"inputs": windows(1).tolist()}).encode()
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-Id: slow-body\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    answer, held = trickle(port, head + body[:10], body[10:])
    assert answer.startswith(b"HTTP/1.1 408") and b"request body not received within 0.5 s" in answer
    assert held < HOLD_S / 2
    time.sleep(0.3)
    mine = [line for line in access_lines(log) if line["request_id"] == "slow-body"]
    assert [line["status"] for line in mine] == [408]


def test_a_client_that_aborts_mid_body_is_a_499_in_the_log_with_no_traceback(server):
    port, log, _ = server
    body = json.dumps({"inputs": windows(1).tolist()}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Request-Id: aborted-1\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:100])  # fmt: skip
        time.sleep(0.1)
    time.sleep(0.3)
    mine = [line for line in access_lines(log) if line["request_id"] == "aborted-1"]
    assert [line["status"] for line in mine] == [499]
    assert "Traceback" not in log.read_text()
    assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200


def test_hostile_traffic_over_real_sockets_leaves_no_5xx_and_the_server_ready(server):
    port, log, proc = server
    url = f"http://127.0.0.1:{port}/invocations"
    rng = random.Random(21)
    statuses = [request("POST", url, *malformed(rng))[0] for _ in range(150)]
    assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    good = json.dumps({"inputs": windows(1).tolist()}).encode()
    assert request("POST", url, good, {"Content-Type": "application/json"})[0] == 200
    assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    assert not [line for line in access_lines(log) if line["status"] >= 500]
    assert "Traceback" not in log.read_text() and proc.poll() is None
