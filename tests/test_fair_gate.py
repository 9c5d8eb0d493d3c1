"""A fair gate: each version records what it trained and validated on (``seen.*`` tags), and the
gate scores the challenger and the champion only on test data that neither saw, with the naive
baselines on the same data; too little such data promotes nothing. The records of every task, the
rules, and the forecaster's gate end to end against a real MLflow server."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lstmops.registry.gate import Evidence, decide
from lstmops.registry.seen import MAX_TAG, as_tags, from_tags

from .conftest import SMALL, make_project

FEATURES = ["demand_gw", "temperature_c", "workday"]
HORIZON, DAY = 12, 48  # conftest.SMALL: window.horizon=12, window.input_steps=48, a seasonal naive of 48 steps


# --- the rules ----------------------------------------------------------------------------------------


def evidence(**changes) -> Evidence:
    base = dict(metric="rmse", min_improvement=0.01, challenger=0.9, baselines={"day": 1.0}, champion=1.0,
                champion_problem=None, validation="passed", parity_ok=True, unseen=200, min_unseen=100)  # fmt: skip
    return Evidence(**{**base, **changes})


def test_too_few_unseen_items_promote_nothing_and_say_why_in_one_line():
    ok, reason = decide(evidence(unseen=99, unit="windows"))
    assert not ok
    assert reason == ("too few test windows are new to both versions (neither trained nor validated on them): "
                      "99, fewer than promote.min_unseen=100; nothing promoted")  # fmt: skip
    assert not decide(evidence(unseen=0, challenger=None, champion=None), force=True)[0]  # --force does not score blind
    assert decide(evidence(unseen=100))[0]  # the minimum itself is enough


def test_the_backtest_mean_must_beat_the_best_baseline_when_required():
    ok, reason = decide(evidence(backtest=(0.35, "seasonal_naive_week", 0.3386)))
    assert not ok and reason == ("backtest mean rmse 0.35 does not beat the best naive baseline seasonal_naive_week "
                                 "(0.3386) over the folds (promote.beat_baseline_in_backtest)")  # fmt: skip
    assert decide(evidence(backtest=(0.3259, "seasonal_naive_week", 0.3386)))[0]
    assert decide(evidence(backtest=None))[0]  # not required, or no backtest ran


def test_seen_records_round_trip_through_tags_even_when_longer_than_one_tag():
    long = " ".join(f"{i:012x}" for i in range(1000))  # 13,000 characters: three tags
    tags = as_tags({"sequences": long, "streams": "0/val"})
    assert sorted(tags) == ["seen.sequences.1of3", "seen.sequences.2of3", "seen.sequences.3of3", "seen.streams"]
    assert all(len(v) <= MAX_TAG for v in tags.values())
    assert from_tags({**tags, "git_commit": "abc"}) == {"sequences": long, "streams": "0/val"}
    assert from_tags({"git_commit": "abc"}) is None  # registered before versions recorded it
    del tags["seen.sequences.2of3"]
    assert from_tags(tags) is None  # a lost part: nothing about it can be trusted


# --- each task's record and what it leaves out -----------------------------------------------------------


def test_charlm_knows_a_file_by_its_hash_wherever_it_moves_in_the_corpus():
    from lstmops.tasks.charlm.task import file_hash, file_spans, unseen_chars

    b, c, a = "b" * 300, "c" * 200, "a" * 100
    # The champion's corpus was b, c (joined: 501 characters) and it saw the first 450 of them:
    # all of b, and c's characters 0..149.
    champion = {"chars": f"{file_hash(b)}:0-300 {file_hash(c)}:0-149"}
    # A new file that sorts first moves both: a (0..99), b (101..400), c (402..601); test span 500..602.
    texts = [a, b, c]
    assert [first for _, first, _ in file_spans(texts, lowercase=False)] == [0, 101, 402]
    keep = unseen_chars(texts, False, 500, 602, [champion])
    # Corpus 500..550 is c's 98..148, which the champion saw; 551..601 (c's 149..199) are new.
    assert keep.tolist() == [False] * 51 + [True] * 51
    assert unseen_chars(texts, False, 500, 602, []).all()


def test_long_lag_leaves_out_a_seen_stream_and_seen_reber_strings():
    from lstmops.tasks.long_lag.task import string_hash, unseen_test

    meta = {"source": "embedded_reber", "settings": {"T": None}}
    problem = '{"settings": {"T": null}, "source": "embedded_reber"}'
    test = [{"string": s} for s in ("BTSXSE", "BPVVE", "BTXXTTVVE")]
    champion = {"problem": problem, "streams": "1/train 1/val", "strings": f"{string_hash('BPVVE')} {string_hash('X')}"}
    assert unseen_test(meta, 0, test, [champion]) == [True, False, True]
    same_stream = {"problem": problem, "streams": "0/test"}  # it trained on this very test set
    assert unseen_test(meta, 0, test, [same_stream]) == [False] * 3
    other_problem = {"problem": problem.replace("reber", "other"), "streams": "0/test"}
    assert unseen_test(meta, 0, test, [other_problem]) == [True] * 3


# --- the forecaster's gate against a real MLflow server ------------------------------------------------


class Blend(nn.Module):
    """A forecaster without training: ``w`` x the last target value + (1 - w) x the value one day
    earlier (the persistence and seasonal naive baselines, mixed)."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.features, self.target, self.input_steps, self.horizon, self.w = list(FEATURES), FEATURES[0], DAY, HORIZON, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, day = x.shape[1], self.input_steps  # the history is one day
        last = x[:, n - 1, 0].unsqueeze(1).repeat(1, self.horizon)
        return self.w * last + (1 - self.w) * x[:, n - day : n - day + self.horizon, 0]


