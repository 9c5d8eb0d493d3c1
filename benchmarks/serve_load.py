"""Serving benchmark: `lstmops serve` against `mlflow models serve --env-manager local`, the same
TorchScript model, the same worker count, the same load generator, one server at a time.

The model is the default task's shape (336 steps x 3 features in, 48 forecasts out; LSTM hidden
64, 2 layers), randomly initialised: a trained one costs the same to run. Each request carries one
window as JSON (`{"inputs": [[[...]]]}`, which both servers accept).

The load generator is a minimal HTTP/1.1 client on asyncio streams with keep-alive connections
(lighter than any client library, so it takes as little CPU as possible from the servers on the
same machine), only to 127.0.0.1:
  closed loop  --concurrency connections send back to back for --seconds: maximum throughput;
  open loop    requests scheduled at fixed rates (default 100, 500, 1000 req/s) for --seconds;
               latency counts from the scheduled time, so queueing is included (no coordinated
               omission); a request not answered within --grace seconds after the run is an error.

    .venv/bin/python benchmarks/serve_load.py                # lstmops (batching on, off) and mlflow
    .venv/bin/python benchmarks/serve_load.py --seconds 5 --rates 100,1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
FEATURES = ["demand_gw", "temperature_c", "workday"]


def build_models(work: Path) -> tuple[Path, Path]:
    """The TorchScript file (as `lstmops export` writes it) and the same module as an MLflow model."""
    import mlflow.pytorch
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from lstmops.tasks.forecast.prepare import Prepared, Split
    from lstmops.tasks.forecast.export import script
    from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec

    torch.manual_seed(0)
    core = LSTMForecaster(ModelSpec(n_features=3, hidden_size=64, num_layers=2, dropout=0.1, horizon=48)).eval()
    meta = Prepared(features=FEATURES, target="demand_gw", target_index=0, mean=[5.0, 17.0, 0.7], std=[1.0, 5.0, 0.45],
                    split=Split(1, 2, 3), start="2014-01-01", frequency="30min", input_steps=336, horizon=48)  # fmt: skip
    ts = work / "model.ts"
    torch.jit.save(script(core, meta), str(ts))
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, 3))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 48))]))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pytorch.save_model(torch.jit.load(str(ts)), str(work / "mlflow-model"), serialization_format="pickle",
                                  signature=signature, pip_requirements=["torch"])  # fmt: skip
    return ts, work / "mlflow-model"


def request_bytes(port: int) -> bytes:
    rng = np.random.default_rng(0)
    window = rng.standard_normal((1, 336, 3)) * [1.0, 5.0, 0.45] + [5.0, 17.0, 0.7]
    body = json.dumps({"inputs": window.round(4).tolist()}).encode()
    return (b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (port, len(body))) + body  # fmt: skip


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a fixed request and returns the status."""

    def __init__(self, port: int) -> None:
        self.port, self.reader, self.writer = port, None, None

    async def call(self, payload: bytes) -> int:
        """The response status, 0 for a connection error. A kept-alive connection the server
        closed while it sat idle (uvicorn closes them after 5 s) is reopened once, as HTTP
        clients do: the request never reached the server, so that is not a server error."""
        reused = self.writer is not None
        status = await self._call(payload)
        if status == 0 and reused:
            status = await self._call(payload)
        return status

    async def _call(self, payload: bytes) -> int:
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.write(payload)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            start = lower.find(b"content-length:")
            if start < 0:
                raise ConnectionError("response without Content-Length")
            length = int(lower[start + 15 : lower.find(b"\r\n", start)])
            await self.reader.readexactly(length)
            if b"connection: close" in lower:
                self.close()
            return int(head[9:12])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.close()
            return 0  # connection error

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Result:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


async def closed_loop(port: int, concurrency: int, seconds: float) -> Result:
    payload = request_bytes(port)
    result = Result(seconds)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        conn = Connection(port)
        while (now := time.perf_counter()) < deadline:
            status = await conn.call(payload)
            if status == 200:
                result.latencies.append(time.perf_counter() - now)
            else:
                result.errors += 1
        conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return result


