"""Timeouts on a request's headers and body, which uvicorn does not have.

uvicorn's only timer is keep-alive, and any byte that arrives cancels it: a client that sends its
headers (or its body) a byte every few seconds holds a connection, a task and a buffer for as
long as it likes, and a few hundred such clients exhaust a server. This protocol (uvicorn's
httptools one, plus two timers) gives the headers ``header_timeout_s`` from the first byte of a
request (or from the connection, for a client that connects and says nothing), and the body
``body_timeout_s`` from the end of the headers. A client that runs out of time is answered
``408 Request Timeout`` if nothing was answered yet, and disconnected; the app sees the
disconnect and its access-log line says 408.

Envoy (``request_headers_timeout``) and nginx (``client_header_timeout``, ``client_body_timeout``)
draw the same line.

It is also where the server admits work, and refuses it at least cost. A POST to
``/invocations`` is admitted or refused as soon as its headers are parsed (``Admission``):
admitted, it counts as in flight from then until its response is complete or its connection is
lost, so requests parsed in the same turn of the event loop cannot all slip under the limit
before the app counts them; refused, it is answered 503 from a rendered response, without an
ASGI task, a Request object or an access-log line. Under overload every refusal costs CPU that
the admitted requests need (benchmarks/serve_load.py prints a refusal's cost beside an answer's). A
refused request's body is still read (and dropped) so the connection stays usable, and the
timers above still hold.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lstmops.serve.app import ADMITTED_KEY, TIMEOUT_KEY, Refusal

log = logging.getLogger("lstmops.serve")

ADMITTED_PATH = b"/invocations"


def http_response(status: bytes, body: bytes, headers: list[tuple[bytes, bytes]], close: bool) -> bytes:
    """A whole HTTP/1.1 response with a JSON body, written by the protocol itself (the app never
    sees these requests). Header values lose any CR or LF: one cannot end the header early."""
    lines = [b"HTTP/1.1 " + status, b"content-type: application/json"]
    lines += [name + b": " + value.replace(b"\r", b"").replace(b"\n", b"") for name, value in headers]
    if close:
        lines.append(b"connection: close")
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class CorkedTransport:
    """A transport whose writes within one turn of the event loop go out as one ``send``:
    uvicorn writes a response's headers and its body separately, and a system call costs
    more than building the response in this sandbox (measured 0.06 ms each)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class Admission(Protocol):
    def admit(self, headers: list) -> Refusal | None:
        """None: admitted, and in flight until ``release``; else what the 503 refusing it says."""

    def release(self) -> None: ...


def declared_length(headers: list) -> int:
    """The request's Content-Length, -1 when it has none (a chunked body) or an unreadable one."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return -1


class Refused:
    """Stands for the ASGI cycle of a request refused in the protocol: already answered, so
    uvicorn's body callbacks drop what the client still sends."""

    response_started = response_complete = True
    disconnected = False

    class message_event:  # uvicorn sets the cycle's event when the connection is lost
        @staticmethod
        def set() -> None:
            pass

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive


