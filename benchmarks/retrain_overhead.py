"""Retrain and promote on the embedded data: how long from "a new partition lands" to "the champion
moved", and how much of it is orchestration (Prefect, DVC, MLflow, process start-up) rather than
the training stage's own fit.

In a throw-away copy of the project (this checkout's code and params, default task), with a
Prefect server on 127.0.0.1 (started here, temporary PREFECT_HOME) and the local MLflow store:

1. the first nine months of vic_elec as monthly partitions -> `lstmops run` (first champion);
2. October lands as a new partition -> `lstmops run`, timed (the figure asked for);
3. nothing changes -> `lstmops run`, timed (the no-op retrain);
4. November lands -> `lstmops run -S retrain.in_process=false`, timed: the baseline, where
   `dvc repro --single-item` starts `lstmops STAGE` in a new process for every stage.

Prints the wall time of each, the train stage's fit time (models/train.json), the orchestration
share of each way and their ratio.

    .venv/bin/python benchmarks/retrain_overhead.py            # about 4 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def project(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore", "prefect.yaml"):
        shutil.copy(REPO / name, root / name)
    for name in ("flows", "src"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    frame = pd.read_csv(REPO / "data/source/vic_elec_2014.csv")
    months = pd.to_datetime(frame.timestamp).dt.month
    (root / "data/source/landed").mkdir(parents=True)
    (root / "data/source/waiting").mkdir(parents=True)
    for month, part in frame.groupby(months):
        folder = "landed" if month <= 9 else "waiting"
        part.to_csv(root / f"data/source/{folder}/2014-{month:02d}.csv", index=False)
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"]):  # fmt: skip
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def timed_run(root: Path, env: dict[str, str], *args: str) -> float:
    start = time.monotonic()
    result = subprocess.run([str(BIN / "lstmops"), "run", *args], cwd=root, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"lstmops run failed:\n{result.stderr[-3000:]}")
    gate = [line for line in result.stdout.splitlines() if line.startswith("gate:")]
    print(f"    {gate[-1] if gate else 'no gate line'}")
    return wall


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = project(Path(tmp) / "project")
        home = Path(tmp) / "prefect"
        port = 4200 + os.getpid() % 500
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
               "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1"}  # fmt: skip
        env.pop("MLFLOW_TRACKING_URI", None)  # the project's own sqlite store
        server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            print("1. first nine months -> first champion")
            first = timed_run(root, env, "-S", "data.source=data/source/landed")
            first_fit = json.loads((root / "models/train.json").read_text())["fit_seconds"]
            print("2. October lands")
            shutil.move(root / "data/source/waiting/2014-10.csv", root / "data/source/landed/2014-10.csv")
            landed = timed_run(root, env)
            fit = json.loads((root / "models/train.json").read_text())["fit_seconds"]
            print("3. nothing changed")
            noop = timed_run(root, env)
            print("4. November lands, one process per stage (baseline)")
            shutil.move(root / "data/source/waiting/2014-11.csv", root / "data/source/landed/2014-11.csv")
            baseline = timed_run(root, env, "-S", "retrain.in_process=false")
            baseline_fit = json.loads((root / "models/train.json").read_text())["fit_seconds"]
        finally:
            server.terminate()
            server.wait(timeout=30)
    print()
    print(f"first run (9 months)            {first:7.1f} s   (fit {first_fit:.1f} s)")
    print(f"partition lands -> gate done    {landed:7.1f} s")
    print(f"  training stage's fit          {fit:7.1f} s")
    print(f"  orchestration and start-up    {landed - fit:7.1f} s   = {(landed - fit) / fit:.0%} of the fit (goal: <= 25%)")
    print(f"no-op retrain                   {noop:7.1f} s")
    print(f"baseline: November lands, one process per stage {baseline:.1f} s (fit {baseline_fit:.1f} s): "
          f"orchestration {baseline - baseline_fit:.1f} s = {(baseline - baseline_fit) / baseline_fit:.0%} of the fit")
    print(f"orchestration, one process per stage / in process: {(baseline - baseline_fit) / (landed - fit):.1f}x")


if __name__ == "__main__":
    main()