@pytest.fixture(scope="module")
def small(tmp_path_factory, small_frame):
    """Ingested, validated and prepared (SMALL: 1,200 rows, test rows 1020..1199, 169 test windows)."""
    from lstmops import config, stages

    root = make_project(tmp_path_factory.mktemp("fair") / "project", small_frame)
    cfg = config.load(root, SMALL)
    for stage in ("ingest", "validate", "prepare"):
        stages.RUNNERS[stage](cfg, root)
    return root, cfg


def recorded(root: Path, test_fraction: float) -> dict[str, str]:
    """The seen record of a model prepared from the same snapshot with another split."""
    from lstmops import config
    from lstmops.tasks.forecast.prepare import prepare
    from lstmops.tasks.forecast.task import seen

    other = root.parent / f"split-{test_fraction}"
    cfg = config.load(root, [*SMALL, f"split.test_fraction={test_fraction}"])
    prepare(cfg, root / "data/raw/snapshot.parquet", other / "data/prepared")
    return seen(cfg, other)


def rmse_by_hand(frame: pd.DataFrame, origins: np.ndarray, w: float | None) -> float:
    """RMSE of the blend (None: persistence) on the windows at ``origins``, from the CSV's values."""
    y = frame["demand_gw"].to_numpy(np.float64)
    actual = y[origins[:, None] + np.arange(HORIZON)]
    last = y[origins - 1][:, None].repeat(HORIZON, axis=1)
    day = y[origins[:, None] + np.arange(HORIZON) - DAY]
    forecast = last if w is None else w * last + (1 - w) * day
    return float(np.sqrt(np.mean((forecast - actual) ** 2)))


