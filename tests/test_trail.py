"""The audit trail's rules: what a record is, how a trail is reconciled with the alias, where
rollback goes, and that the trail stays bounded (the last against a real MLflow server)."""

from __future__ import annotations

import json
import uuid

import pytest

from lstmops.errors import LstmopsError
from lstmops.registry.listing import history_table
from lstmops.registry.trail import Move, parse_trail, reconciliation, rollback_target


def chain(*steps: tuple[str, int]) -> list[Move]:
    """Committed moves, each from where the previous one left the alias."""
    out: list[Move] = []
    for kind, to in steps:
        out.append(Move(len(out) + 1, "t", "me", kind, out[-1].to_version if out else None, to, ""))
    return out


def then(trail: list[Move], kind: str, to: int, **fields) -> list[Move]:
    return trail + [Move(len(trail) + 1, "t", "me", kind, trail[-1].to_version, to, "", **fields)]


# --- rollback ----------------------------------------------------------------------------------


def test_rollback_follows_from_version_through_an_external_move():
    # The case: gate->1, gate->2, a hand move to 5, promote 6.
    trail = chain(("gate", 1), ("gate", 2), ("external", 5), ("promote", 6))
    assert rollback_target(trail, 6) == 5
    trail = then(trail, "rollback", 5)
    assert rollback_target(trail, 5) == 2  # and again: back past the hand move
    trail = then(trail, "rollback", 2)
    assert rollback_target(trail, 2) == 1
    trail = then(trail, "rollback", 1)
    with pytest.raises(LstmopsError, match="nothing to roll back to"):
        rollback_target(trail, 1)


def test_rollback_follows_from_version_on_a_trail_written_before_external_moves_were_recorded():
    # Earlier lstmops never recorded the hand move to 5, but its promote recorded "from 5".
    trail = chain(("gate", 1), ("gate", 2)) + [Move(3, "t", "me", "promote", 5, 6, "")]
    assert rollback_target(trail, 6) == 5  # not 2, the record below it


def test_rollback_is_not_version_minus_one():
    assert rollback_target(chain(("gate", 1), ("gate", 5), ("promote", 3)), 3) == 5


def test_an_unrecorded_champion_rolls_back_to_the_last_recorded_one():
    assert rollback_target(chain(("gate", 1), ("gate", 2)), 7) == 2


def test_rollback_ignores_moves_that_never_happened():
    trail = chain(("gate", 1), ("gate", 2))
    aborted = Move(3, "t", "me", "promote", 2, 3, "", state="aborted")
    pending = Move(4, "t", "me", "promote", 2, 4, "", state="intent")
    assert rollback_target(trail + [aborted, pending], 2) == 1


# --- reconciliation ----------------------------------------------------------------------------


def intent(trail: list[Move], to: int) -> list[Move]:
    return then(trail, "promote", to, state="intent", lease="dead")


def test_a_dead_intent_is_committed_if_the_alias_moved_and_aborted_if_not():
    trail = intent(chain(("gate", 1)), 2)
    moved = reconciliation(trail, champion=2, next_seq=3, when="now", by="me")
    assert [(m.seq, m.state, m.reconciled, m.settled) for m in moved] == [(2, "committed", True, "now")]
    stayed = reconciliation(trail, champion=1, next_seq=3, when="now", by="me")
    assert [(m.seq, m.state, m.reconciled) for m in stayed] == [(2, "aborted", True)]


def test_an_intent_followed_by_later_records_is_settled_by_where_the_next_move_started():
    trail = intent(chain(("gate", 1)), 2)
    trail = trail + [Move(3, "t", "me", "promote", 2, 3, "")]  # the next move read 2 under the lease
    assert [(m.seq, m.state) for m in reconciliation(trail, 3, 4, "now", "me")] == [(2, "committed")]


def test_an_alias_moved_outside_lstmops_is_recorded_as_external():
    fixes = reconciliation(chain(("gate", 1), ("gate", 2)), champion=5, next_seq=3, when="now", by="me")
    assert [(m.seq, m.kind, m.from_version, m.to_version, m.state) for m in fixes] == [(3, "external", 2, 5, "committed")]
    assert "outside lstmops" in fixes[0].reason
    # after an aborted intent, the external move starts where the last committed record left the alias
    fixes = reconciliation(intent(chain(("gate", 1)), 2), champion=7, next_seq=3, when="now", by="me")
    assert [(m.kind, m.state, m.from_version, m.to_version) for m in fixes] == [
        ("promote", "aborted", 1, 2), ("external", "committed", 1, 7)]  # fmt: skip
    # a champion set by hand on a model with no trail
    assert [(m.kind, m.from_version, m.to_version) for m in reconciliation([], 4, 1, "now", "me")] == [("external", None, 4)]


