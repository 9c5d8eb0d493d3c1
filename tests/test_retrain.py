"""Retraining that runs itself, end to end with real servers on 127.0.0.1: a Prefect server, a
process worker and `prefect deploy --all` from prefect.yaml; an MLflow server; partitions that
grow. Then promotion, rollback and history through the CLI; an MLflow outage during register;
and a registered version reproduced from its lineage, byte for byte."""

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

from lstmops import config

from .conftest import SOURCE_CSV, free_port, make_project, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent
ROWS, GROWN = 2400, 3000  # 50 days, then 12.5 more land as a new partition

# A small task where an LSTM beats the naive forecasts clearly (a day ahead from two days of
# history; the half-day seasonal forecast and persistence are weak), so the gate's first
# champion does not hang on the last digit of a CPU.
TASK = [
    "data.source=data/source/parts",
    "window.input_steps=96",
    "window.horizon=48",
    "evaluate.seasonal_periods={seasonal_naive_half_day: 24}",
    "evaluate.plot_days=2",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.seasonal_skip=null",
    "evaluate.backtest_folds=2",
    "train.epochs=10",
    "train.patience=5",
    "train.positions=48",
    "train.spans_per_batch=8",
    "train.warmup_steps=0",
    "retrain.retry_delay_s=0.5",
]


