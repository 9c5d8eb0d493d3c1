"""Prometheus metrics of one server process, in a registry of its own (tests run several apps
in one process; a global registry would refuse the second).

With ``--workers`` above 1 the workers share them through Prometheus' multi-process mode: the
server sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, each writes its values to
files there, and whichever worker answers a scrape reads them all. Counters and histograms add
up; the queue gauges are the sum over live workers; the model gauges carry each worker's pid.
A gauge read at scrape time (``set_function``) cannot be shared that way, so in that mode the
queue gauges are written twice a second instead."""

from __future__ import annotations

import glob
import os
import threading
import time
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SHARED_UPDATE_S = 0.5  # how often a worker writes its queue gauges in multi-process mode

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.shared = bool(os.environ.get(MULTIPROC_ENV))  # worker processes pooling their metrics
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lstmops_requests", "HTTP requests answered", ["path", "method", "status"], registry=r)
        self.latency = Histogram(
            "lstmops_request_seconds", "Time to answer, by path and status", ["path", "status"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch = Histogram("lstmops_batch_windows", "Windows per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.model = Gauge("lstmops_model_loaded", "1 for the model version now serving", ["version"], registry=r,
                           multiprocess_mode="liveall")  # fmt: skip
        self.reloads = Counter("lstmops_model_reloads", "Versions loaded after start-up", registry=r)
        self.reload_failures = Counter(
            "lstmops_model_reload_failures", "Polls or versions that failed to load or self-check", registry=r
        )
        self.reload_error = Gauge(
            "lstmops_model_reload_error", "1 with the last reload error while it stands", ["error"], registry=r,
            multiprocess_mode="liveall",
        )  # fmt: skip
        self._seen = (0, 0)  # the holder's reload and failure totals already counted
        self._version: str | None = None  # the labels the model gauges show at 1
        self._error: str | None = None
        # Back-pressure, read by the HPA (through a custom-metrics adapter) and by alerts: how much
        # work waits, and how much was refused or dropped, by reason.
        self.inflight = Gauge(
            "lstmops_inflight_requests", "Requests to /invocations admitted and not yet answered", registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.queued = Gauge("lstmops_queued_windows", "Windows waiting for the inference thread", registry=r,
                            multiprocess_mode="livesum")  # fmt: skip
        self.shed = Counter(
            "lstmops_shed_requests",
            "Requests refused (inflight, queue_full, no_model) or dropped unrun (deadline, client_gone)",
            ["reason"], registry=r,
        )  # fmt: skip
        for reason in ("inflight", "queue_full", "deadline", "client_gone", "no_model"):
            self.shed.labels(reason)  # exported at 0 from the start, so rate() works before the first shed

    def watch(self, inflight: Callable[[], float], queued: Callable[[], float]) -> None:
        """The gauges read the live values at scrape time: nothing to update per request. Shared
        between workers, they are written twice a second by a thread of this worker."""
        if not self.shared:
            self.inflight.set_function(inflight)
            self.queued.set_function(queued)
            return

        def write() -> None:
            while True:
                self.inflight.set(inflight())
                self.queued.set(queued())
                forget_dead_workers()
                time.sleep(SHARED_UPDATE_S)

        threading.Thread(target=write, name="metrics", daemon=True).start()

    def record(self, path: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(path, method, str(status)).inc()
        self.latency.labels(path, str(status)).observe(seconds)

    def model_state(self, version: str | None, reloads: int, failures: int, error: str | None) -> None:
        """Mirror the holder: counters move up to its totals, gauges show the present."""
        self._version = self._show(self.model, self._version, version)
        self.reloads.inc(max(0, reloads - self._seen[0]))
        self.reload_failures.inc(max(0, failures - self._seen[1]))
        self._seen = (reloads, failures)
        self._error = self._show(self.reload_error, self._error, error[:300] if error is not None else None)

    def _show(self, gauge: Gauge, shown: str | None, label: str | None) -> str | None:
        """``gauge{label}`` at 1 in place of ``gauge{shown}`` (None: no label at all). Shared
        between workers the old one is set to 0, since the files keep whatever was written."""
        if not self.shared:
            gauge.clear()
        elif shown is not None and shown != label:
            gauge.labels(shown).set(0)
        if label is not None:
            gauge.labels(label).set(1)
        return label

    def render(self) -> bytes:
        if not self.shared:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


def forget_dead_workers() -> None:
    """Drop the live gauges of worker processes that are gone (a crashed worker is restarted by
    uvicorn with a new pid; its last values would otherwise stay in the sums)."""
    from prometheus_client import multiprocess

    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    pids = {path.rsplit("_", 1)[-1][:-3] for path in glob.glob(os.path.join(directory, "gauge_live*_*.db"))}
    for pid in (int(p) for p in pids if p.isdigit()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:  # alive, another user's
            pass
