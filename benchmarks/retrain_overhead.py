"""Retrain and promote on the embedded data: how long from "a new partition lands" to "the champion
moved", and how much of it is orchestration (Prefect, DVC, MLflow, process start-up) rather than
the training stage's own fit.

Two throw-away copies of the project (this checkout's code and params, default task) share a
Prefect server on 127.0.0.1 (started here, temporary PREFECT_HOME); each uses its local MLflow
store. In each:

1. January to November of vic_elec as monthly partitions -> `lstmops run`;
2. December lands as a new partition -> `lstmops run`, timed (the figure asked for).

The first copy runs the stages in the flow's process (the default); the second is the baseline,
`-S retrain.in_process=false`, where `dvc repro --single-item` starts `lstmops STAGE` in a new
process for every stage. Then, in the first copy, nothing changes -> `lstmops run` (the no-op).
Prints each stage's duration (from Prefect's task log), the train stage's fit time
(models/train.json), the orchestration share and the ratio between the two ways.

    .venv/bin/python benchmarks/retrain_overhead.py            # about 8 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FINISHED = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| \w+ +\| (?:Task run '(\w+)'|Flow run '[\w-]+') - Finished in state")
STARTED = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| \w+ +\| Flow run '[\w-]+' - Beginning flow run")


def project(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore", "prefect.yaml"):
        shutil.copy(REPO / name, root / name)
    for name in ("flows", "src"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    frame = pd.read_csv(REPO / "data/source/vic_elec_2014.csv")
    months = pd.to_datetime(frame.timestamp).dt.month
    for folder in ("landed", "waiting"):
        (root / "data/source" / folder).mkdir(parents=True)
    for month, part in frame.groupby(months):
        folder = "landed" if month <= 11 else "waiting"
        part.to_csv(root / f"data/source/{folder}/2014-{month:02d}.csv", index=False)
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"]):  # fmt: skip
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def stage_seconds(log: str) -> dict[str, float]:
    """Each task's duration, from one 'Finished' line to the next (the flow's start for the first)."""
    clock = lambda text: datetime.strptime(text, "%H:%M:%S.%f")  # noqa: E731
    durations, last = {}, None
    for line in log.splitlines():
        if (m := STARTED.match(line)) and last is None:
            last = clock(m.group(1))
        elif (m := FINISHED.match(line)) and last is not None:
            durations[m.group(2) or "flow end"] = (clock(m.group(1)) - last).total_seconds()
            last = clock(m.group(1))
    return durations


def timed_run(root: Path, env: dict[str, str], *args: str) -> tuple[float, dict[str, float]]:
    start = time.monotonic()
    result = subprocess.run([str(BIN / "lstmops"), "run", *args], cwd=root, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"lstmops run failed:\n{result.stderr[-3000:]}")
    gate = [line for line in result.stdout.splitlines() if line.startswith("gate, version")]
    print(f"    {gate[-1] if gate else 'no gate line'}")
    return wall, stage_seconds(result.stdout + "\n" + result.stderr)


def land_december(root: Path, env: dict[str, str], *args: str) -> tuple[float, float, dict[str, float]]:
    timed_run(root, env, "-S", "data.source=data/source/landed", *args)
    shutil.move(root / "data/source/waiting/2014-12.csv", root / "data/source/landed/2014-12.csv")
    wall, stages = timed_run(root, env, *args)
    return wall, json.loads((root / "models/train.json").read_text())["fit_seconds"], stages


def report(label: str, wall: float, fit: float, stages: dict[str, float]) -> float:
    print(f"{label}: partition lands -> gate done {wall:.1f} s, fit {fit:.1f} s, "
          f"orchestration and start-up {wall - fit:.1f} s = {(wall - fit) / fit:.0%} of the fit (goal: <= 25%)")  # fmt: skip
    print("    " + "  ".join(f"{name} {seconds:.1f}" for name, seconds in stages.items()))
    return wall - fit


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = 4200 + os.getpid() % 500
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
               "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1"}  # fmt: skip
        env.pop("MLFLOW_TRACKING_URI", None)  # each copy's own sqlite store
        server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            print("in the flow's process (default): January-November, then December lands")
            fast = land_december(project(Path(tmp) / "in-process"), env)
            print("nothing changed")
            noop, _ = timed_run(Path(tmp) / "in-process", env)
            print("one process per stage (baseline): January-November, then December lands")
            slow = land_december(project(Path(tmp) / "per-stage"), env, "-S", "retrain.in_process=false")
        finally:
            server.terminate()
            server.wait(timeout=30)
    print()
    overhead = report("in the flow's process", *fast)
    baseline = report("one process per stage", *slow)
    print(f"no-op retrain {noop:.1f} s")
    print(f"orchestration, one process per stage / in the flow's process = {baseline / overhead:.2f}x")


if __name__ == "__main__":
    main()
