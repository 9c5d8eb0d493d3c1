"""Promotion: the gate's rules, and alias moves that are serialized, recorded and reversible,
against a real MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from lstmops.errors import LstmopsError
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec, ScaledForecaster
from lstmops.registry.gate import Evidence, champion_problem, decide
from lstmops.registry.trail import Move, rollback_target

CLI = Path(sys.executable).parent / "lstmops"


def evidence(**changes) -> Evidence:
    base = dict(metric="rmse", min_improvement=0.05, challenger=0.9, baselines={"persistence": 1.2, "day": 1.0},
                champion=1.0, champion_problem=None, validation="passed", parity_ok=True)  # fmt: skip
    return Evidence(**{**base, **changes})


@pytest.mark.parametrize(
    "changes, passed, words",
    [
        ({}, True, "wins"),
        ({"challenger": 0.96}, False, "does not win"),  # better, but not by the 5% margin
        ({"challenger": 1.0, "champion": 2.0}, False, "best naive baseline day"),  # beats the champion, not the baseline
        ({"champion": None}, True, "first champion"),
        ({"champion": None, "challenger": 1.1}, False, "best naive baseline day"),  # a first version must beat baselines
        ({"parity_ok": False}, False, "TorchScript export disagrees"),
        ({"champion": None, "champion_problem": "it reads features ['a']"}, False, "promote with --force"),
    ],
)
def test_gate_rules(changes, passed, words):
    ok, reason = decide(evidence(**changes))
    assert ok is passed
    assert words in reason


def test_force_overrides_only_an_unreadable_champion():
    assert decide(evidence(champion=None, champion_problem="other features"), force=True)[0] is True
    assert decide(evidence(champion=None, champion_problem="other features", challenger=1.1), force=True)[0] is False


def scripted(features: list[str], horizon: int = 4, input_steps: int = 8):
    core = LSTMForecaster(ModelSpec(n_features=len(features), hidden_size=4, num_layers=1, dropout=0.0, horizon=horizon))
    return torch.jit.script(ScaledForecaster(core, [0.0] * len(features), [1.0] * len(features), 0, features, input_steps))


def test_a_champion_that_cannot_read_the_new_data_says_why():
    assert champion_problem(scripted(["a", "b"]), ["a", "b"], 4, 100) is None
    assert "features ['a', 'b']" in champion_problem(scripted(["a", "b"]), ["a", "c"], 4, 100)
    assert "forecasts 4 steps" in champion_problem(scripted(["a", "b"]), ["a", "b"], 12, 100)
    assert "needs 8 steps of history" in champion_problem(scripted(["a", "b"]), ["a", "b"], 4, 5)


def moves(*kinds_to: tuple[str, int]) -> list[Move]:
    return [Move(i + 1, "t", "me", kind, None, to, "") for i, (kind, to) in enumerate(kinds_to)]


def test_rollback_returns_to_the_previous_champion_not_version_minus_one():
    trail = moves(("gate", 1), ("gate", 5), ("promote", 3))
    assert rollback_target(trail, 3) == 5
    assert rollback_target(trail + [Move(4, "t", "me", "rollback", 3, 5, "")], 5) == 1  # and again, further back
    with pytest.raises(LstmopsError, match="nothing to roll back to"):
        rollback_target(moves(("gate", 1)), 1)
    with pytest.raises(LstmopsError, match="moved outside lstmops"):
        rollback_target(trail, 2)


# --- against a real MLflow server -------------------------------------------------------------

@pytest.fixture
def registry(mlflow_server, tmp_path, monkeypatch):
    """A registered model with three versions (tiny TorchScript files) and a project directory
    whose params name it, for the CLI."""
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    name = f"promo-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(mlflow_server)
    client.create_registered_model(name)
    mlflow.set_experiment("promotion-tests")
    for _ in range(3):
        with mlflow.start_run() as run:
            path = tmp_path / "model.ts"
            scripted(["a", "b"]).save(str(path))
            mlflow.log_artifact(str(path), "torchscript")
        client.create_model_version(name, f"runs:/{run.info.run_id}/torchscript", run_id=run.info.run_id)
    project = tmp_path / "project"
    project.mkdir()
    params = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("model_name: null", f"model_name: {name}", 1))
    return client, name, project


def lstmops(project: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([str(CLI), *args], cwd=project, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.integration
def test_promote_rollback_and_history_are_recorded_in_the_registry(registry):
    from lstmops.registry.trail import champion_version, history, move_champion, rollback

    client, name, project = registry
    move_champion(client, name, 1, "gate", "first")
    move_champion(client, name, 3, "promote", "hotfix")
    move_champion(client, name, 2, "promote", "retrained")
    assert rollback(client, name, "bad latency").to_version == 3
    assert rollback(client, name, "still bad").to_version == 1
    assert champion_version(client, name) == 1
    trail = history(client, name)
    assert [(m.kind, m.from_version, m.to_version) for m in trail] == [
        ("gate", None, 1), ("promote", 1, 3), ("promote", 3, 2), ("rollback", 2, 3), ("rollback", 3, 1)]  # fmt: skip
    assert trail[3].reason == "bad latency" and trail[3].actor
    shown = lstmops(project, "history").communicate()[0].splitlines()
    assert "rollback" in shown[1] and "3 -> 1" in shown[1]  # newest first
    assert "gate" in shown[-1] and "- -> 1" in shown[-1]
    listed = lstmops(project, "models").communicate()[0]
    assert "champion" in listed.splitlines()[-1]  # version 1, the last line


@pytest.mark.integration
def test_two_concurrent_promotions_leave_one_champion_and_two_chained_records(registry):
    from lstmops.registry.trail import champion_version, history, move_champion

    client, name, project = registry
    move_champion(client, name, 1, "gate", "first")
    # Each process holds its read-then-write window open for 1.5 s: without the lock both would
    # read "from 1" and one record would be wrong.
    procs = [lstmops(project, "promote", str(v), "--reason", f"race {v}", LSTMOPS_TEST_PROMOTION_DELAY_S="1.5")
             for v in (2, 3)]  # fmt: skip
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), results
    trail = history(client, name)
    first, second = trail[-2], trail[-1]
    assert {first.to_version, second.to_version} == {2, 3}
    assert first.from_version == 1 and second.from_version == first.to_version
    assert champion_version(client, name) == second.to_version


@pytest.mark.integration
def test_unknown_version_and_rollback_without_history_fail_in_one_line(registry):
    _, _, project = registry
    out, err = lstmops(project, "promote", "42", "--reason", "typo").communicate()
    assert err.startswith("error: ") and err.count("\n") == 1
    proc = lstmops(project, "rollback")
    out, err = proc.communicate()
    assert proc.returncode == 1 and "error:" in err and "Traceback" not in err


@pytest.mark.integration
def test_gate_refuses_when_the_champion_cannot_read_the_new_data_unless_forced(registry, tmp_path):
    import numpy as np

    from lstmops.tasks.forecast.evaluate import error_metrics
    from lstmops.registry.gate import champion_problem, forecast, run_gate
    from lstmops.registry.trail import champion_version, history, move_champion
    from lstmops.tasks import GateInputs

    client, name, _ = registry
    move_champion(client, name, 1, "gate", "first")  # version 1 reads features a, b
    challenger = tmp_path / "challenger.ts"
    scripted(["a", "c"]).save(str(challenger))  # the new data has c instead of b
    raw = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    test_origins = np.arange(150, 197)
    actual = raw[test_origins[:, None] + np.arange(4), 0].astype(np.float64)
    scoring = GateInputs(
        "rmse", {"persistence": 1e9}, lambda model: float(error_metrics(actual, forecast(model, raw, test_origins, 8))["rmse"]),
        lambda model: champion_problem(model, ["a", "c"], 4, int(test_origins[0])),
    )
    args = dict(client=client, name=name, challenger_version=2, challenger_file=challenger, scoring=scoring,
                validation="passed", parity_ok=True, data_md5="d" * 32, min_improvement=0.01)  # fmt: skip

    refused = run_gate(**args)
    assert not refused.passed and not refused.promoted
    assert "reads features ['a', 'b']" in refused.reason and "--force" in refused.reason
    assert champion_version(client, name) == 1
    assert client.get_model_version(name, "2").tags["gate.reason"] == refused.reason

    forced = run_gate(**args, force=True)
    assert forced.promoted and forced.forced
    assert champion_version(client, name) == 2
    assert history(client, name)[-1].reason.startswith("forced")
