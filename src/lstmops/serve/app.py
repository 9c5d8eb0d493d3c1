"""The HTTP app: SageMaker's ``/ping`` and ``/invocations``, Kubernetes' ``/healthz`` and
``/readyz``, Prometheus' ``/metrics``. Client mistakes are 4xx with ``{"error": message}``;
only the server's own failures are 5xx, and those carry the request id and a generic message
(the detail goes to the log, never to the client).

Under pressure ``/invocations`` sheds rather than queues: at most ``max_inflight`` requests are
admitted at once (the rest get 503 + ``Retry-After`` before their body is read), the batch queue
is bounded in windows, and a job whose client left or whose deadline passed is dropped unrun.
Readiness does not follow saturation (docs/serving.md says why): a saturated replica still
answers most requests, and shedding per request acts in microseconds where a probe acts in seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from lstmops.serve import logs
from lstmops.serve.auth import Token, authorized
from lstmops.serve.batching import Batcher, Shed
from lstmops.serve.loader import InputError, LoadedClassifier, ModelHolder
from lstmops.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from lstmops.serve.payload import Limits, PayloadError, classifications_json, parse, parse_sequences, predictions_json
from lstmops.serve.settings import Settings

ROUTES = ("/ping", "/invocations", "/healthz", "/readyz", "/metrics")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")  # echoed in a header and logs: keep it tame
REQUEST_ID_KEY = "lstmops.request_id"  # where Observed leaves the id in the ASGI scope for the routes
ADMITTED_KEY = "lstmops.admitted"  # set by serve/guard.py on a request it admitted (and counts in flight)
TIMEOUT_KEY = "lstmops.timeout"  # set by serve/guard.py when a slow client ran out of time
CLIENT_GONE = 499  # nginx's "client closed request": logged and counted, never sent

log = logging.getLogger(logs.EVENTS)


def request_ids():
    """Unique ids without a system call each: a random per-process prefix and a counter
    (``uuid4`` reads the kernel's random source per request, which cost 0.14 ms here)."""
    prefix = os.urandom(8).hex()
    return (f"{prefix}{n:016x}" for n in itertools.count())


class Refusal(NamedTuple):
    """What a 503 at the admission limit says (serve/guard.py writes it as HTTP)."""

    body: bytes  # JSON: the error and the request id
    request_id: str
    version: str  # the model that would have answered
    retry_after_s: int


@dataclass
class Server:
    """What the routes share: one per worker process."""

    settings: Settings
    holder: ModelHolder
    batcher: Batcher
    metrics: Metrics
    token: Token | None
    inflight: int = 0  # requests to /invocations admitted and not yet answered (event-loop thread only)
    served: Callable[[Any, Any, Any], None] | None = None  # after each forecast: (model, x, out); monitor/served.py
    parse_pool: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        # Bounded: at most parse_threads bodies are decoded at once; admission bounds what waits.
        self.parse_pool = ThreadPoolExecutor(self.settings.parse_threads, thread_name_prefix="parse")
        self.metrics.watch(inflight=lambda: self.inflight, queued=lambda: self.batcher.queued)
        # for admit, bound once: it runs for every request refused under overload
        self._shed_inflight = self.metrics.shed.labels("inflight")
        self._refused_answers = self.metrics.requests.labels("/invocations", "POST", "503")
        self._ids = request_ids()
        self._refused = 0  # refused since the last log line

    def admit(self, headers: list) -> Refusal | None:
        """Admission of an ``/invocations`` request, asked by serve/guard.py as soon as its
        headers are parsed: None when it is admitted (it is in flight until ``release``), else
        what the 503 refusing it says. Refusals are counted in the metrics and logged once a
        second in all (a line each would be the costliest part of refusing). Without a model the
        app answers (503, and why)."""
        if self.inflight < self.settings.max_inflight or self.holder.current is None:
            self.inflight += 1
            return None
        self._shed_inflight.inc()
        self._refused_answers.inc()
        self._refused += 1
        if self._refused == 1:
            asyncio.get_running_loop().call_later(1.0, self._log_refused)
        request_id = incoming_id(headers) or next(self._ids)
        body = orjson.dumps({"error": self.busy(), "request_id": request_id})
        return Refusal(body, request_id, self.version(), self.settings.retry_after_s)

    def busy(self) -> str:
        """Why a request past the admission limit is refused, for both places that refuse it."""
        return (f"server busy: {self.inflight} requests in progress, the limit is {self.settings.max_inflight} "
                "(LSTMOPS_MAX_INFLIGHT); retry later")  # fmt: skip

    def release(self) -> None:
        self.inflight -= 1

    def _log_refused(self) -> None:
        log.warning("refused %d requests at the admission limit (%d in progress) in the last second; "
                    "lstmops_shed_requests counts them by reason", self._refused, self.settings.max_inflight)  # fmt: skip
        self._refused = 0

    def ready(self) -> bool:
        return self.holder.current is not None and self.batcher.alive()

    def version(self) -> str:
        current = self.holder.current
        return current.version if current is not None else "none"

    def limits(self, model) -> Limits:
        """Per request: steps default to 4x what the model reads (its input_steps, or a
        classifier's longest trained sequence); a longer window only costs more compute."""
        steps = self.settings.max_steps
        if steps is None:
            base = model.max_length if isinstance(model, LoadedClassifier) else model.input_steps
            steps = 4 * max(16, int(base))
        return Limits(self.settings.max_windows, steps, self.settings.max_elements)


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def internal_error(request: Request, what: str, exc: BaseException, **headers: str) -> JSONResponse:
    """A 5xx a client can quote: the request id and a generic message; the detail is logged."""
    request_id = request.scope.get(REQUEST_ID_KEY, "-")
    log.error("request %s: %s: %s: %s", request_id, what, type(exc).__name__, exc)
    return JSONResponse({"error": f"{what}; see the server log for request {request_id}", "request_id": request_id},
                        status_code=500, headers=headers or None)  # fmt: skip


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed the limit (from
    Content-Length before reading anything, else while streaming), never read beyond it."""
    declared = request.headers.get("content-length", "")
    too_big = PayloadError(
        f"request body exceeds the {limit:,}-byte limit (LSTMOPS_MAX_BODY_MIB); send fewer windows per request", 413
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def decode(model, body: bytes, content_type: str | None, limits: Limits):
    """Body to checked tensors (runs in the parse pool, off the event loop): (windows, None)
    for a forecaster, (padded sequences, lengths) for a classifier."""
    import torch

    if isinstance(model, LoadedClassifier):
        padded, lengths = parse_sequences(body, content_type, model.features, limits)
        x, steps = torch.from_numpy(padded), torch.from_numpy(lengths)
        model.check(x, steps)
        return x, steps
    windows = torch.from_numpy(parse(body, content_type, model.features, limits))
    model.check(windows)
    return windows, None


async def answer_unless_gone(future: asyncio.Future, request: Request) -> bool:
    """Wait for the job; False as soon as the client disconnects instead. Once the body is read,
    the next ASGI message is ``http.disconnect``, sent when the client leaves (or after the response)."""
    gone = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait((future, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not gone.done():
            gone.cancel()
    return future.done()


def create_app(server: Server) -> Observed:
    settings = server.settings
    retry_after = {"Retry-After": str(settings.retry_after_s)}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        server.holder.start(settings.poll_interval)
        yield
        server.holder.stop()
        server.batcher.stop()
        server.parse_pool.shutdown(wait=False, cancel_futures=True)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        """Starlette's last resort answers with this; Observed logs the traceback."""
        request_id = request.scope.get(REQUEST_ID_KEY, "-")
        return JSONResponse({"error": f"internal error; see the server log for request {request_id}",
                             "request_id": request_id}, status_code=500)  # fmt: skip

    app = FastAPI(title="lstmops serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  exception_handlers={Exception: unexpected})  # fmt: skip

    @app.api_route("/ping", methods=["GET", "HEAD"])
    def ping() -> Response:
        """SageMaker's health check: 200 once a model is loaded and can be asked."""
        return Response(status_code=200 if server.ready() else 503)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Alive: the inference thread runs (if it died, only a restart helps). A server
        waiting for its registry is alive: restarting it would not bring the registry back."""
        alive = server.batcher.alive()
        return JSONResponse({"alive": alive}, status_code=200 if alive else 503)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        holder = server.holder
        detail = {
            "ready": server.ready(), "version": server.version(), "reloads": holder.reloads,
            "reload_failures": holder.reload_failures, "last_reload_error": holder.last_error,
            "serving_kept_copy": holder.from_cache,
        }  # fmt: skip
        return JSONResponse(detail, status_code=200 if detail["ready"] else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def invocations(request: Request) -> Response:
        """SageMaker's inference route. A plain Starlette route: FastAPI's parameter machinery
        has nothing to do here and cost a third of a millisecond per request."""
        if server.token is not None and not authorized(request.headers.get("authorization"), server.token.current()):
            return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        model = server.holder.current  # read once: this model answers this request, even across a swap
        if model is None:
            server.metrics.shed.labels("no_model").inc()
            return error(503, "no model loaded yet", **retry_after)
        if request.scope.get(ADMITTED_KEY):  # admitted and counted by the protocol (serve/guard.py)
            return await admitted(request, model)
        if server.inflight >= settings.max_inflight:  # before the body is read: shedding must cost little
            server.metrics.shed.labels("inflight").inc()
            return error(503, server.busy(), **retry_after)
        server.inflight += 1
        try:
            return await admitted(request, model)
        finally:
            server.inflight -= 1

    async def admitted(request: Request, model) -> Response:
        version = {"X-Model-Version": model.version}
        try:
            body = await read_body(request, settings.max_body_bytes)
            work = (model, body, request.headers.get("content-type"), server.limits(model))
            if len(body) <= settings.parse_inline_bytes:
                x, lengths = decode(*work)
            else:
                x, lengths = await asyncio.get_running_loop().run_in_executor(server.parse_pool, decode, *work)
        except ClientDisconnect:  # left mid-body: nothing to answer, logged as 499
            return Response(status_code=CLIENT_GONE)
        except PayloadError as exc:
            return error(exc.status, str(exc), **version)
        except InputError as exc:
            return error(400, str(exc), **version)
        try:
            job = server.batcher.submit(model, x, lengths)
        except Shed as exc:
            server.metrics.shed.labels(exc.reason).inc()
            return error(503, f"{exc}; retry later", **version, **retry_after)
        if not await answer_unless_gone(job.future, request):
            job.abandoned = True  # the worker drops it unrun if it has not started
            job.future.cancel()  # nobody will read its outcome
            return Response(status_code=CLIENT_GONE)
        try:
            out = job.future.result()
        except Shed as exc:  # dropped unrun (its deadline passed in the queue), counted by the batcher
            return error(503, f"{exc}; retry later", **version, **retry_after)
        except Exception as exc:  # the input passed the model's checks: this one is ours
            return internal_error(request, "inference failed", exc, **version)
        if server.served is not None and lengths is None:  # opt-in: LSTMOPS_SERVE_LOG
            server.served(model, x, out)
        body = classifications_json(out, model.classes) if lengths is not None else predictions_json(out)
        return Response(body, media_type="application/json", headers=version)

    async def invocations_app(scope, receive, send) -> None:
        response = await invocations(Request(scope, receive, send))
        await response(scope, receive, send)

    app.add_route("/invocations", invocations, methods=["POST"])  # other methods: FastAPI's 405
    # The hot route skips FastAPI's middleware and router: under overload every shed request
    # passes through here, and their cost is what the admitted requests wait behind.
    return Observed(app, server, {"/invocations": invocations_app})


class Observed:
    """Outermost ASGI layer, so that it sees every response, errors included: request id,
    ``X-Model-Version``, metrics and the access log line. An exception that escapes the app is
    logged here with the request id and answered 500 with a generic body, never a traceback;
    a client that left is logged as 499 and a slow one cut off as 408.
    (Plain ASGI: Starlette's BaseHTTPMiddleware costs a task and a stream per request.)"""

    def __init__(self, app: FastAPI, server: Server, posts: dict | None = None) -> None:
        self.app, self.server = app, server
        self.posts = posts or {}  # path -> ASGI app for POSTs routed here directly
        self.ids = request_ids()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = incoming_request_id(scope) or next(self.ids)
        scope[REQUEST_ID_KEY] = request_id
        answered = {"status": None, "version": self.server.version()}

        async def send_observed(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                named = {k.lower(): v for k, v in headers}
                if b"x-model-version" not in named:
                    headers.append((b"x-model-version", answered["version"].encode()))
                else:
                    answered["version"] = named[b"x-model-version"].decode()
                headers.append((b"x-request-id", request_id.encode()))
                answered["status"] = message["status"]
                message = {**message, "headers": headers}
            await send(message)

        app = self.posts.get(scope["path"], self.app) if scope["method"] == "POST" else self.app
        try:
            await app(scope, receive, send_observed)
        except Exception as exc:
            log.error("request %s: unhandled %s: %s", request_id, type(exc).__name__, exc, exc_info=True)
            if answered["status"] is None:
                body = f'{{"error": "internal error; see the server log for request {request_id}", ' \
                       f'"request_id": "{request_id}"}}'.encode()  # fmt: skip
                await send_observed({"type": "http.response.start", "status": 500,
                                     "headers": [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode())]})  # fmt: skip
                await send_observed({"type": "http.response.body", "body": body})
            else:
                answered["status"] = 500
        finally:
            if scope.get(TIMEOUT_KEY):
                answered["status"] = 408
            status = answered["status"] or CLIENT_GONE  # no response started: the client had gone
            seconds = time.perf_counter() - started
            path = scope["path"] if scope["path"] in ROUTES else "other"
            self.server.metrics.record(path, scope["method"], status, seconds)
            logs.access(request_id=request_id, method=scope["method"], path=scope["path"],
                        status=status, ms=round(seconds * 1000, 2), model_version=answered["version"],
                        client=(scope.get("client") or ("-",))[0])  # fmt: skip


def incoming_request_id(scope) -> str | None:
    return incoming_id(scope["headers"])


def incoming_id(headers: list) -> str | None:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if REQUEST_ID.match(text) else None
    return None
