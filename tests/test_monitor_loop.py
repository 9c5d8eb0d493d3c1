"""The loop closed, end to end on real servers on 127.0.0.1 (a Prefect server with a process
worker, an MLflow server): the champion forecasts the next day into the store; the day's actuals
land with demand planted 1.5x higher; the monitor scores them, the decay rule fires and emits its
Prefect event; the `retrain` deployment's trigger (prefect.yaml) starts a retrain; the new
champion's forecasts reach the store. Forecasts are never duplicated for a (version, origin),
and a monitor run on unchanged data changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lstmops import config

from .conftest import REPO, SOURCE_CSV, free_port, make_project, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent
DAY = 48  # half-hours
FIRST_DAYS, LANDED_DAYS = 40, 30
SHIFT = 1.5
# The small forecaster of test_retrain.py (it beats the half-day naive forecast clearly), no backtest,
# and a rule that judges one day: violated when the champion's RMSE exceeds 1.3x its registration-time one.
TASK = [
    "data.source=data/source/parts", "window.input_steps=96", "window.horizon=48",
    "evaluate.seasonal_periods={seasonal_naive_half_day: 24}", "evaluate.plot_days=2", "evaluate.backtest_folds=0",
    "evaluate.diagnostics.enabled=false", "model.hidden_size=16", "model.num_layers=1", "model.seasonal_skip=null",
    "train.epochs=30", "train.patience=10", "promote.min_unseen=48", "train.positions=48", "train.spans_per_batch=8", "train.warmup_steps=0",
    "monitor.rule.bad_days=1", "monitor.rule.of_days=1", "monitor.rule.vs_baseline=null", "monitor.rule.vs_registered=0.3",
]  # fmt: skip


def sh(root: Path, env: dict[str, str], *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=root, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def lstmops(root: Path, env: dict[str, str], *args: str) -> str:
    result = sh(root, env, str(BIN / "lstmops"), *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def api(env: dict[str, str], path: str, body: dict | None = None):
    request = urllib.request.Request(f"{env['PREFECT_API_URL']}{path}", method="POST" if body is not None else "GET",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def deployments_for_test(root: Path) -> None:
    """The repository's prefect.yaml, each deployment running in this checkout (`prefect deploy`
    records set_working_directory when a deployment has no pull steps of its own)."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    spec.pop("pull", None)
    for deployment in spec["deployments"]:
        deployment.pop("pull", None)
    (root / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def started(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=cwd)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def loop(tmp_path, mlflow_server):
    """A project deployed on its own `prefect server` with a process worker polling the pool."""
    home, port = tmp_path / "prefect-home", free_port()
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "MLFLOW_TRACKING_URI": mlflow_server, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    home.mkdir()
    server = started([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                     tmp_path / "server.log", tmp_path)  # fmt: skip
    worker = None
    try:
        wait_http(f"{env['PREFECT_API_URL']}/health", 120, server)
        frame = pd.read_csv(SOURCE_CSV)
        root = make_project(tmp_path / "project", frame.iloc[:10])
        (root / "data/source/parts").mkdir()
        frame.iloc[: FIRST_DAYS * DAY].to_csv(root / "data/source/parts/part-001.csv", index=False)
        config.write_overrides(root, [*TASK, "mlflow.model_name=monitor-loop"])
        deployments_for_test(root)
        git = lambda *a: subprocess.run(["git", *a], cwd=root, check=True, capture_output=True)  # noqa: E731
        git("add", "-A")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
        assert sh(root, env, str(BIN / "prefect"), "work-pool", "create", "lstmops", "--type", "process").returncode == 0
        deployed = sh(root, env, str(BIN / "prefect"), "--no-prompt", "deploy", "--all")
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        worker = started([str(BIN / "prefect"), "worker", "start", "--pool", "lstmops"], env, tmp_path / "worker.log", tmp_path)
        yield root, env, frame
    finally:
        for proc in (worker, server):
            if proc is not None:
                stop(proc)


def forecast_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root / "data/forecasts").as_posix() for p in (root / "data/forecasts").rglob("*.parquet"))


