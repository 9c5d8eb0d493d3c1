"""Dynamic batching: concurrent requests whose windows share a length are run as one forward
pass. An LSTM's cost per window falls with the batch (one 336-step pass of 32 windows costs
about 16 single-window passes on this model), so under load this buys throughput; with
``max_wait`` 0 the worker never waits, it only takes what queued up while it was busy.

One worker thread runs every forward pass: the event loop keeps parsing and answering requests
meanwhile, and torch's own threads parallelise inside each pass.
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


@dataclass
class Job:
    model: Loaded
    windows: object  # torch.Tensor (n, steps, features), already checked by the model
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    lengths: object = None  # torch.Tensor (n,): a classifier's sequence lengths; None for windows
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
    ) -> None:
        self.max_batch = max(1, max_batch)
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

    async def predict(self, model: Loaded, windows, lengths=None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        job = Job(model, windows, loop, loop.create_future(), lengths)
        self._queue.put(job)
        return await job.future

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
