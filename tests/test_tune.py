"""`lstmops tune`: an Optuna study over params' tune.space, trained by the pipeline's own engine on
validation loss, resumable from its storage, one MLflow child run per trial under a parent run,
the best settings printed as -S overrides and written to a params file that `set -P`/`run -P` read."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from lstmops import config
from lstmops.errors import ConfigError, ServiceUnavailable
from lstmops.tasks.forecast.tune import as_overrides, nested, read_params_file, suggest

from .conftest import SMALL, lstmops, make_project

CLI = Path(sys.executable).parent / "lstmops"
SPACE = "tune.space={model.hidden_size: [4, 8], train.learning_rate: {low: 0.001, high: 0.01, log: true}}"
QUICK = [*SMALL, "train.epochs=5", "train.patience=5", "tune.warmup_epochs=1", "tune.startup_trials=1", SPACE]


def flags(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("-S", o)]


# --- the search space and the params file ---------------------------------------------------------


def test_a_list_is_a_choice_and_a_mapping_a_range_of_the_ends_type():
    space = {"a": [None, 0.99], "b": {"low": 8, "high": 64, "step": 8}, "c": {"low": 1e-3, "high": 1e-2, "log": True}}
    values = suggest(optuna.trial.FixedTrial({"a": None, "b": 16, "c": 0.005}), space)
    assert values == {"a": None, "b": 16, "c": 0.005}
    trial = optuna.create_study().ask()
    suggest(trial, space)
    kinds = trial.distributions
    assert kinds["a"] == optuna.distributions.CategoricalDistribution([None, 0.99])
    assert kinds["b"] == optuna.distributions.IntDistribution(8, 64, step=8)
    assert kinds["c"] == optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)


def test_overrides_read_back_as_the_values_they_came_from():
    values = {"train.ema_decay": None, "train.learning_rate": 0.0057661837852340464, "model.hidden_size": 48,
              "evaluate.seasonal_periods": {"day": 48}}  # fmt: skip
    parsed = {".".join(keys): value for keys, value in map(config.parse_override, as_overrides(values))}
    assert parsed == values
    assert nested({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}


def test_a_params_file_becomes_overrides_and_a_bad_one_is_refused_in_one_line(tmp_path):
    good = tmp_path / "best.yaml"
    good.write_text("# a comment\nmodel:\n  hidden_size: 48\ntrain:\n  ema_decay: null\n")
    assert read_params_file(good) == ["model.hidden_size=48", "train.ema_decay=null"]
    (tmp_path / "list.yaml").write_text("- 1\n")
    for path, says in ((tmp_path / "missing.yaml", "not found"), (tmp_path / "list.yaml", "expected a mapping")):
        with pytest.raises(ConfigError, match=says):
            read_params_file(path)


@pytest.mark.parametrize(
    ("space", "says"),
    [
        ("{train.learning_rate: {low: 0.01, high: 0.001}}", "low 0.01 must be below high 0.001"),
        ("{train.learning_rate: {low: 0, high: 0.1, log: true}}", "a log range needs low > 0"),
        ("{model.hidden_size: {low: 8}}", "a range needs low and high"),
        ("{model.hidden_size: []}", "an empty list of choices"),
    ],
)
def test_a_malformed_range_fails_at_load_naming_the_setting(space, says):
    with pytest.raises(ConfigError, match=f"tune.space.*{says}"):
        config.load(Path(__file__).resolve().parents[1], [f"tune.space={space}"])


# --- end to end, on the small default data --------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, small_frame, mlflow_server):
    root = make_project(tmp_path_factory.mktemp("tune") / "project", small_frame)
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    for stage in ("ingest", "validate"):
        assert lstmops(root, env, stage).returncode == 0
    return root, env


def children(mlflow_server: str, parent_id: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def parent_id(output: str) -> str:
    return output.split("MLflow parent run ")[1].split()[0]


@pytest.mark.integration
def test_tune_logs_a_child_run_per_trial_writes_the_best_and_resumes(ingested, mlflow_server):
    root, env = ingested
    first = lstmops(root, env, "tune", *flags(QUICK), "--trials", "4")
    assert first.returncode == 0, first.stderr[-3000:]
    study = optuna.load_study(study_name="forecast", storage=f"sqlite:///{root / 'tune/study.db'}")
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    runs = children(mlflow_server, parent_id(first.stdout))
    assert len(runs) == 4  # pruned trials are child runs too
    assert {r.data.tags["trial.state"] for r in runs} <= {"complete", "pruned"}
    assert {r.data.params["optuna.trial"] for r in runs} == {"0", "1", "2", "3"}
    best = study.best_trial
    written = yaml.safe_load((root / "tune/best_params.yaml").read_text())
    assert written == nested(best.params)
    assert f"best: trial {best.number}" in first.stdout and f"-S model.hidden_size={best.params['model.hidden_size']}" in first.stdout

    again = lstmops(root, env, "tune", *flags(QUICK), "--trials", "5")  # the same study: one more trial
    assert again.returncode == 0, again.stderr[-3000:]
    assert parent_id(again.stdout) == parent_id(first.stdout)
    assert len(children(mlflow_server, parent_id(first.stdout))) == 5
    assert "5 trials" in again.stdout

    changed = lstmops(root, env, "tune", *flags([*QUICK, "train.epochs=6"]), "--trials", "6")
    assert changed.returncode == 1
    assert changed.stderr.strip().splitlines() == [
        "error: study 'forecast' in tune.storage was run with other fixed settings (" + " ".join(
            o for o in QUICK if not o.startswith("tune.")) + "); set tune.study to a new name, or delete the storage to start over"
    ]


@pytest.mark.integration
def test_the_best_params_file_is_written_into_params_yaml_by_set(ingested):
    root, env = ingested
    best = root / "tune/best_params.yaml"
    if not best.is_file():
        best.parent.mkdir(exist_ok=True)
        best.write_text("model:\n  hidden_size: 8\ntrain:\n  learning_rate: 0.004\n")
    before = (root / "params.yaml").read_text()
    result = lstmops(root, env, "set", "-P", "tune/best_params.yaml")
    assert result.returncode == 0, result.stderr
    after = config.load(root)
    expected = yaml.safe_load(best.read_text())
    assert after.model.hidden_size == expected["model"]["hidden_size"]
    assert after.train.learning_rate == pytest.approx(expected["train"]["learning_rate"])
    assert "# Every setting of the pipeline." in (root / "params.yaml").read_text()  # comments kept
    (root / "params.yaml").write_text(before)


@pytest.mark.integration
def test_the_wall_clock_budget_stops_a_running_trial(ingested):
    root, env = ingested
    slow = [*SMALL, "train.epochs=400", "train.patience=400", SPACE, "tune.study=budget", "tune.startup_trials=0"]
    result = lstmops(root, env, "tune", *flags(slow), "--trials", "3", "--timeout", "3")
    # What the budget promises: the trial running at the deadline is stopped and counted as pruned,
    # so none completed and none failed. How many trials start before a 3 s deadline depends on the
    # machine's speed, so the count of pruned trials is only required to be at least one.
    assert result.returncode == 1
    said = re.search(r"study 'budget': no trial completed \((\d+) pruned, 0 failed\)", result.stderr)
    assert said and int(said.group(1)) >= 1, result.stderr[-2000:]
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{root / 'tune/study.db'}")
    assert study.trials and not [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)


@pytest.mark.integration
def test_an_unknown_setting_in_the_space_or_another_task_is_refused_before_training(ingested):
    root, env = ingested
    unknown = lstmops(root, env, "tune", "-S", "tune.space={model.hidden_sizes: [8]}")
    assert unknown.returncode == 1 and "tune.space.model.hidden_sizes: 8 is not a valid value" in unknown.stderr
    other = lstmops(root, env, "tune", "--pipeline", "pipelines/charlm")
    assert other.returncode == 1 and "lstmops tune: this pipeline's task has no tuning space" in other.stderr
    switched = lstmops(root, env, "tune", "-S", "task=charlm")  # a pipeline's task is fixed
    assert switched.returncode == 1 and "task is fixed by" in switched.stderr


# --- many workers, one PostgreSQL study -----------------------------------------------------------


def tune_worker(root: Path, env: dict[str, str], overrides: list[str], trials: int) -> subprocess.Popen:
    """``lstmops tune`` in the background, as a worker on another machine would run it."""
    return subprocess.Popen([str(CLI), "tune", *flags(overrides), "--trials", str(trials)], cwd=root,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.integration
def test_two_workers_split_one_postgresql_study_each_trial_a_child_of_one_parent(ingested, mlflow_server, postgres):
    root, env = ingested
    url = postgres.database("two_workers")
    shared = [*QUICK, "train.epochs=3", f"tune.storage={url}", "tune.study=shared"]
    workers = [tune_worker(root, env, shared, trials=4) for _ in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-6000:] for _, err in outputs]

    trials = optuna.load_study(study_name="shared", storage=url).trials
    # A worker starts a trial only while finished + running < 4; two checking at the same moment may both start one.
    assert 4 <= len(trials) <= 5 and all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    (parent,) = {parent_id(out) for out, _ in outputs}  # one parent run for the study, whoever started first
    runs = children(mlflow_server, parent)
    assert sorted(int(r.data.params["optuna.trial"]) for r in runs) == [t.number for t in trials]  # each trial once
    assert {r.info.run_id for r in runs} == {t.user_attrs["mlflow_run_id"] for t in trials}
    assert {r.data.tags["lstmops.tune.worker"] for r in runs} == {t.user_attrs["worker"] for t in trials}


@pytest.mark.integration
def test_a_trial_whose_worker_is_killed_is_failed_by_its_heartbeat_and_run_again(ingested, mlflow_server, postgres):
    root, env = ingested
    url = postgres.database("killed_worker")
    # Long enough a trial to be killed in (the poll below sees it within 0.2 s of its start).
    settings = [*QUICK, "train.epochs=10", "train.patience=10", f"tune.storage={url}", "tune.study=killed",
                "tune.heartbeat_s=1", "tune.grace_s=3"]  # fmt: skip
    doomed = tune_worker(root, env, settings, trials=1)
    deadline = time.monotonic() + 120
    running: list = []
    while not running and doomed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name="killed", storage=url)
        except KeyError:  # not created yet
            continue
        running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
    assert running, "the first worker never started a trial"
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()

    survivor = tune_worker(root, env, settings, trials=1)
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err[-2000:]
    killed, retry = optuna.load_study(study_name="killed", storage=url).trials
    assert killed.state == optuna.trial.TrialState.FAIL and retry.state.is_finished()
    assert retry.system_attrs["failed_trial"] == killed.number  # what RetryHeartbeatStaleTrialCallback records
    assert retry.params == killed.params  # the same settings, run again
    assert "1 trials (" in out and "1 retried" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).data.tags["lstmops.tune.retry_of"] == str(killed.number)


@pytest.mark.parametrize(
    ("storage", "error", "says"),
    [
        ("postgresql+psycopg://lstmops:s3cret@127.0.0.1:1/tune", ServiceUnavailable,
         r"tune.storage postgresql\+psycopg://lstmops:\*\*\*@127.0.0.1:1/tune is unreachable \("),
        ("postgresql://127.0.0.1:1/tune", ConfigError, r"no driver for it .*use postgresql\+psycopg://"),
    ],
)  # fmt: skip
def test_a_storage_that_cannot_be_used_is_refused_in_one_line_without_its_password(tmp_path, storage, error, says):
    from lstmops.tasks.forecast.settings import TuneConfig
    from lstmops.tasks.forecast.tune import storage as open_storage

    with pytest.raises(error, match=says) as refused:
        open_storage(tmp_path, TuneConfig(storage=storage))
    assert "\n" not in str(refused.value) and "s3cret" not in str(refused.value)


@pytest.mark.integration
def test_workers_opening_an_empty_database_at_once_all_get_the_storage(postgres):
    """Each creates Optuna's tables; on PostgreSQL all but one collide on them, and must retry."""
    url = postgres.database("empty_at_once")
    code = ("from pathlib import Path; from lstmops.tasks.forecast.settings import TuneConfig; "
            f"from lstmops.tasks.forecast.tune import storage; storage(Path('.'), TuneConfig(storage={url!r}))")  # fmt: skip
    workers = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], errors
