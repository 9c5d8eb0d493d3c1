"""Admission at the protocol, against `lstmops serve` as a process: a POST to /invocations is
admitted or refused as soon as its headers are parsed. Past LSTMOPS_MAX_INFLIGHT it is answered
503 with Retry-After, its request id and the limit's name, without reaching the app; its body is
still read, so the connection serves the next request. An admitted request holds its place until
its response is complete or its client leaves, and not longer.

A request whose body has not all arrived is admitted and in flight: half-sent bodies hold the
places here, without any timing race."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from .conftest import free_port
from .serve_support import get, start, stop, tiny_model, wait_for, windows

pytestmark = pytest.mark.integration

LIMIT = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("admission")
    model = tiny_model(home / "model.ts")
    port = free_port()
    env = {"LSTMOPS_MAX_INFLIGHT": str(LIMIT), "LSTMOPS_BODY_TIMEOUT_S": "20"}
    proc = start(["--model", str(model), "--host", "127.0.0.1", "--port", str(port)], env, home, home / "log")
    wait_for(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
    yield port, home / "log", proc
    stop(proc)


BODY = json.dumps({"inputs": windows(1).tolist()}).encode()


def head(request_id: str, extra: str = "") -> bytes:
    return (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Request-Id: {request_id}\r\n"
            f"{extra}Content-Length: {len(BODY)}\r\n\r\n").encode()  # fmt: skip


def response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response read off ``conn``: status, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    top, rest = data.split(b"\r\n\r\n", 1)
    lines = top.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        rest += conn.recv(65536)
    return int(lines[0].split()[1]), headers, rest


def held(port: int, request_id: str) -> socket.socket:
    """A connection whose request is admitted and in flight: headers and half its body sent."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(head(request_id) + BODY[: len(BODY) // 2])
    return conn


def closed(conn: socket.socket) -> bool:
    """The server closed ``conn``: end of stream, or a reset when it closed with bytes unread."""
    conn.settimeout(5)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def settle(port: int) -> None:
    """Wait until the server has seen what was sent (a GET goes through the same event loop)."""
    get(f"http://127.0.0.1:{port}/healthz")
    time.sleep(0.2)


def metric(port: int, line_start: str) -> float:
    text = get(f"http://127.0.0.1:{port}/metrics")[2].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_past_the_limit_a_request_is_refused_at_its_headers_and_its_connection_stays_usable(server):
    port, log, _ = server
    shed_before = metric(port, 'lstmops_shed_requests_total{reason="inflight"}')
    first, second = held(port, "held-1"), held(port, "held-2")
    settle(port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head("over-1") + BODY)
        status, headers, body = response(conn)
        assert status == 503
        assert headers["retry-after"] == "1" and headers["x-request-id"] == "over-1" and headers["x-model-version"]
        detail = json.loads(body)
        assert "LSTMOPS_MAX_INFLIGHT" in detail["error"] and f"the limit is {LIMIT}" in detail["error"]
        assert detail["request_id"] == "over-1"

        # the refused request's body was read and dropped: the same connection is answered again
        first.sendall(BODY[len(BODY) // 2 :])
        assert response(first)[0] == 200  # complete: its place is free
        conn.sendall(head("after-1") + BODY)
        status, headers, body = response(conn)
        assert status == 200 and headers["x-request-id"] == "after-1" and len(json.loads(body)["predictions"]) == 1
    second.sendall(BODY[len(BODY) // 2 :])
    assert response(second)[0] == 200
    first.close()
    second.close()
    assert metric(port, 'lstmops_shed_requests_total{reason="inflight"}') == shed_before + 1
    time.sleep(1.2)  # refusals are logged once a second, in all
    assert "refused 1 requests at the admission limit" in log.read_text()


def test_a_client_that_leaves_mid_body_gives_its_place_back(server):
    port, _, _ = server
    leaving = [held(port, f"leaving-{i}") for i in range(LIMIT)]
    settle(port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head("refused") + BODY)
        assert response(conn)[0] == 503
        for c in leaving:
            c.close()
        settle(port)
        for i in range(LIMIT + 1):  # every place is free again, and stays free after use
            conn.sendall(head(f"again-{i}") + BODY)
            assert response(conn)[0] == 200


CLOSING = {
    # the client asked for it
    "connection-close": head("closing", "Connection: close\r\n") + BODY,
    # the body may never come (the client waits for 100 Continue): the next bytes could be it
    "expect-100-continue": head("expecting", "Expect: 100-continue\r\n"),
    # a gigabyte announced is not read and dropped
    "body-past-the-limit": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 1000000000\r\n\r\n" + b"[" * 1000,
}  # fmt: skip


@pytest.mark.parametrize("case", CLOSING)
def test_a_refused_request_whose_connection_cannot_go_on_gets_connection_close_and_is_closed(server, case):
    port, _, _ = server
    holders = [held(port, f"{case}-{i}") for i in range(LIMIT)]
    settle(port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(CLOSING[case])
        status, headers, _ = response(conn)
        assert status == 503 and headers["connection"] == "close"
        assert closed(conn)
    for c in holders:
        c.close()


def test_upgrade_requests_cannot_leak_places(server):
    """A POST asking to switch protocols is uvicorn's to handle; it must not hold a place after."""
    port, _, _ = server
    for i in range(LIMIT + 2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(f"POST /invocations HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                         f"Content-Length: 0\r\n\r\n".encode())  # fmt: skip
            conn.settimeout(1)
            try:
                conn.recv(65536)  # whatever uvicorn answers, or nothing
            except OSError:
                pass
    settle(port)
    assert metric(port, "lstmops_inflight_requests") == 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head("after-upgrades") + BODY)
        assert response(conn)[0] == 200


def test_pipelined_requests_under_the_limit_are_all_answered_in_order(server):
    port, _, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"".join(head(f"pipe-{i}") + BODY for i in range(3)))
        ids = []
        for _ in range(3):
            status, headers, _ = response(conn)
            assert status == 200
            ids.append(headers["x-request-id"])
        assert ids == ["pipe-0", "pipe-1", "pipe-2"]
    # and nothing stayed counted in flight
    assert metric(port, "lstmops_inflight_requests") == 0


def test_other_routes_are_answered_while_invocations_are_at_the_limit(server):
    port, _, proc = server
    holders = [held(port, f"busy-{i}") for i in range(LIMIT)]
    settle(port)
    assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200  # saturation is not unreadiness
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert metric(port, "lstmops_inflight_requests") == LIMIT
    for c in holders:
        c.close()
    settle(port)
    assert metric(port, "lstmops_inflight_requests") == 0
    assert proc.poll() is None
    assert "Traceback" not in Path(server[1]).read_text()


def test_a_response_the_protocol_writes_cannot_be_split_by_a_header_value():
    from lstmops.serve.guard import http_response

    written = http_response(b"503 Service Unavailable", b"{}", [(b"x-model-version", b"3\r\nx-evil: 1")], close=True)
    head, body = written.split(b"\r\n\r\n", 1)
    assert body == b"{}" and b"\r\nx-evil" not in head
    assert head.split(b"\r\n")[-2:] == [b"connection: close", b"content-length: 2"]
