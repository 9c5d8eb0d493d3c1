"""Prometheus metrics of one server process, in a registry of its own (tests run several apps
in one process; a global registry would refuse the second)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lstmops_requests", "HTTP requests answered", ["path", "method", "status"], registry=r)
        self.latency = Histogram(
            "lstmops_request_seconds", "Time to answer, by path and status", ["path", "status"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch = Histogram("lstmops_batch_windows", "Windows per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.model = Gauge("lstmops_model_loaded", "1 for the model version now serving", ["version"], registry=r)
        self.reloads = Counter("lstmops_model_reloads", "Versions loaded after start-up", registry=r)
        self.reload_failures = Counter(
            "lstmops_model_reload_failures", "Polls or versions that failed to load or self-check", registry=r
        )
        self.reload_error = Gauge(
            "lstmops_model_reload_error", "1 with the last reload error while it stands", ["error"], registry=r
        )
        self._seen = (0, 0)  # the holder's reload and failure totals already counted
        # Back-pressure, read by the HPA (through a custom-metrics adapter) and by alerts: how much
        # work waits, and how much was refused or dropped, by reason.
        self.inflight = Gauge(
            "lstmops_inflight_requests", "Requests to /invocations admitted and not yet answered", registry=r
        )
        self.queued = Gauge("lstmops_queued_windows", "Windows waiting for the inference thread", registry=r)
        self.shed = Counter(
            "lstmops_shed_requests",
            "Requests refused (inflight, queue_full, no_model) or dropped unrun (deadline, client_gone)",
            ["reason"], registry=r,
        )  # fmt: skip
        for reason in ("inflight", "queue_full", "deadline", "client_gone", "no_model"):
            self.shed.labels(reason)  # exported at 0 from the start, so rate() works before the first shed

    def watch(self, inflight: Callable[[], float], queued: Callable[[], float]) -> None:
        """The gauges read the live values at scrape time: nothing to update per request."""
        self.inflight.set_function(inflight)
        self.queued.set_function(queued)

    def record(self, path: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(path, method, str(status)).inc()
        self.latency.labels(path, str(status)).observe(seconds)

    def model_state(self, version: str | None, reloads: int, failures: int, error: str | None) -> None:
        """Mirror the holder: counters move up to its totals, gauges show the present."""
        self.model.clear()
        if version is not None:
            self.model.labels(version).set(1)
        self.reloads.inc(max(0, reloads - self._seen[0]))
        self.reload_failures.inc(max(0, failures - self._seen[1]))
        self._seen = (reloads, failures)
        self.reload_error.clear()
        if error is not None:
            self.reload_error.labels(error[:300]).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
