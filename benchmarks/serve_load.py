"""Serving under load: `lstmops serve` at its measured capacity and past it, beside `mlflow models
serve` on the same TorchScript file, with a load generator that costs less CPU than the server.

The model is the default pipeline's shape (336 steps x 3 features in, 48 forecasts out; one LSTM
layer of 64 with the seasonal skip), randomly initialised: a trained one costs the same to run.
Each request carries one window as JSON (`{"inputs": [[[...]]]}`, which both servers accept).

The load generator is a minimal HTTP/1.1 client of asyncio Protocols driven by callbacks (no
task or future per request; uvloop when installed) with keep-alive connections, only to
127.0.0.1; its own CPU time and the server's are read from the kernel, and its share of both is
printed for every run (it stays well under the server's).

  capacity   closed loop: --concurrency connections back to back for --seconds, as many as the
             server admits at once (its LSTMOPS_MAX_INFLIGHT is set to the same number: more
             connections would only be refused); goodput (2xx/s) and p99 there are the reference.
  overload   open loop at 1x, 3x and 10x the capacity: requests scheduled at a fixed rate, latency
             counted from the scheduled time (no coordinated omission), each with a --timeout after
             which the client gives up and closes its connection (the server then drops the job).
             Reported: goodput, p99 of the requests admitted (2xx), 503s (shed), 5xx (any is a
             failure), timeouts, and requests the generator could not send (all its connections busy).
  1000/s     open loop at 1,000 req/s: the p99 the acceptance names.
  mlflow     the same closed loop against `mlflow models serve`, for the ratio.

The server's peak RSS (VmHWM) is read after each server's runs. Last, what a refusal costs the
server beside an answer, from the same runs: past capacity every request offered is read and
answered, so that ratio bounds the goodput an overloaded server keeps.

    .venv/bin/python benchmarks/serve_load.py                      # lstmops, lstmops bf16, mlflow
    .venv/bin/python benchmarks/serve_load.py --seconds 5 --only lstmops
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
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

from lstmops.serve.settings import Settings

BIN = Path(sys.executable).parent
FEATURES = ["demand_gw", "temperature_c", "workday"]
TICK = os.sysconf("SC_CLK_TCK")


def build_models(work: Path) -> tuple[Path, Path]:
    """The TorchScript file (as `lstmops export` writes it) and the same module as an MLflow model."""
    import mlflow.pytorch
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from lstmops.tasks.forecast.export import script
    from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec
    from lstmops.tasks.forecast.prepare import Prepared, Split

    torch.manual_seed(0)
    spec = ModelSpec(n_features=3, hidden_size=64, num_layers=1, dropout=0.0, horizon=48, seasonal_skip=336)
    core = LSTMForecaster(spec).eval()
    meta = Prepared(features=FEATURES, target="demand_gw", target_index=0, mean=[5.0, 17.0, 0.7], std=[1.0, 5.0, 0.45],
                    split=Split(1, 2, 3), start="2014-01-01", frequency="30min", input_steps=336, horizon=48)  # fmt: skip
    ts = work / "model.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(script(core, meta), str(ts))
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, 3))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 48))]))  # fmt: skip
        mlflow.pytorch.save_model(torch.jit.load(str(ts)), str(work / "mlflow-model"), serialization_format="pickle",
                                  signature=signature, pip_requirements=["torch"])  # fmt: skip
    return ts, work / "mlflow-model"


def request_bytes(port: int, windows: int = 1) -> bytes:
    rng = np.random.default_rng(0)
    window = rng.standard_normal((windows, 336, 3)) * [1.0, 5.0, 0.45] + [5.0, 17.0, 0.7]
    body = json.dumps({"inputs": window.round(4).tolist()}).encode()
    return (b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (port, len(body))) + body  # fmt: skip


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the generator. Driven by callbacks, with no task or
    future per request (each of those costs the generator about as much as a 503 costs the
    server): ``send`` writes the request, ``data_received`` reads the response and hands the
    connection back to its ``Load`` with the status (0 for a connection that failed)."""

    def __init__(self, load: Load) -> None:
        self.load, self.transport, self.buffer = load, None, b""
        self.sent_at: float | None = None  # when the request in flight was due; None: idle

    def send(self, due: float) -> None:
        self.sent_at = due
        self.transport.write(self.load.payload)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.load.connected(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        start = head.find(b"content-length:")
        stop = head.find(b"\r\n", start)
        length = int(head[start + 15 : stop if stop > 0 else len(head)]) if start >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status, self.buffer = int(self.buffer[9:12]), self.buffer[end + 4 + length :]
        if b"connection: close" in head:
            self.transport.close()
        self._answered(status)

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.load.lost(self)
        self._answered(0)

    def _answered(self, status: int) -> None:
        if self.sent_at is not None:
            due, self.sent_at = self.sent_at, None
            self.load.answered(self, status, due)

    def give_up(self) -> None:
        """The client's timeout: it stops waiting and closes the connection."""
        self.sent_at = None
        if self.transport is not None:
            self.transport.close()


class Load:
    """The generator's connections to one server: at most ``max_connections``, reused while they
    live. Closed loop: each answered connection sends again at once. Open loop: requests fall due
    at a fixed rate and take an idle connection, or are counted unsent when none is free."""

    def __init__(self, port: int, result: Result, timeout: float, max_connections: int, closed: bool,
                 windows: int = 1) -> None:  # fmt: skip
        self.port, self.result, self.timeout, self.closed = port, result, timeout, closed
        self.payload = request_bytes(port, windows)
        self.max_connections, self.opened = max_connections, 0
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.backlog: list[float] = []  # due times of requests waiting for a connection being opened
        self.stop_at = float("inf")

    def offer(self, due: float) -> None:
        if self.idle:
            self._send(self.idle.pop(), due)
        elif self.opened < self.max_connections:
            self.opened += 1
            self.backlog.append(due)
            asyncio.get_running_loop().create_task(self._open())
        else:
            self.result.unsent += 1

    async def _open(self) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: Connection(self), "127.0.0.1", self.port)
        except OSError:
            self.opened -= 1
            if self.backlog:
                self.backlog.pop(0)
            self.result.failed += 1

    def connected(self, conn: Connection) -> None:
        if self.backlog:
            self._send(conn, self.backlog.pop(0))
        else:
            self.idle.append(conn)

    def _send(self, conn: Connection, due: float) -> None:
        self.busy.add(conn)
        conn.send(due)

    def answered(self, conn: Connection, status: int, due: float) -> None:
        now = time.perf_counter()
        self.busy.discard(conn)
        self.result.record(status, now - due)
        if conn.transport is None:
            return
        if self.closed and now < self.stop_at:
            self._send(conn, now)
        else:
            self.idle.append(conn)

    def lost(self, conn: Connection) -> None:
        self.opened -= 1
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def expire(self, now: float) -> None:
        """Give up on every request that has waited ``timeout`` since it was due."""
        for conn in [c for c in self.busy if c.sent_at is not None and now - c.sent_at > self.timeout]:
            self.busy.discard(conn)
            self.result.timeouts += 1
            conn.give_up()

    async def drain(self) -> None:
        while self.busy:  # what is still out either answers or times out
            self.expire(time.perf_counter())
            await asyncio.sleep(0.005)
        for conn in self.idle:
            conn.give_up()


