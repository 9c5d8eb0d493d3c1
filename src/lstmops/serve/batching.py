"""Dynamic batching: concurrent requests whose windows share a length are run as one forward
pass. An LSTM's cost per window falls with the batch (one 336-step pass of 32 windows costs
about 16 single-window passes on this model), so under load this buys throughput; with
``max_wait`` 0 the worker never waits, it only takes what queued up while it was busy.

One worker thread runs every forward pass: the event loop keeps parsing and answering requests
meanwhile, and torch's own threads parallelise inside each pass.

The queue is bounded in windows (``max_queued``): past it ``submit`` raises ``Shed`` at once,
which the app answers 503 with ``Retry-After``, so a request that is admitted waits at most a
few forward passes however hard the server is pushed. A job whose client has gone, or which
waited past its deadline, is dropped when the worker reaches it, before any compute is spent.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lstmops.serve.loader import Loaded


class Shed(Exception):
    """A job refused or dropped without being computed; ``reason`` labels the metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Job:
    model: Loaded
    windows: object  # torch.Tensor (n, steps, features), already checked by the model
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    lengths: object = None  # torch.Tensor (n,): a classifier's sequence lengths; None for windows
    deadline: float = float("inf")  # time.monotonic() after which the job is not worth computing
    abandoned: bool = False  # set on the event loop when the client disconnects; read by the worker
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = int(self.windows.shape[0])

    def key(self) -> tuple:
        """Jobs stack only with the same model and window shape."""
        return id(self.model), tuple(self.windows.shape[1:])


class Batcher:
    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        observe: Callable[[int], None] = lambda n: None,
        setup: Callable[[], None] = lambda: None,
        max_queued: int = 1_000_000,
        timeout_s: float = float("inf"),
        dropped: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.max_batch = max(1, max_batch)
        self.max_queued = max(1, max_queued)  # windows waiting, held jobs included
        self.timeout_s = timeout_s  # how long a job may wait before it is dropped
        self.dropped = dropped  # called in the worker with the reason of each job dropped unrun
        self.queued = 0  # windows submitted and not yet taken into a batch
        self._count = threading.Lock()
        self.setup = setup  # runs in the inference thread: torch's thread count and denormal flag are per thread
        self.max_wait_s = max(0.0, max_wait_s)
        self.observe = observe  # batch size, in windows, for metrics
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._held: list[Job] = []  # taken from the queue but not stackable with the last batch
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def submit(self, model: Loaded, windows, lengths=None) -> Job:
        """Queue a job, or raise Shed when the queue cannot take its windows. A request larger
        than the whole bound is still taken into an empty queue: refusing it would refuse it forever."""
        loop = asyncio.get_running_loop()
        job = Job(model, windows, loop, loop.create_future(), lengths, time.monotonic() + self.timeout_s)
        with self._count:
            if self.queued and self.queued + job.size > self.max_queued:
                raise Shed("queue_full", f"server busy: {self.queued} windows queued, the limit is {self.max_queued}")
            self.queued += job.size
        self._queue.put(job)
        return job

    async def predict(self, model: Loaded, windows, lengths=None) -> np.ndarray:
        return await self.submit(model, windows, lengths).future

    def _runnable(self, job: Job) -> bool:
        """Account for a job leaving the queue for a forward pass; False (and the job settled
        with Shed) when it is not worth running."""
        with self._count:
            self.queued -= job.size
        if job.abandoned:
            reason, message = "client_gone", "client disconnected"
        elif time.monotonic() > job.deadline:
            reason, message = "deadline", f"waited longer than {self.timeout_s * 1000:.0f} ms in the queue"
        else:
            return True
        self.dropped(reason)
        job.loop.call_soon_threadsafe(settle, job.future, None, Shed(reason, message))
        return False

    def _run(self) -> None:
        self.setup()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _next_batch(self) -> list[Job] | None:
        """The oldest job and whatever can stack with it: held jobs first (they waited
        longest), then the queue until the batch is full or ``max_wait`` has passed. Jobs that
        cannot stack (another window length, or too big) are held for a later batch."""
        first = self._held.pop(0) if self._held else self._queue.get()
        if first is None:
            return None
        batch, size, held = [first], first.size, []
        for job in self._held:
            if job.key() == first.key() and size + job.size <= self.max_batch:
                batch.append(job)
                size += job.size
            else:
                held.append(job)
        self._held = held
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop once the held jobs are done
                break
            if job.key() == first.key() and size + job.size <= self.max_batch:
                batch.append(job)
                size += job.size
            else:
                self._held.append(job)
        return batch

    def _execute(self, batch: list[Job]) -> None:
        import torch

        batch = [job for job in batch if self._runnable(job)]
        if not batch:
            return
        try:
            windows = batch[0].windows if len(batch) == 1 else torch.cat([job.windows for job in batch])
            if batch[0].lengths is None:
                out = batch[0].model.predict(windows).numpy()
            else:  # a classifier's padded sequences: their lengths stack with them
                lengths = batch[0].lengths if len(batch) == 1 else torch.cat([job.lengths for job in batch])
                out = batch[0].model.predict(windows, lengths).numpy()
        except Exception as exc:  # inputs were checked: this is the server's fault, reported as such
            for job in batch:
                job.loop.call_soon_threadsafe(settle, job.future, None, exc)
            return
        self.observe(int(out.shape[0]))
        start = 0
        for job in batch:
            job.loop.call_soon_threadsafe(settle, job.future, out[start : start + job.size], None)
            start += job.size


def settle(future: asyncio.Future, result: np.ndarray | None, error: Exception | None) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