def test_a_trail_that_agrees_with_the_alias_needs_nothing():
    assert reconciliation(chain(("gate", 1), ("promote", 3)), 3, 3, "now", "me") == []
    assert reconciliation([], None, 1, "now", "me") == []


# --- records -----------------------------------------------------------------------------------


def record(seq: int, **changes) -> str:
    base = dict(seq=seq, time="t", actor="me", kind="promote", from_version=1, to_version=2, reason="r")
    return json.dumps({**base, **changes})


@pytest.mark.parametrize(
    "value, words",
    [
        ("{oops", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"seq": 2, "kind": "gate"}), "missing time, actor, from_version, to_version, reason"),
        (record(2, to_version="2"), "to_version is '2'"),
        (record(2, to_version=True), "to_version is True"),
        (record(3), "it says seq 3"),
        (record(2, kind="teleport"), "unknown kind 'teleport'"),
    ],
)
def test_a_malformed_record_is_reported_and_skipped_and_its_number_never_reused(value, words):
    trail = parse_trail("m", {"audit.000001": record(1), "audit.000002": value, "audit.000003": record(3, from_version=2)})
    assert [m.seq for m in trail.moves] == [1, 3]
    assert trail.last_seq == 3
    assert len(trail.problems) == 1 and "audit.000002" in trail.problems[0] and words in trail.problems[0]
    assert parse_trail("m", {"audit.000007": value}).last_seq == 7  # a malformed newest record still counts


def test_records_from_before_the_lease_read_as_committed_and_other_tags_are_ignored():
    trail = parse_trail("m", {"audit.000001": record(1, from_version=None), "owner": "ml-team", "audit.note": "x"})
    assert [(m.seq, m.state, m.lease) for m in trail.moves] == [(1, "committed", "")]
    assert trail.problems == ["m: tag audit.note is not an audit record (audit.NNNNNN); ignored"]


def test_history_shows_unconfirmed_and_reconciled_moves():
    trail = chain(("gate", 1))
    trail = then(trail, "promote", 2, state="aborted", reconciled=True)
    trail = trail + [Move(3, "t", "me", "promote", 1, 3, "", state="intent")]
    lines = history_table(trail)
    assert "promote (intent)" in lines[1] and "1 -> 3" in lines[1]  # newest first
    assert "promote (aborted)*" in lines[2]
    assert "gate " in lines[3] and "- -> 1" in lines[3]
    assert lines[-1].startswith("  * settled by a later read")


# --- a bounded trail, against a real MLflow server ----------------------------------------------


@pytest.fixture
def model(mlflow_server):
    """A registered model with three versions (a text file each: the trail never loads them)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    name = f"trail-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    mlflow.set_experiment("trail-tests")
    with mlflow.start_run() as run:
        mlflow.log_text("not a model", "model/readme.txt")
    for _ in range(3):
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return client, name


@pytest.mark.integration
def test_the_trail_on_the_model_stays_bounded_and_older_records_move_to_an_artifact(model, monkeypatch):
    from lstmops.registry.trail import archived_records, champion_version, history, move_champion, rollback

    client, name = model
    monkeypatch.setenv("LSTMOPS_AUDIT_KEEP", "4")
    for to in (1, 2, 3, 1, 2, 3, 1):
        move_champion(client, name, to, "promote", f"to {to}")
        on_model = [key for key in client.get_registered_model(name).tags if key.startswith("audit.")]
        assert len(on_model) <= 4
    kept, archived = history(client, name), archived_records(client, name)
    assert [m.seq for m in archived + kept] == list(range(1, 8))  # nothing lost, nothing twice
    assert [m.to_version for m in archived + kept] == [1, 2, 3, 1, 2, 3, 1]
    assert "lstmops-audit" in client.get_registered_model(name).tags["audit-archive"]
    assert rollback(client, name, "still works on what is kept").to_version == 3
    assert champion_version(client, name) == 3


@pytest.mark.integration
def test_a_bad_keep_setting_fails_before_the_alias_moves(model, monkeypatch):
    from lstmops.registry.trail import champion_version, move_champion

    client, name = model
    monkeypatch.setenv("LSTMOPS_AUDIT_KEEP", "lots")
    with pytest.raises(LstmopsError, match="LSTMOPS_AUDIT_KEEP='lots'"):
        move_champion(client, name, 1, "promote", "x")
    assert champion_version(client, name) is None
    assert not [key for key in client.get_registered_model(name).tags if key.startswith("audit.")]
