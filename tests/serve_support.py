"""Helpers for the serve tests: tiny real models, and `lstmops serve` as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from lstmops.tasks.forecast.prepare import Prepared, Split
from lstmops.tasks.forecast.export import script
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec

CLI = Path(sys.executable).parent / "lstmops"
FEATURES = ["demand_gw", "temperature_c", "workday"]
MEAN, STD = [5.0, 20.0, 0.5], [1.0, 5.0, 0.5]


def tiny_model(path: Path, seed: int = 0, input_steps: int = 12, horizon: int = 4, hidden: int = 8,
               std: list[float] = STD) -> Path:  # fmt: skip
    """A TorchScript file exactly as `lstmops export` writes one, from a small untrained LSTM."""
    torch.manual_seed(seed)
    core = LSTMForecaster(ModelSpec(n_features=3, hidden_size=hidden, num_layers=1, dropout=0.0, horizon=horizon))
    meta = Prepared(
        features=FEATURES, target="demand_gw", target_index=0, mean=MEAN, std=std, split=Split(100, 120, 140),
        start="2014-01-01", frequency="30min", input_steps=input_steps, horizon=horizon,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(script(core.eval(), meta), str(path))
    return path


def windows(n: int, steps: int = 12, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, steps, 3)) * STD + MEAN).astype(np.float32)


def expected(model_path: Path, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.jit.load(str(model_path))(torch.from_numpy(x)).numpy()


def start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(CLI), "serve", *args], env={**os.environ, **env}, cwd=cwd,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip


def get(url: str, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    return request("GET", url, timeout=timeout)


def request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 10) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def wait_for(url: str, proc: subprocess.Popen, timeout: float, status: int = 200) -> float:
    """Seconds until ``url`` answers ``status``; fails if the process exits or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if get(url, timeout=1)[0] == status:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer {status} within {timeout} s")


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.terminate()
    return proc.wait(timeout=30)