@pytest.fixture
def gate(small, mlflow_server, monkeypatch, tmp_path):
    """Register a champion and a challenger (Blend files) with the given seen records, make the
    first the champion, and run the gate with the forecaster's gate_inputs."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from lstmops.registry.gate import run_gate
    from lstmops.registry.register import register_file
    from lstmops.registry.trail import move_champion
    from lstmops.tasks.forecast.task import gate_inputs, seen

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("fair-gate-tests")
    root, cfg = small
    client, name = MlflowClient(mlflow_server), f"fair-{uuid.uuid4().hex[:8]}"
    metrics = {"test": {"persistence": {"rmse": 0.6247}, "seasonal_naive_day": {"rmse": 0.7476}}}

    def run(champion: nn.Module, champion_seen: dict[str, str] | None, challenger: nn.Module, min_unseen: int = 10):
        versions = []
        for i, (module, record) in enumerate(((champion, champion_seen), (challenger, seen(cfg, root)))):
            path = tmp_path / uuid.uuid4().hex / "model.ts"  # stored under its own name
            path.parent.mkdir()
            torch.jit.script(module).save(str(path))
            with mlflow.start_run() as mlflow_run:
                tags = as_tags(record) if record is not None else {}
                versions.append(int(register_file(client, name, path, mlflow_run.info.run_id, tags).version))
        move_champion(client, name, versions[0], "gate", "first")
        verdict = run_gate(client, name, versions[1], lambda records: gate_inputs(cfg, root, metrics, records),
                           "passed", True, "d" * 32, 0.01, min_unseen=min_unseen)  # fmt: skip
        return verdict, client, name, versions

    return run


@pytest.mark.integration
def test_a_champion_trained_past_the_new_test_start_is_scored_only_after_its_validation_span(gate, small, small_frame):
    # The champion's split kept 99 test rows (validation until row 1100); the challenger's 180
    # (test windows from row 1020). On all 169 test windows the champion (w=0.5) would win:
    # 0.5093 against 0.5100. On the 88 windows after row 1100, which the champion never saw, the
    # challenger (w=0.7) wins clearly: 0.5146 against 0.5788, and beats persistence (0.5582).
    root, _ = small
    champion_seen = recorded(root, test_fraction=0.0825)
    assert champion_seen["validated_until"] == str(pd.Timestamp(small_frame["timestamp"][1100]).isoformat())
    verdict, client, name, (v1, v2) = gate(Blend(0.5), champion_seen, Blend(0.7))

    unseen = np.arange(1101, 1200 - HORIZON + 1)  # origins whose first target is after row 1100
    assert (verdict.held_out, verdict.unseen, verdict.unit) == (169, len(unseen), "windows") == (169, 88, "windows")
    first, last = (pd.Timestamp(small_frame["timestamp"][i]) for i in (unseen[0], unseen[-1]))
    assert verdict.scored_on == (f"88 of 169 test windows, origins {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}; "
                                 "81 left out: a compared version trained or validated on their targets")  # fmt: skip
    assert verdict.challenger_score == pytest.approx(rmse_by_hand(small_frame, unseen, 0.7), abs=1e-5)
    assert verdict.champion_score == pytest.approx(rmse_by_hand(small_frame, unseen, 0.5), abs=1e-5)
    assert verdict.improvement == pytest.approx(1 - verdict.challenger_score / verdict.champion_score, abs=1e-5)
    assert verdict.improvement > 0.1 and verdict.min_improvement == 0.01
    # The baselines are scored on the same 88 windows, not taken from evaluate's 169.
    assert verdict.best_baseline == "persistence"
    assert verdict.baseline_score == pytest.approx(rmse_by_hand(small_frame, unseen, None), abs=1e-5)
    assert verdict.promoted and verdict.reason.startswith("wins: rmse 0.5146 vs champion 0.5788")
    tags = client.get_model_version(name, str(v2)).tags
    assert tags["gate.unseen"] == "88" and tags["gate.scored_on"] == verdict.scored_on

    # Scored on every test window instead, the champion would have stayed: the choice of windows decides.
    every = np.arange(1020, 1200 - HORIZON + 1)
    assert rmse_by_hand(small_frame, every, 0.5) < rmse_by_hand(small_frame, every, 0.7)


@pytest.mark.integration
def test_too_few_windows_new_to_the_champion_promote_nothing(gate, small):
    from lstmops.registry.trail import champion_version

    root, _ = small
    # Validated until row 1187 (its own test span: the 12 rows of one horizon): of the challenger's
    # 169 test windows only the last (origin 1188) is new to it.
    champion_seen = recorded(root, test_fraction=0.01)
    verdict, client, name, (v1, _) = gate(Blend(0.5), champion_seen, Blend(0.7), min_unseen=10)
    assert (verdict.held_out, verdict.unseen) == (169, 1) and verdict.scored_on.startswith("1 of 169 test windows")
    assert not verdict.passed and not verdict.promoted and "\n" not in verdict.reason
    assert verdict.reason == ("too few test windows are new to both versions (neither trained nor validated on them): "
                              "1, fewer than promote.min_unseen=10; nothing promoted")  # fmt: skip
    assert champion_version(client, name) == v1

    # A champion that saw past the last window's targets leaves none: nothing is scored at all.
    everything = {**champion_seen, "validated_until": "2099-01-01T00:00:00"}
    verdict, *_ = gate(Blend(0.5), everything, Blend(0.7), min_unseen=10)
    assert (verdict.unseen, verdict.challenger_score, verdict.champion_score) == (0, None, None)
    assert verdict.scored_on.startswith("none of 169 test windows") and not verdict.promoted


@pytest.mark.integration
def test_a_champion_that_records_nothing_blocks_the_promotion_unless_forced(gate):
    verdict, *_ = gate(Blend(0.5), None, Blend(0.7))
    assert not verdict.promoted
    assert "records nothing of what it trained on (no seen.* tags)" in verdict.reason and "--force" in verdict.reason
    assert verdict.unseen == 169  # only the challenger's own record: its whole test span


# --- classify and charlm: what the gate scores when a version saw part of the test data ------------------


def prepared_pipeline(tmp_path: Path, small_frame, name: str, overrides: list[str]):
    from lstmops import config, stages

    root = make_project(tmp_path / "project", small_frame) / "pipelines" / name
    cfg = config.load(root, overrides)
    for stage in ("ingest", "validate", "prepare"):
        stages.RUNNERS[stage](cfg, root)
    return root, cfg


def test_classify_scores_only_sequences_no_version_fitted_and_the_baselines_on_them(tmp_path, small_frame):
    from lstmops.tasks.classify.sequences import SequencesPrepared
    from lstmops.tasks.classify.task import gate_inputs, seen, sequence_hash

    root, cfg = prepared_pipeline(tmp_path, small_frame, "classify", [])
    meta = SequencesPrepared.load(root / "data/prepared")
    test = meta.indices("test")
    metrics = {"test": {"majority": {"error_rate": 0.5}, "summary_logreg": {"error_rate": 0.5}}}
    own = gate_inputs(cfg, root, metrics, [seen(cfg, root)])
    assert (own.held_out, own.unseen, own.scored_on) == (45, 45, "45 of 45 test sequences")
    assert own.baselines == {"majority": 0.5, "summary_logreg": 0.5}  # nothing left out: evaluate's figures

    # Another version trained on the first ten test sequences (its split drew them for training).
    champion = {"sequences": " ".join(sequence_hash(meta.ids[i]) for i in test[:10])}
    fair = gate_inputs(cfg, root, metrics, [seen(cfg, root), champion])
    assert (fair.held_out, fair.unseen) == (45, 35)
    assert fair.scored_on == "35 of 45 test sequences; 10 left out: a compared version trained or validated on them"
    labels = np.asarray(meta.labels)
    majority = np.bincount(labels[meta.indices("train")]).argmax()
    assert fair.baselines["majority"] == pytest.approx(np.mean(labels[test[10:]] != majority))  # on the same 35


def test_charlm_scores_only_text_no_version_fitted_and_the_baselines_on_it(tmp_path, small_frame):
    from lstmops.tasks.charlm.ngram import unigram_bits
    from lstmops.tasks.charlm.task import file_hash, gate_inputs, seen
    from lstmops.tasks.charlm.text import TextPrepared, load_tokens, read_snapshot

    root, cfg = prepared_pipeline(tmp_path, small_frame, "charlm", ["charlm.min_chars=1000", "charlm.ngram_order=3"])
    meta = TextPrepared.load(root / "data/prepared")
    (text,) = read_snapshot(root / "data/raw/snapshot.parquet")[1]
    metrics = {"test": {"unigram": {"bpc": 9.0}, "ngram_3": {"bpc": 9.0}}}
    own = gate_inputs(cfg, root, metrics, [seen(cfg, root)])
    held = meta.length - meta.val_end
    assert (own.held_out, own.unseen) == (held - 1, held - 1) and own.baselines == {"unigram": 9.0, "ngram_3": 9.0}

    # Another version read 1,000 characters further into the same file.
    champion = {"chars": f"{file_hash(text)}:0-{meta.val_end + 1000}"}
    fair = gate_inputs(cfg, root, metrics, [seen(cfg, root), champion])
    assert (fair.held_out, fair.unseen) == (held - 1, held - 1000 - 1)
    assert fair.scored_on == (f"{held - 1001:,} predicted characters in 1 run(s) of the {held:,}-character test span; "
                              "1,000 left out: a compared version trained or validated on them")  # fmt: skip
    ids = load_tokens(root / "data/prepared").astype(np.int64)
    by_hand = unigram_bits(ids[: meta.train_end], ids[meta.val_end + 1001 :], len(meta.vocab))
    assert fair.baselines["unigram"] == pytest.approx(by_hand)