def sh(root: Path, env: dict[str, str], *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=root, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def cli(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return sh(root, env, str(BIN / "lstmops"), *args)


def partitioned_project(path: Path, name: str, rows: int) -> Path:
    frame = pd.read_csv(SOURCE_CSV)
    root = make_project(path, frame.iloc[:10])
    parts = root / "data" / "source" / "parts"
    parts.mkdir()
    frame.iloc[:rows].to_csv(parts / "part-001.csv", index=False)
    config.write_overrides(root, [*TASK, f"mlflow.model_name={name}"])
    shutil.copy(Path(__file__).resolve().parents[1] / "prefect.yaml", root)
    git = lambda *a: subprocess.run(["git", *a], cwd=root, check=True, capture_output=True)  # noqa: E731
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
    return root


def started(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=cwd)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on 127.0.0.1 with a temporary PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    proc = started([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, home / "server.log")  # fmt: skip
    try:
        wait_http(f"{env['PREFECT_API_URL']}/health", 120, proc)
        yield env
    finally:
        stop(proc)


def api(env: dict[str, str], path: str) -> dict:
    with urllib.request.urlopen(f"{env['PREFECT_API_URL']}{path}", timeout=10) as response:
        return json.loads(response.read())


def version_tags(tracking: str, name: str, version: int) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking).get_model_version(name, str(version)).tags


def champion(tracking: str, name: str) -> int:
    from mlflow.tracking import MlflowClient

    return int(MlflowClient(tracking).get_model_version_by_alias(name, "champion").version)


def versions(tracking: str, name: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(int(v.version) for v in MlflowClient(tracking).search_model_versions(f"name='{name}'"))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, prefect_server, mlflow_server):
    """The project deployed with `prefect deploy --all` and a process worker polling its pool."""
    name = "retrain-e2e"
    root = partitioned_project(tmp_path_factory.mktemp("retrain") / "project", name, ROWS)
    env = {**prefect_server, "MLFLOW_TRACKING_URI": mlflow_server, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "LSTMOPS_ACTOR": "nightly-test"}  # fmt: skip
    pool = sh(root, env, str(BIN / "prefect"), "work-pool", "create", "lstmops", "--type", "process")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = sh(root, env, str(BIN / "prefect"), "--no-prompt", "deploy", "--all")
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    # The worker starts elsewhere: the deployment's pull step brings it to the checkout.
    worker = started([str(BIN / "prefect"), "worker", "start", "--pool", "lstmops"], env, root.parent / "worker.log",
                     cwd=root.parent)  # fmt: skip
    try:
        yield root, name, env, mlflow_server
    finally:
        stop(worker)


def run_deployment(root: Path, env: dict[str, str], *params: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = sh(root, env, str(BIN / "prefect"), "deployment", "run", "lstmops-retrain/retrain", "--watch", *params)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result, time.monotonic() - start


def test_retrain_deployment_schedules_promotes_refuses_and_rolls_back(deployed):
    root, name, env, tracking = deployed

    deployment = api(env, "/deployments/name/lstmops-retrain/retrain")
    assert deployment["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert deployment["work_pool_name"] == "lstmops"
    assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(root)

    # 1. First run: the first version becomes champion because it beats the naive baselines.
    run_deployment(root, env)
    assert versions(tracking, name) == [1] and champion(tracking, name) == 1
    assert json.loads((root / "reports/gate.json").read_text())["promoted"] is True

    # 2. A new partition lands: a challenger is trained and scored against the champion on the
    #    newest test windows; it is promoted only if it wins by the margin, and says why.
    frame = pd.read_csv(SOURCE_CSV)
    frame.iloc[ROWS:GROWN].to_csv(root / "data/source/parts/part-002.csv", index=False)
    run_deployment(root, env)
    tags = version_tags(tracking, name, 2)
    assert tags["gate.champion_version"] == "1" and tags["gate.data_md5"] == tags["data_md5"]
    assert champion(tracking, name) == (2 if tags["gate.promoted"] == "True" else 1)
    before_weak = champion(tracking, name)

    # 3. Nothing changed: every stage is skipped and no version is registered.
    _, noop_s = run_deployment(root, env)
    assert versions(tracking, name) == [1, 2]
    print(f"no-op retrain through the deployment: {noop_s:.1f} s")

    # 4. A deliberately weak challenger (one epoch) is registered but not promoted, with the reason.
    run_deployment(root, env, "--params", json.dumps({"overrides": ["train.epochs=1"]}))
    weak = version_tags(tracking, name, 3)
    assert weak["gate.passed"] == "False" and weak["gate.reason"]
    assert champion(tracking, name) == before_weak
    assert "not promoted" in cli(root, env, "models").stdout

    # 5. A manual release, then a rollback to the champion before it, and the trail of both.
    assert cli(root, env, "promote", "3", "--reason", "try it").returncode == 0
    rolled = cli(root, env, "rollback", "--reason", "it is weak")
    assert rolled.returncode == 0, rolled.stderr
    assert champion(tracking, name) == before_weak
    lines = cli(root, env, "history").stdout.splitlines()[1:]
    kinds = [line.split()[3] for line in lines]  # newest first: seq, time, who, kind, ...
    assert kinds[:2] == ["rollback", "promote"] and kinds[-1] == "gate"
    assert "nightly-test" in lines[-1]


@pytest.fixture
def stoppable_mlflow(tmp_path):
    """An MLflow server that the test can stop and start again on the same port and store."""
    port = free_port()
    home = tmp_path / "mlflow"
    home.mkdir()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "art")]  # fmt: skip
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    state = {"proc": None}

    def start() -> None:
        state["proc"] = started(cmd, env, home / "server.log")
        wait_http(f"{url}/health", 60, state["proc"])

    def halt() -> None:
        stop(state["proc"])

    start()
    yield url, start, halt
    halt()


def test_mlflow_outage_at_register_retries_fails_in_one_line_then_resumes_without_retraining(
    tmp_path, stoppable_mlflow, prefect_server
):
    url, start, halt = stoppable_mlflow
    name = "outage"
    root = partitioned_project(tmp_path / "project", name, ROWS)
    env = {**prefect_server, "MLFLOW_TRACKING_URI": url, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    assert sh(root, env, str(BIN / "dvc"), "repro", "evaluate", "backtest", "export").returncode == 0
    trained = (root / "models/train.json").read_bytes()

    halt()
    failed = cli(root, env, "run", "-S", "retrain.retries=2")
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith("error: stage 'register' failed")
    assert f"MLflow tracking server {url} is unreachable" in failed.stderr.splitlines()[-1]
    assert "Retry 2/2" in failed.stdout + failed.stderr  # retried with backoff before giving up
    assert not (root / "models/registered.json").exists()

    start()
    assert versions(url, name) == []  # nothing half-registered
    resumed = cli(root, env, "run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Running stage 'train'" not in resumed.stdout + resumed.stderr
    assert (root / "models/train.json").read_bytes() == trained
    assert versions(url, name) == [1]

    # The version reproduces from its lineage on a fresh clone: checkout, pull, repro.
    remote = ["remote", "add", "--local", "-d", "local", str(tmp_path / "dvc-remote")]
    for cmd in (remote, ["push", "-q"]):
        assert sh(root, env, str(BIN / "dvc"), *cmd).returncode == 0
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    assert sh(clone, env, str(BIN / "dvc"), *remote).returncode == 0
    lineage = cli(clone, env, "lineage", f"models:/{name}/1").stdout
    commands = [line.split("#")[0].strip() for line in lineage.split("reproduce:\n")[1].splitlines()]
    assert commands[0].startswith("git checkout ")
    for command in commands:
        result = sh(clone, env, *command.split())
        assert result.returncode == 0, f"{command}: {result.stderr[-2000:]}"
    import mlflow

    expected = Path(mlflow.artifacts.download_artifacts(
        run_id=json.loads((root / "models/registered.json").read_text())["run_id"],
        artifact_path="evaluation/metrics.json", dst_path=str(tmp_path / "expected"), tracking_uri=url,
    )).read_bytes()  # fmt: skip
    assert (clone / "reports/metrics.json").read_bytes() == expected