@dataclass
class Result:
    seconds: float
    offered: float = 0.0  # req/s scheduled (open loop)
    latencies: list[float] = field(default_factory=list)  # of 2xx answers
    shed: int = 0  # 503
    server_errors: int = 0  # other 5xx
    client_errors: int = 0  # 4xx: none expected
    timeouts: int = 0  # the client gave up
    failed: int = 0  # connection errors
    unsent: int = 0  # every connection busy: the generator could not offer it
    client_cpu: float = 0.0
    server_cpu: float = 0.0

    @property
    def goodput(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    @property
    def client_share(self) -> float:
        total = self.client_cpu + self.server_cpu
        return self.client_cpu / total if total else float("nan")

    def record(self, status: int, latency: float) -> None:
        if 200 <= status < 300:
            self.latencies.append(latency)
        elif status == 503:
            self.shed += 1
        elif status >= 500:
            self.server_errors += 1
        elif status >= 400:
            self.client_errors += 1
        else:
            self.failed += 1


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (`mlflow models serve` runs its server as a child process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo += children.get(current, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU time of the server's processes, every thread, children that have exited included."""
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / TICK  # utime, stime, cutime, cstime
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(pid: int) -> float:
    """The sum of each server process's peak resident set (VmHWM)."""
    total = 0
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


async def closed_loop(port: int, concurrency: int, seconds: float, result: Result, windows: int = 1) -> None:
    load = Load(port, result, timeout=60.0, max_connections=concurrency, closed=True, windows=windows)
    load.stop_at = time.perf_counter() + seconds
    for _ in range(concurrency):
        load.offer(time.perf_counter())
    await asyncio.sleep(seconds)
    await load.drain()


OPEN_LOOP_CONNECTIONS = 256  # the generator's most connections at once, as a client pool or a proxy has


async def open_loop(port: int, rate: float, seconds: float, timeout: float, result: Result,
                    max_connections: int = OPEN_LOOP_CONNECTIONS) -> None:  # fmt: skip
    """``rate`` req/s for ``seconds``, each request given up ``timeout`` after it was due; latency
    counts from when it was due, so a late send is not hidden (no coordinated omission)."""
    load = Load(port, result, timeout, max_connections, closed=False)
    start = time.perf_counter() + 0.05
    total, sent, swept = int(rate * seconds), 0, start
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        for i in range(sent, due):  # every request whose time has come, at its own time
            load.offer(start + i / rate)
        sent = due
        if now - swept > 0.01:  # timeouts to the nearest 10 ms: a sweep looks at every connection
            load.expire(now)
            swept = now
        # Ticks of 1 ms, whatever the rate: libuv's timers count whole milliseconds, so a shorter
        # sleep spins. A request waits at most a tick to be sent, and that wait counts in its latency.
        await asyncio.sleep(0.001)
    await load.drain()


def measure(pid: int, work, seconds: float, offered: float = 0.0) -> Result:
    result = Result(seconds, offered)
    client, server = own_cpu(), cpu_seconds(pid)
    run(work(result))
    result.client_cpu, result.server_cpu = own_cpu() - client, cpu_seconds(pid) - server
    return result


def run(coro) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


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


def start_server(name: str, command: list[str], port: int, log: Path, env: dict[str, str]) -> subprocess.Popen:
    # mlflow starts `uvicorn` by name: the venv's bin must be on PATH
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           **env}  # fmt: skip
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(port, proc)
    except (RuntimeError, TimeoutError):
        proc.kill()
        sys.exit(f"{name} did not start:\n" + log.read_text()[-3000:])
    return proc


def row(run_label: str, server: str, r: Result) -> str:
    """One line of the table; the run first (a line that starts with `lstmops` reads as a command in the docs)."""
    label = f"{run_label:<9}{server}"
    offered = f"{r.offered:>8,.0f}" if r.offered else f"{'closed':>8}"
    return (f"{label:<22}{offered}{r.goodput:>9,.0f}{r.pct(50):>8.1f}{r.pct(99):>8.1f}{r.shed:>7}{r.server_errors:>5}"
            f"{r.client_errors:>5}{r.timeouts:>6}{r.failed + r.unsent:>7}{r.client_share * 100:>8.0f}%")  # fmt: skip


HEADER = (f"{'run':<22}{'offered':>8}{'2xx/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'503':>7}{'5xx':>5}{'4xx':>5}"
          f"{'t/o':>6}{'unsent':>7}{'gen CPU':>9}")  # fmt: skip


def forward_floor(ts: Path, batch: int, precision: str) -> float:
    """Windows per second of the forward pass alone, as the server runs it (1 torch thread, full
    batches of ``batch``): what no amount of HTTP work can beat."""
    import torch

    from lstmops.serve.fastpath import Bf16Forecaster, bf16_supported

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    model = torch.jit.load(str(ts)).eval()
    if precision == "bf16" and bf16_supported():
        model = Bf16Forecaster(model).eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 336, 3)).astype(np.float32)) * 2 + 5
    best = 0.0
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        for _ in range(5):  # the best of five: the machine is shared, the floor is the quiet rate
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < 0.3:
                model(x)
                calls += 1
            best = max(best, calls * batch / (time.perf_counter() - start))
    return best


