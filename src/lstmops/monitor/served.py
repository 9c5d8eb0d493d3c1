"""What the server answered, logged to the forecasts store (opt-in, sampled), so online traffic is
monitored beside the batch forecasts.

``LSTMOPS_SERVE_LOG`` names the store (a directory or ``s3://bucket/prefix``, as ``monitor.store``);
``LSTMOPS_SERVE_LOG_SAMPLE`` the share of forecast windows kept (default 0.01). Each kept window is
one row: when, the version that answered, its newest input row (``input_<feature>``: the rest of the
window arrived with earlier requests) and its forecast. A request only puts the rows on a bounded
queue (a full queue drops and counts them, never waits); a thread writes them in batches to
``served/date=YYYY-mm-dd/part-<time>-<id>.parquet``.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import random
import threading
import time
import uuid

log = logging.getLogger("lstmops.serve")


class ServedLog:
    def __init__(self, store, sample: float, flush_rows: int = 1000, flush_s: float = 30.0, max_queued: int = 10_000) -> None:
        self.store, self.sample = store, sample
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.queue: queue.Queue = queue.Queue(max_queued)
        self.dropped = self.written = 0
        self._lock = threading.Lock()
        self._pending: list[tuple] = []
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
        self._thread.start()

    def __call__(self, model, x, out) -> None:
        """After a forecast: keep a sample of its windows (the request's thread; no I/O here)."""
        if self.sample <= 0:
            return
        kept = [i for i in range(len(out)) if random.random() < self.sample]
        if not kept:
            return
        now = time.time()
        last, forecasts = x[kept, -1, :].tolist(), out[kept].tolist()
        for row, forecast in zip(last, forecasts, strict=True):
            try:
                self.queue.put_nowait((now, model.version, list(model.features), row, forecast))
            except queue.Full:
                self.dropped += 1

    def _run(self) -> None:
        since = time.monotonic()
        while True:
            try:
                item = self.queue.get(timeout=1.0)
                with self._lock:
                    self._pending.append(item)
            except queue.Empty:
                pass
            if self._pending and (len(self._pending) >= self.flush_rows or time.monotonic() - since >= self.flush_s):
                self.flush()
                since = time.monotonic()

    def flush(self) -> None:
        """Write what is pending and queued now (the thread, and at exit)."""
        with self._lock:
            while True:
                try:
                    self._pending.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            rows, self._pending = self._pending, []
            if rows:
                self.write(rows)

    def write(self, rows: list[tuple]) -> None:
        import pandas as pd

        from lstmops.monitor.store import SERVED, to_parquet

        # called by flush(), which holds the lock
        frame = pd.DataFrame({
            "served_at": pd.to_datetime([r[0] for r in rows], unit="s", utc=True),
            "version": [r[1] for r in rows], "prediction": [r[4] for r in rows],
        })  # fmt: skip
        for i, name in enumerate(rows[0][2]):
            frame[f"input_{name}"] = [r[3][i] if len(r[3]) > i else None for r in rows]
        stamp = frame.served_at.iloc[0]
        key = f"{SERVED}/date={stamp:%Y-%m-%d}/part-{stamp:%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
        try:
            self.store.put(key, to_parquet(frame))
            self.written += len(frame)
        except Exception as exc:  # logging traffic must never take serving down
            self.dropped += len(frame)
            log.warning("served log: cannot write %d rows to %s: %s", len(frame), self.store.location, exc)


def missing_packages(location: str) -> list[str]:
    """What the forecasts store needs and this installation lacks (pandas and pyarrow; boto3 for s3://)."""
    from importlib.util import find_spec

    needed = ["pandas", "pyarrow", *(["boto3"] if location.startswith("s3://") else [])]
    return [name for name in needed if find_spec(name) is None]


def from_env(env: dict[str, str] | None = None) -> ServedLog | None:
    """The server's log of what it served, when ``LSTMOPS_SERVE_LOG`` is set (else None: off)."""
    from pathlib import Path

    from lstmops.errors import ConfigError

    env = os.environ if env is None else env
    location = env.get("LSTMOPS_SERVE_LOG", "").strip()
    if not location:
        return None
    raw = env.get("LSTMOPS_SERVE_LOG_SAMPLE", "0.01")
    try:
        sample = float(raw)
    except ValueError:
        sample = -1.0
    if not 0 < sample <= 1:
        raise ConfigError(f"LSTMOPS_SERVE_LOG_SAMPLE={raw!r}: expected a share above 0, at most 1")
    missing = missing_packages(location)
    if missing:  # the serving image carries neither (infra/docker/requirements.txt): say so at start
        raise ConfigError(f"LSTMOPS_SERVE_LOG={location}: logging served traffic needs {', '.join(missing)}, "
                          "which this installation lacks (the serving image leaves them out); install them or unset it")  # fmt: skip
    from lstmops.monitor.store import open_store

    served = ServedLog(open_store(location, Path.cwd()), sample)
    atexit.register(served.flush)
    return served