async def open_loop(port: int, rate: float, seconds: float, grace: float, max_connections: int = 512) -> Result:
    payload = request_bytes(port)
    result = Result(seconds)
    idle: list[Connection] = []
    opened = 0
    free = asyncio.Condition()

    async def one(scheduled: float) -> None:
        nonlocal opened
        async with free:
            while not idle and opened >= max_connections:
                await free.wait()
            if idle:
                conn = idle.pop()
            else:
                conn, opened = Connection(port), opened + 1
        status = await conn.call(payload)
        if status == 200:
            result.latencies.append(time.perf_counter() - scheduled)
        else:
            result.errors += 1
        async with free:
            idle.append(conn)
            free.notify()

    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    result.errors += len(pending)  # not answered within the grace period
    for conn in idle:
        conn.close()
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("server not ready")


def run_server(name: str, command: list[str], port: int, args, log: Path) -> dict:
    # mlflow starts `uvicorn` by name: the venv's bin must be on PATH
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            try:
                wait_ready(port, proc)
            except (RuntimeError, TimeoutError):
                sys.exit(f"{name} did not start:\n" + log.read_text()[-3000:])
            asyncio.run(closed_loop(port, args.concurrency, 2.0))  # warm-up, not counted
            row = {"name": name, "closed": asyncio.run(closed_loop(port, args.concurrency, args.seconds))}
            for rate in args.rates:
                row[rate] = asyncio.run(open_loop(port, rate, args.seconds, args.grace))
            return row
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def report(rows: list[dict], rates: list[int], file=sys.stdout) -> None:
    print(f"{'server':<28}{'max req/s':>10}{'err':>6}" + "".join(f"{f'@{r}/s p50':>12}{'p99 ms':>9}{'err':>6}" for r in rates), file=file)
    for row in rows:
        closed = row["closed"]
        line = f"{row['name']:<28}{closed.throughput:>10,.0f}{closed.errors:>6}"
        for r in rates:
            res = row[r]
            line += f"{res.pct(50):>12.1f}{res.pct(99):>9.1f}{res.errors:>6}"
        print(line, file=file, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--rates", default="100,500,1000", help="open-loop request rates, req/s")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop connections")
    parser.add_argument("--workers", type=int, default=1, help="server processes, the same for both servers")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds after an open-loop run before giving up")
    parser.add_argument("--only", default="mlflow,lstmops,lstmops-nobatch,lstmops-wait2ms,lstmops-2threads",
                        help="which servers to run")  # fmt: skip
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    only = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ts, mlflow_dir = build_models(work)
        servers = {  # lstmops's defaults, then one setting changed
            "lstmops": [],
            "lstmops-nobatch": ["--max-batch", "1"],
            "lstmops-wait2ms": ["--max-wait-ms", "2"],
            "lstmops-2threads": ["--threads", "2"],
        }
        rows = []
        for name in only:
            port = free_port()
            if name == "mlflow":
                command = [str(BIN / "mlflow"), "models", "serve", "-m", str(mlflow_dir), "--env-manager", "local",
                           "-h", "127.0.0.1", "-p", str(port), "-w", str(args.workers)]  # fmt: skip
            else:
                command = [str(BIN / "lstmops"), "serve", "--model", str(ts), "--host", "127.0.0.1", "--port", str(port),
                           "--workers", str(args.workers), *servers[name]]  # fmt: skip
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(run_server(name, command, port, args, work / f"{name}.log"))
            report(rows[-1:], args.rates, file=sys.stderr)  # progress; the table below has every row
        print(f"one window per request (336 x 3 -> 48), {args.workers} worker(s), {os.cpu_count()} CPUs, "
              f"closed loop {args.concurrency} connections, {args.seconds:g} s per measurement")  # fmt: skip
        report(rows, args.rates)
        by_name = {row["name"]: row for row in rows}
        if "mlflow" in by_name:
            base = by_name["mlflow"]["closed"].throughput
            for name in ("lstmops", "lstmops-nobatch"):
                if name in by_name:
                    print(f"throughput ratio {name}/mlflow = {by_name[name]['closed'].throughput / base:.1f}x")


if __name__ == "__main__":
    main()
