"""The HTTP app: SageMaker's ``/ping`` and ``/invocations``, Kubernetes' ``/healthz`` and
``/readyz``, Prometheus' ``/metrics``. Client mistakes are 4xx with ``{"error": message}``;
only the server's own failures are 5xx."""

from __future__ import annotations

import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from lstmops.serve import logs
from lstmops.serve.auth import authorized
from lstmops.serve.batching import Batcher
from lstmops.serve.loader import InputError, LoadedClassifier, ModelHolder
from lstmops.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from lstmops.serve.payload import PayloadError, classifications_json, parse, parse_sequences, predictions_json
from lstmops.serve.settings import Settings

ROUTES = ("/ping", "/invocations", "/healthz", "/readyz", "/metrics")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")  # echoed in a header and logs: keep it tame


@dataclass
class Server:
    """What the routes share: one per worker process."""

    settings: Settings
    holder: ModelHolder
    batcher: Batcher
    metrics: Metrics
    token: str | None

    def ready(self) -> bool:
        return self.holder.current is not None and self.batcher.alive()

    def version(self) -> str:
        current = self.holder.current
        return current.version if current is not None else "none"


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed the limit (from
    Content-Length before reading anything, else while streaming), never read beyond it."""
    declared = request.headers.get("content-length", "")
    too_big = PayloadError(f"request body exceeds the {limit:,}-byte limit; send fewer windows per request", 413)
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(server: Server) -> Observed:
    import torch

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        server.holder.start(server.settings.poll_interval)
        yield
        server.holder.stop()
        server.batcher.stop()

    app = FastAPI(title="lstmops serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.api_route("/ping", methods=["GET", "HEAD"])
    def ping() -> Response:
        """SageMaker's health check: 200 once a model is loaded and can be asked."""
        return Response(status_code=200 if server.ready() else 503)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Alive: the inference thread runs (if it died, only a restart helps)."""
        alive = server.batcher.alive()
        return JSONResponse({"alive": alive}, status_code=200 if alive else 503)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        holder = server.holder
        detail = {
            "ready": server.ready(), "version": server.version(), "reloads": holder.reloads,
            "reload_failures": holder.reload_failures, "last_reload_error": holder.last_error,
        }  # fmt: skip
        return JSONResponse(detail, status_code=200 if detail["ready"] else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def invocations(request: Request) -> Response:
        """SageMaker's inference route. A plain Starlette route: FastAPI's parameter machinery
        has nothing to do here and cost a third of a millisecond per request."""
        if server.token is not None and not authorized(request.headers.get("authorization"), server.token):
            return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        model = server.holder.current  # read once: this model answers this request, even across a swap
        if model is None:
            return error(503, "no model loaded yet")
        if isinstance(model, LoadedClassifier):
            return await classify(request, model)
        try:
            body = await read_body(request, server.settings.max_body_bytes)
            windows = torch.from_numpy(parse(body, request.headers.get("content-type"), model.features))
            model.check(windows)
        except PayloadError as exc:
            return error(exc.status, str(exc), **{"X-Model-Version": model.version})
        except InputError as exc:
            return error(400, str(exc), **{"X-Model-Version": model.version})
        try:
            forecasts = await server.batcher.predict(model, windows)
        except Exception as exc:  # the input passed the model's checks: this one is ours
            return error(500, f"inference failed: {exc}", **{"X-Model-Version": model.version})
        return Response(predictions_json(forecasts), media_type="application/json",
                        headers={"X-Model-Version": model.version})  # fmt: skip

    async def classify(request: Request, model: LoadedClassifier) -> Response:
        """A sequence classifier's answer: the sequences, of any lengths, are padded here with
        their lengths; the model packs them, so the padding is never read."""
        try:
            body = await read_body(request, server.settings.max_body_bytes)
            padded, lengths = parse_sequences(body, request.headers.get("content-type"), model.features)
            x, steps = torch.from_numpy(padded), torch.from_numpy(lengths)
            model.check(x, steps)
        except PayloadError as exc:
            return error(exc.status, str(exc), **{"X-Model-Version": model.version})
        except InputError as exc:
            return error(400, str(exc), **{"X-Model-Version": model.version})
        try:
            probabilities = await server.batcher.predict(model, x, steps)
        except Exception as exc:  # the input passed the model's checks: this one is ours
            return error(500, f"inference failed: {exc}", **{"X-Model-Version": model.version})
        return Response(classifications_json(probabilities, model.classes), media_type="application/json",
                        headers={"X-Model-Version": model.version})  # fmt: skip

    app.add_route("/invocations", invocations, methods=["POST"])
    return Observed(app, server)


class Observed:
    """Outermost ASGI layer, so that it sees every response, errors included: request id,
    ``X-Model-Version``, metrics and the access log line. (Plain ASGI: Starlette's
    BaseHTTPMiddleware costs a task and a stream per request.)"""

    def __init__(self, app: FastAPI, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        answered = {"status": 500, "version": self.server.version()}

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

        try:
            await self.app(scope, receive, send_observed)
        finally:
            seconds = time.perf_counter() - started
            path = scope["path"] if scope["path"] in ROUTES else "other"
            self.server.metrics.record(path, scope["method"], answered["status"], seconds)
            logs.access(request_id=request_id, method=scope["method"], path=scope["path"],
                        status=answered["status"], ms=round(seconds * 1000, 2), model_version=answered["version"],
                        client=(scope.get("client") or ("-",))[0])  # fmt: skip


def incoming_request_id(scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if REQUEST_ID.match(text) else None
    return None