class GuardedHttpTools(HttpToolsProtocol):
    """Class attributes, set once per process by ``configure`` (uvicorn builds one protocol per
    connection from the class, and hands worker processes the class by its import path)."""

    header_timeout_s: float = 5.0
    body_timeout_s: float = 15.0
    # Asked for POSTs to ADMITTED_PATH only; set per process once the server state exists.
    admission: Admission | None = None

    # The largest body of a refused request that is read and dropped to keep its connection;
    # a larger (or chunked) one closes the connection after the 503 instead.
    drain_limit: int = 1 << 20

    @classmethod
    def configure(cls, header_timeout_s: float, body_timeout_s: float, drain_limit: int = 1 << 20) -> None:
        cls.header_timeout_s, cls.body_timeout_s, cls.drain_limit = header_timeout_s, body_timeout_s, drain_limit

    @classmethod
    def admit_with(cls, admission: Admission | None) -> None:
        cls.admission = admission

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: float | None = None  # loop time by which the current phase must be done
        self._phase = "headers"
        self._admitted = None  # the cycle of this connection's admitted request, until released
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm(self.header_timeout_s, "headers")
        Sweeper.watch(self, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        Sweeper.forget(self, self.loop)
        self._release()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout_s, "body")
        admission = type(self).admission
        if admission is None or not self._admissible():
            super().on_headers_complete()
            return
        refusal = admission.admit(self.headers)
        if refusal is not None:
            self._refuse(refusal)
            return
        self.scope[ADMITTED_KEY] = True  # type: ignore[typeddict-unknown-key]  # the app does not count it again
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a cycle for this request: released when it completes
            self._admitted = self.cycle
        else:  # uvicorn took it elsewhere: nothing will complete to release it
            admission.release()

    def _admissible(self) -> bool:
        """A POST to ADMITTED_PATH, not behind a pipelined request, and not an Upgrade (uvicorn's)."""
        return (
            (self.cycle is None or self.cycle.response_complete)
            and self.url.split(b"?", 1)[0] == ADMITTED_PATH and self.parser.get_method() == b"POST"
            and not self.parser.should_upgrade()
        )  # fmt: skip

    def _refuse(self, refusal: Refusal) -> None:
        """Answer 503 at once. The body still coming is read and dropped (``Refused``), unless
        it cannot be waited for: a client that asked "Expect: 100-continue" may never send it
        (its next bytes could be that body), and one past the body limit or of undeclared size
        is not worth reading; then the connection closes."""
        hopeless = self.expect_100_continue or not 0 <= declared_length(self.headers) <= self.drain_limit
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive() and not hopeless
        self.cycle = Refused(keep_alive)  # type: ignore[assignment]
        headers = [(b"retry-after", str(refusal.retry_after_s).encode()), (b"x-model-version", refusal.version.encode()),
                   (b"x-request-id", refusal.request_id.encode())]  # fmt: skip
        self.transport.write(http_response(b"503 Service Unavailable", refusal.body, headers, close=not keep_alive))
        self.transport.flush()
        if hopeless:
            self.transport.close()

    def on_response_complete(self) -> None:
        self.transport.flush()  # the response is whole: send it now, not a turn of the loop later
        if self._admitted is not None and self._admitted.response_complete:
            self._release()
        super().on_response_complete()

    def _release(self) -> None:
        if self._admitted is not None:
            self._admitted = None
            type(self).admission.release()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self._disarm()
        if isinstance(self.cycle, Refused):  # its body is in (and dropped): next request, or close
            if self.cycle.keep_alive:
                self.on_response_complete()  # counts it, resumes reading, arms keep-alive
            else:
                self.transport.close()
            return
        super().on_message_complete()

    def _arm(self, seconds: float, phase: str) -> None:
        self._deadline, self._phase = self.loop.time() + seconds, phase

    def _disarm(self) -> None:
        self._deadline = None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if phase == "body" else None  # a request's cycle exists once its headers are in
        if cycle is None or not cycle.response_started:
            seconds = self.header_timeout_s if phase == "headers" else self.body_timeout_s
            body = b'{"error": "request %s not received within %g s"}' % (phase.encode(), seconds)
            self.transport.write(http_response(b"408 Request Timeout", body, [], close=True))
        if cycle is not None and not cycle.response_complete:
            cycle.scope[TIMEOUT_KEY] = phase  # read by Observed: the access log says 408, not 499
            cycle.disconnected = True  # the app's receive() now says http.disconnect, and its send() is dropped
            cycle.message_event.set()
        log.warning("closed a connection from %s: request %s not received in time", self.client, phase)
        self.transport.close()


class Sweeper:
    """The timers of every connection of an event loop, checked by one periodic callback: a
    request sets a deadline (an attribute) per phase instead of scheduling and cancelling timers
    (two per request; under overload, refusals included, their cost showed in profiles). A
    timeout thus fires up to ``INTERVAL_S`` late."""

    INTERVAL_S = 0.1
    live: dict[asyncio.AbstractEventLoop, set[GuardedHttpTools]] = {}  # by loop: one per server

    @classmethod
    def watch(cls, protocol: GuardedHttpTools, loop: asyncio.AbstractEventLoop) -> None:
        protocols = cls.live.get(loop)
        if protocols is None:  # the first connection of this event loop starts its sweeps
            protocols = cls.live[loop] = set()
            loop.call_later(cls.INTERVAL_S, cls.sweep, loop)
        protocols.add(protocol)

    @classmethod
    def forget(cls, protocol: GuardedHttpTools, loop: asyncio.AbstractEventLoop) -> None:
        cls.live.get(loop, set()).discard(protocol)

    @classmethod
    def sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for protocol in [p for p in cls.live.get(loop, ()) if p._deadline is not None and now >= p._deadline]:
            try:
                protocol._expired(protocol._phase)
            except Exception:  # one broken connection must not stop the sweeps of all the others
                log.exception("closing a timed-out connection failed")
        loop.call_later(cls.INTERVAL_S, cls.sweep, loop)