def retrain_runs(env: dict[str, str]) -> list[dict]:
    deployment = api(env, "/deployments/name/lstmops-retrain/retrain")
    runs = api(env, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
    return [r for r in runs if not r["auto_scheduled"]]  # not the nightly cron's runs, scheduled ahead


def champion(tracking: str, name: str) -> int:
    from mlflow.tracking import MlflowClient

    return int(MlflowClient(tracking).get_model_version_by_alias(name, "champion").version)


def test_decay_fires_the_retrain_trigger_and_the_new_champion_forecasts(loop, mlflow_server):
    root, env, frame = loop
    name = "monitor-loop"
    deployment = api(env, "/deployments/name/lstmops-retrain/retrain")
    assert [t["expect"] for t in deployment.get("triggers", [])] in ([], [["lstmops.monitor.decay"]])  # read below

    ran = lstmops(root, env, "run")
    assert "promoted to champion" in ran, ran

    # 1. The champion forecasts the next day (the origin just after the data) into the store, once.
    first = lstmops(root, env, "predict")
    origin = pd.Timestamp(frame.timestamp.iloc[FIRST_DAYS * DAY])
    key = f"forecasts/model={name}/version=1/origin={origin:%Y%m%dT%H%M%S}.parquet"
    assert forecast_files(root) == [key], first
    stored = (root / "data/forecasts" / key).read_bytes()
    again = lstmops(root, env, "predict")
    assert "up to date" in again and forecast_files(root) == [key]
    assert (root / "data/forecasts" / key).read_bytes() == stored
    rows = pd.read_parquet(root / "data/forecasts" / key)
    assert len(rows) == 48 and rows.step.tolist() == list(range(1, 49)) and rows.origin.nunique() == 1

    # 2. Nothing has arrived yet: nothing is scored and the rule cannot fire.
    assert "0 scored day(s)" in lstmops(root, env, "monitor")

    # 3. The actuals land, with demand planted 1.5x higher: the day scores badly and the rule fires.
    landed = frame.iloc[FIRST_DAYS * DAY : (FIRST_DAYS + LANDED_DAYS) * DAY].copy()
    landed["demand_gw"] *= SHIFT
    landed.to_csv(root / "data/source/parts/part-002.csv", index=False)
    fired = lstmops(root, env, "monitor")
    assert "FIRED" in fired and "event lstmops.monitor.decay sent" in fired, fired
    report = json.loads((root / "reports/monitor/monitor.json").read_text())
    day = report["champion_days"][0]
    assert day["origin"] == str(origin) and day["violates"] and day["error"] > 1.3 * report["registered"]["value"]
    assert {r["forecaster"] for r in report["days"]} == {"model", "persistence", "seasonal_naive_half_day"}
    assert report["drift"]["demand_gw"]["drifted"] and not report["drift"]["workday"]["drifted"]
    assert (root / "reports/monitor/index.html").is_file()
    assert 'lstmops_monitor_decayed{model="monitor-loop",version="1"} 1.0' in (root / "reports/monitor/metrics.prom").read_text()
    from mlflow.tracking import MlflowClient

    history = MlflowClient(mlflow_server).get_metric_history(report_run(mlflow_server, name, 1), "monitor_rmse")
    assert [m.value for m in history] == [day["error"]]

    # 4. On unchanged data the monitor changes nothing: same files, no second event, no new metric.
    before = {p: p.read_bytes() for p in (root / "reports/monitor").iterdir()}
    assert "nothing new" in lstmops(root, env, "monitor")
    assert {p: p.read_bytes() for p in (root / "reports/monitor").iterdir()} == before

    # 5. The event fired the retrain deployment's trigger (prefect.yaml); the worker retrains and the
    #    gate promotes a version trained on the shifted data.
    deadline = time.monotonic() + 540
    while time.monotonic() < deadline:
        runs = retrain_runs(env)
        if runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(3)
    assert len(runs) == 1, "the decay event started no retrain (or more than one)"
    assert runs[0]["state_type"] == "COMPLETED", runs[0]["state"]
    assert runs[0]["parameters"]["root"] == "."
    assert champion(mlflow_server, name) == 2, json.loads((root / "reports/gate.json").read_text())["reason"]
    assert MlflowClient(mlflow_server).get_metric_history(report_run(mlflow_server, name, 1), "monitor_rmse")[0].value == day["error"]

    # 6. The new champion's forecasts reach the store, from the newest origin; version 1's stay as they were.
    lstmops(root, env, "predict")
    newest = pd.Timestamp(landed.timestamp.iloc[-1]) + pd.Timedelta("30min")
    assert forecast_files(root) == [key, f"forecasts/model={name}/version=2/origin={newest:%Y%m%dT%H%M%S}.parquet"]
    assert (root / "data/forecasts" / key).read_bytes() == stored
    assert len(retrain_runs(env)) == 1


def report_run(tracking: str, name: str, version: int) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking).get_model_version(name, str(version)).run_id