def run_lstmops(name: str, ts: Path, env: dict[str, str], args, work: Path) -> dict:
    port = free_port()
    command = [str(BIN / "lstmops"), "serve", "--model", str(ts), "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(args.workers)]  # fmt: skip
    proc = start_server(name, command, port, work / f"{name}.log", env)
    try:
        measure(proc.pid, lambda r: closed_loop(port, args.concurrency, 2.0, r), 2.0)  # warm-up, not counted
        results = {"capacity": measure(proc.pid, lambda r: closed_loop(port, args.concurrency, args.seconds, r), args.seconds)}
        capacity = results["capacity"].goodput
        for factor in (1, 3, 10):
            time.sleep(1.0)  # what one run left behind (closed connections, a last batch) is not the next one's
            rate = capacity * factor
            results[f"{factor}x"] = measure(proc.pid, lambda r, rate=rate: open_loop(port, rate, args.seconds, args.timeout, r),
                                            args.seconds, rate)  # fmt: skip
        time.sleep(1.0)
        results["1000/s"] = measure(proc.pid, lambda r: open_loop(port, 1000, args.seconds, args.timeout, r), args.seconds, 1000)
        # Requests of a full batch each (what a batch client sends): the HTTP work per window
        # shrinks, and capacity in windows/s meets the forward floor. Two connections: one batch
        # runs while the next is read and waits (the queue holds one batch: a third would be refused).
        per = min(int(env.get("LSTMOPS_MAX_BATCH", Settings().max_batch)),
                  int(env.get("LSTMOPS_MAX_WINDOWS", Settings().max_windows)))  # fmt: skip
        time.sleep(1.0)
        results[f"{per}/req"] = measure(proc.pid, lambda r: closed_loop(port, 2, args.seconds, r, windows=per), args.seconds)
        results["windows_per_request"] = per
        results["rss"] = peak_rss_mib(proc.pid)
        results["ready_after"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run_mlflow(mlflow_dir: Path, args, work: Path) -> Result:
    port = free_port()
    command = [str(BIN / "mlflow"), "models", "serve", "-m", str(mlflow_dir), "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    proc = start_server("mlflow", command, port, work / "mlflow.log", {})
    try:
        measure(proc.pid, lambda r: closed_loop(port, args.concurrency, 2.0, r), 2.0)
        return measure(proc.pid, lambda r: closed_loop(port, args.concurrency, args.seconds, r), args.seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def verdict(results: dict) -> list[str]:
    cap = results["capacity"]
    per = results["windows_per_request"]
    batched = results[f"{per}/req"].goodput * per
    lines = [f"  forward floor {results['floor']:,.0f} windows/s; capacity {cap.goodput:,.0f} req/s of one window = "
             f"{cap.goodput / results['floor'] * 100:.0f}% of it; requests of {per} windows: {batched:,.0f} windows/s = "
             f"{batched / results['floor'] * 100:.0f}%"]  # fmt: skip
    for factor in ("3x", "10x"):
        r = results[factor]
        sent = (r.offered * r.seconds - r.unsent) / r.seconds
        lines.append(f"  {factor}: goodput {r.goodput / cap.goodput * 100:.0f}% of capacity (>= 90%), "
                     f"p99 admitted {r.pct(99) / cap.pct(99):.2f}x the p99 at capacity (<= 2x), {r.server_errors} 5xx (0); "
                     f"sent {sent:,.0f}/s = {sent / cap.goodput:.1f}x capacity (the rest found all "
                     f"{OPEN_LOOP_CONNECTIONS} connections busy)")  # fmt: skip
    lines.append(f"  1000/s: p99 {results['1000/s'].pct(99):.1f} ms (<= 25 ms); peak RSS {results['rss']:.0f} MiB; "
                 f"/readyz after the runs: {results['ready_after']}")  # fmt: skip
    # What a refusal costs beside an answer, from the same runs: the server CPU left over once the
    # answered requests are paid for at the capacity run's rate, per request refused (503).
    answered = cap.server_cpu / max(1, len(cap.latencies))
    for factor in ("3x", "10x"):
        r = results[factor]
        if r.shed:
            refusal = max(0.0, r.server_cpu - len(r.latencies) * answered) / r.shed
            lines.append(f"  {factor}: a refusal cost {refusal * 1e6:.0f} us of server CPU, an answer {answered * 1e6:.0f} us "
                         f"({refusal / answered * 100:.0f}%); {r.shed / r.seconds:,.0f} refusals/s")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument("--concurrency", type=int, default=Settings().max_inflight,
                        help="closed-loop connections, and the servers' admission limit (LSTMOPS_MAX_INFLIGHT): "
                             "more connections would only be refused")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1,
                        help="lstmops server processes (each admits --concurrency requests; they share /metrics)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1.0, help="open loop: a client gives up after this many seconds")
    parser.add_argument("--only", default="lstmops,lstmops-bf16,mlflow", help="which servers to run")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a server setting for both lstmops runs, e.g. LSTMOPS_MAX_INFLIGHT=16")  # fmt: skip
    args = parser.parse_args()
    only = args.only.split(",")
    extra = dict(item.split("=", 1) for item in args.env)
    extra = {"LSTMOPS_MAX_INFLIGHT": str(args.concurrency), **extra}
    servers = {"lstmops": extra, "lstmops-bf16": {**extra, "LSTMOPS_PRECISION": "bf16"}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ts, mlflow_dir = build_models(work)
        print(f"one window per request (336 x 3 -> 48), {args.workers} worker(s), {len(os.sched_getaffinity(0))} CPUs shared with the "
              f"generator; closed loop {args.concurrency} connections; {args.seconds:g} s per run; client timeout "
              f"{args.timeout:g} s", flush=True)  # fmt: skip
        print(HEADER, flush=True)
        every = {}
        for name in (n for n in only if n in servers):
            floor = forward_floor(ts, int(servers[name].get("LSTMOPS_MAX_BATCH", Settings().max_batch)),
                                  servers[name].get("LSTMOPS_PRECISION", "fp32"))  # fmt: skip
            every[name] = results = run_lstmops(name, ts, servers[name], args, work)
            results["floor"] = floor
            for label, result in results.items():
                if isinstance(result, Result):
                    print(row(label, name, result), flush=True)
        mlflow = run_mlflow(mlflow_dir, args, work) if "mlflow" in only else None
        if mlflow is not None:
            print(row("capacity", "mlflow", mlflow), flush=True)
        for name, results in every.items():
            print(f"\nserver {name}:")
            print("\n".join(verdict(results)))
            if mlflow is not None:
                print(f"  capacity ratio {name}/mlflow = {results['capacity'].goodput / mlflow.goodput:.1f}x")


if __name__ == "__main__":
    main()
