"""Promotion: the gate's rules, and alias moves that are serialized, recorded and reversible,
against a real MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from lstmops.errors import LstmopsError
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec, ScaledForecaster
from lstmops.registry.gate import Evidence, champion_problem, decide
from lstmops.registry.register import register_file
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
    """Committed records, each from where the one before left the champion."""
    tos = [to for _, to in kinds_to]
    return [Move(i + 1, "t", "me", kind, tos[i - 1] if i else None, to, "") for i, (kind, to) in enumerate(kinds_to)]


def test_rollback_returns_to_the_previous_champion_not_version_minus_one():
    trail = moves(("gate", 1), ("gate", 5), ("promote", 3))
    assert rollback_target(trail, 3) == 5
    assert rollback_target(trail + [Move(4, "t", "me", "rollback", 3, 5, "")], 5) == 1  # and again, further back
    with pytest.raises(LstmopsError, match="nothing to roll back to"):
        rollback_target(moves(("gate", 1)), 1)
    assert rollback_target(trail, 2) == 3  # moved by hand and not yet recorded: back to the recorded champion


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
            register_file(client, name, path, run.info.run_id)
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
    first = client.get_model_version(name, "1")
    challenger_version = int(register_file(client, name, challenger, first.run_id).version)  # the gate scores what is registered
    raw = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    test_origins = np.arange(150, 197)
    actual = raw[test_origins[:, None] + np.arange(4), 0].astype(np.float64)
    inputs = GateInputs(
        "rmse", {"persistence": 1e9}, lambda model: float(error_metrics(actual, forecast(model, raw, test_origins, 8))["rmse"]),
        lambda model: champion_problem(model, ["a", "c"], 4, int(test_origins[0])),
        "windows", len(test_origins), len(test_origins), "every test window",
    )

    def scoring(seen):
        return inputs
    args = dict(client=client, name=name, challenger_version=challenger_version, scoring=scoring,
                validation="passed", parity_ok=True, data_md5="d" * 32, min_improvement=0.01)  # fmt: skip

    refused = run_gate(**args)
    assert not refused.passed and not refused.promoted
    assert "reads features ['a', 'b']" in refused.reason and "--force" in refused.reason
    assert champion_version(client, name) == 1
    assert client.get_model_version(name, str(challenger_version)).tags["gate.reason"] == refused.reason

    forced = run_gate(**args, force=True)
    assert forced.promoted and forced.forced
    assert champion_version(client, name) == challenger_version
    assert history(client, name)[-1].reason.startswith("forced")


# --- promotions that cannot race: the lease and the trail, through the CLI ----------------------

LEASE_S = "2"  # short leases, so a dead holder costs the tests two seconds, not thirty


def add_versions(client, name: str, up_to: int) -> None:
    """More versions of the same file (the trail never loads them)."""
    first = client.get_model_version(name, "1")
    while len(client.search_model_versions(f"name='{name}'")) < up_to:
        client.create_model_version(name, first.source, run_id=first.run_id, tags=first.tags)


def raw_records(client, name: str) -> dict[int, dict]:
    """The audit tags as stored, by seq (no reconciliation: reading them through history() would settle them)."""
    import json

    tags = client.get_registered_model(name).tags
    return {int(k.split(".")[1]): json.loads(v) for k, v in tags.items() if k.startswith("audit.")}


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.integration
def test_a_hand_move_then_promote_then_rollback_returns_the_hand_moved_version(registry):
    from lstmops.registry.trail import champion_version, history, move_champion

    client, name, project = registry
    add_versions(client, name, 6)
    move_champion(client, name, 1, "gate", "first")
    move_champion(client, name, 2, "gate", "better")
    client.set_registered_model_alias(name, "champion", "5")  # by hand, in the MLflow UI or API
    promoted = lstmops(project, "promote", "6", "--reason", "hotfix", LSTMOPS_LEASE_S=LEASE_S)
    out, err = promoted.communicate(timeout=120)
    assert promoted.returncode == 0, err
    assert "champion: version 5 -> 6" in out
    assert "external move of champion: version 2 -> 5" in err  # found, recorded and said
    rolled = lstmops(project, "rollback", "--reason", "6 is slow", LSTMOPS_LEASE_S=LEASE_S)
    out, err = rolled.communicate(timeout=120)
    assert rolled.returncode == 0, err
    assert "version 6 -> 5" in out and champion_version(client, name) == 5
    assert [(m.kind, m.from_version, m.to_version) for m in history(client, name)] == [
        ("gate", None, 1), ("gate", 1, 2), ("external", 2, 5), ("promote", 5, 6), ("rollback", 6, 5)]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("killed_after, settled_as, champion", [("intent", "aborted", 1), ("move", "committed", 2)])
def test_a_holder_killed_between_its_record_and_the_alias_is_reconciled_on_the_next_read(
    registry, killed_after, settled_as, champion
):
    import signal

    from lstmops.registry.trail import champion_version, move_champion

    client, name, project = registry
    move_champion(client, name, 1, "gate", "first")
    holder = lstmops(project, "promote", "2", "--reason", "doomed",
                     LSTMOPS_LEASE_S=LEASE_S, LSTMOPS_TEST_PAUSE_AFTER=killed_after)  # fmt: skip
    wait_until(lambda: raw_records(client, name).get(2, {}).get("state") == "intent")
    if killed_after == "move":
        wait_until(lambda: champion_version(client, name) == 2)
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    assert raw_records(client, name)[2]["state"] == "intent"  # what the dead process left

    time.sleep(float(LEASE_S) + 0.5)  # its lease goes stale: nothing refreshes it any more
    shown = lstmops(project, "history", LSTMOPS_LEASE_S=LEASE_S)
    out, err = shown.communicate(timeout=120)
    assert shown.returncode == 0, err
    record = raw_records(client, name)[2]
    assert (record["state"], record["reconciled"]) == (settled_as, True)  # the read wrote it down
    assert champion_version(client, name) == champion
    assert "settled by a later read" in out

    nxt = lstmops(project, "promote", "3", "--reason", "next", LSTMOPS_LEASE_S=LEASE_S)
    assert nxt.wait(timeout=120) == 0
    assert raw_records(client, name)[3]["from_version"] == champion  # the next move starts where the alias really was


@pytest.mark.integration
def test_three_processes_racing_on_a_stale_lease_take_it_one_at_a_time(registry):
    from lstmops.registry.trail import LEASE_INFIX, champion_version

    client, name, project = registry
    # A holder that took the lease and died: it refreshes nothing, so it goes stale 3 s from now,
    # by which time the three processes below are all waiting on it.
    client.create_registered_model(f"{name}{LEASE_INFIX}000001", tags={"token": "dead", "holder": "ghost", "lease_s": "3"})
    procs = [lstmops(project, "promote", str(v), "--reason", f"race {v}",
                     LSTMOPS_LEASE_S=LEASE_S, LSTMOPS_TEST_PROMOTION_DELAY_S="0.5") for v in (1, 2, 3)]  # fmt: skip
    results = [p.communicate(timeout=180) + (p.returncode,) for p in procs]
    assert [code for _, _, code in results] == [0, 0, 0], results  # each waited, then proceeded in turn

    records = [raw_records(client, name)[seq] for seq in (1, 2, 3)]
    assert sorted(r["to_version"] for r in records) == [1, 2, 3]
    assert [r["state"] for r in records] == ["committed"] * 3
    assert [r["from_version"] for r in records] == [None, records[0]["to_version"], records[1]["to_version"]]
    assert len({r["lease"] for r in records}) == 3  # three holders, one after another
    for before, after in zip(records, records[1:]):
        assert before["settled"] <= after["time"]  # no two moves overlapped, even with 0.5 s windows held open
    assert champion_version(client, name) == records[2]["to_version"]
    left = {m.name: m.tags for m in client.search_registered_models(f"name LIKE '{name}{LEASE_INFIX}%'")}
    assert list(left) == [f"{name}{LEASE_INFIX}000004"]  # the dead lease broken once, then three holders
    assert left[f"{name}{LEASE_INFIX}000004"]["released"] == "true"


@pytest.mark.integration
def test_a_malformed_audit_record_is_reported_and_does_not_block_promotion(registry):
    from lstmops.registry.trail import champion_version, history, move_champion

    client, name, project = registry
    move_champion(client, name, 1, "gate", "first")
    client.set_registered_model_tag(name, "audit.000002", "{written by hand, badly")
    promoted = lstmops(project, "promote", "2", "--reason", "after a bad record", LSTMOPS_LEASE_S=LEASE_S)
    out, err = promoted.communicate(timeout=120)
    assert promoted.returncode == 0, err
    assert "champion: version 1 -> 2 (record 3)" in out  # the malformed record's number is not reused
    assert [line for line in err.splitlines() if "audit.000002" in line] == [
        f"warning: {name}: audit record audit.000002 is malformed (not JSON); skipped"]  # fmt: skip
    rolled = lstmops(project, "rollback", LSTMOPS_LEASE_S=LEASE_S)
    assert rolled.wait(timeout=120) == 0 and champion_version(client, name) == 1
    assert [(m.seq, m.kind, m.to_version) for m in history(client, name)] == [(1, "gate", 1), (3, "promote", 2), (4, "rollback", 1)]
