"""classify data (ingest, validate, prepare): long-format sequences, each bad input refused in one
line naming the sequence, column or row with nothing downstream written; the split by sequence
(stratified, seeded, or the predefined one honoured); scaling from the training sequences only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstmops import config, paths, stages
from lstmops.tasks.classify.settings import ClassifyConfig
from lstmops.tasks.classify.sequences import (
    SequencesPrepared,
    assign_splits,
    ingest_sequences,
    load_values,
    natural_order,
    prepare_sequences,
    raw_sequences,
    validate_sequences,
)
from lstmops.errors import DataError, LstmopsError, ValidationFailed

from .conftest import REPO, small_vowels

FEATURES = [f"lpc{i}" for i in range(1, 13)]
SOURCE = "data/source/sequences.csv"


def config_for(source: str = SOURCE, **changes) -> ClassifyConfig:
    return ClassifyConfig(**{
        "source": source, "sequence_column": "utterance", "step_column": "step", "features": FEATURES,
        "label_column": "speaker", "split_column": "split", "min_length": 2, "max_length": 30, **changes,
    })  # fmt: skip


@pytest.fixture(scope="module")
def vowels() -> pd.DataFrame:
    return small_vowels()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A pipeline directory with the repo's classify params.yaml."""
    (tmp_path / "data" / "source").mkdir(parents=True)
    shutil.copy(REPO / "pipelines" / "classify" / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def overrides(**changes) -> list[str]:
    base = {"classify.source": SOURCE, "classify.max_length": 30}
    return [f"{k}={v}" for k, v in {**base, **changes}.items()]


def run_until_failure(root: Path, frame: pd.DataFrame, **changes) -> LstmopsError:
    """Run ingest, validate and prepare on ``frame``; return the error of the stage that refused."""
    frame.to_csv(root / SOURCE, index=False)
    cfg = config.load(root, overrides(**changes))
    with pytest.raises(LstmopsError) as err:
        for stage in (stages.ingest, stages.validate, stages.prepare):
            stage(cfg, root)
    return err.value


def one_line(error: LstmopsError) -> str:
    lines = error.lines if isinstance(error, ValidationFailed) else str(error).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def utterance_rows(frame: pd.DataFrame, utterance: int) -> pd.Index:
    return frame.index[frame.utterance == utterance]


# --- ingest and a passing validation --------------------------------------------------------------


def test_ingest_keeps_the_named_columns_as_text_ids_and_labels_and_validation_reports_class_counts(root, vowels):
    vowels.assign(extra="ignored").to_csv(root / SOURCE, index=False)
    cfg = config_for()
    snap = ingest_sequences(cfg, root, root / paths.SNAPSHOT)
    assert (snap.rows, snap.sequences) == (len(vowels), vowels.utterance.nunique())
    table = pd.read_parquet(root / paths.SNAPSHOT)
    assert list(table.columns) == ["utterance", "step", *FEATURES, "speaker", "split"]
    assert table.utterance.iloc[0] == "1" and table.speaker.iloc[0] == "1"  # compared as text

    validate_sequences(cfg, root / paths.SNAPSHOT, root / paths.VALIDATION, SOURCE)
    report = pd.read_json(root / paths.VALIDATION, typ="series")
    assert report["success"] and report["counts"]["sequences"] == 90
    assert report["counts"]["classes"]["3"] == {"all": 10, "train": 5, "test": 5}
    assert "<td>3</td><td>10</td><td>5</td><td>5</td>" in (root / paths.VALIDATION).with_suffix(".html").read_text()


def test_ingest_reads_parquet_and_partitions_and_refuses_a_missing_column_in_one_line(root, vowels):
    (root / "parts").mkdir()
    half = vowels.utterance.isin(vowels.utterance.unique()[:40])
    vowels[half].to_parquet(root / "parts" / "a.parquet", index=False)
    vowels[~half].to_csv(root / "parts" / "b.csv", index=False)
    snap = ingest_sequences(config_for("parts"), root, root / paths.SNAPSHOT)
    assert snap.sequences == 90 and snap.rows == len(vowels)

    vowels.drop(columns="speaker").to_csv(root / SOURCE, index=False)
    with pytest.raises(DataError) as err:
        ingest_sequences(config_for(), root, root / "other.parquet")
    assert str(err.value).startswith(f"{SOURCE}: column 'speaker' not found (columns: split, utterance, step, lpc1,")
    assert not (root / "other.parquet").exists()


def test_iso_timestamps_order_the_steps_and_a_value_that_is_neither_fails_naming_its_row(root):
    frame = pd.DataFrame({
        "utterance": [1, 1, 2, 2], "step": ["2024-01-01T00:00:02", "2024-01-01T00:00:01", "2024-01-02", "2024-01-03"],
        **{f: [0.0, 1.0, 2.0, 3.0] for f in FEATURES}, "speaker": ["a", "a", "b", "b"], "split": ["train"] * 4,
    })  # fmt: skip
    frame.to_csv(root / SOURCE, index=False)
    ingest_sequences(config_for(), root, root / paths.SNAPSHOT)
    assert str(pd.read_parquet(root / paths.SNAPSHOT).step.dtype).startswith("datetime64")
    frame.loc[3, "step"] = "soon"
    frame.to_csv(root / SOURCE, index=False)
    with pytest.raises(DataError, match=r"column 'step', row 4: 'soon' is neither a number nor a timestamp"):
        ingest_sequences(config_for(), root, root / paths.SNAPSHOT)


# --- the bad inputs: one line each, nothing downstream ------------------------------------------


def two_labels(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[utterance_rows(frame, 2)[-1], "speaker"] = 7
    return frame


def test_a_sequence_with_two_labels_is_refused_in_one_line_naming_it_and_both_rows(root, vowels):
    frame = two_labels(vowels)
    rows = utterance_rows(frame, 2)
    error = run_until_failure(root, frame)
    assert isinstance(error, ValidationFailed)
    assert one_line(error) == (
        f"{SOURCE}: sequence '2' has 2 labels in 'speaker' ('1' at row {rows[0] + 1}, '7' at row {rows[-1] + 1}); "
        "a sequence has exactly one"
    )
    assert not (root / paths.ACCEPTED_PROFILE).exists() and not (root / paths.PREPARED).exists()
    assert (root / paths.VALIDATION).is_file()  # the report says why


def test_a_label_seen_only_in_the_test_split_is_refused(root, vowels):
    frame = vowels.copy()
    test_utterances = frame[frame.split == "test"].utterance.unique()[:2]
    frame.loc[frame.utterance.isin(test_utterances), "speaker"] = 10
    error = run_until_failure(root, frame)
    assert one_line(error) == (
        f"{SOURCE}: label '10' appears only in the test split (2 sequence(s): "
        f"'{test_utterances[0]}', '{test_utterances[1]}'); the model cannot learn a class it never trains on"
    )
    assert not (root / paths.ACCEPTED_PROFILE).exists() and not (root / paths.PREPARED).exists()


def test_an_empty_sequence_is_refused_on_its_own_not_as_too_short(root, vowels):
    # In long format a sequence with no observation is a placeholder row: its id, no step and no values.
    placeholder = pd.DataFrame([{"split": "train", "utterance": 999, "speaker": 1}])
    frame = pd.concat([vowels, placeholder], ignore_index=True)
    error = run_until_failure(root, frame)
    assert one_line(error) == f"{SOURCE}: 1 empty sequence(s), whose rows have no 'step': '999' (row {len(vowels) + 1})"
    assert not (root / paths.ACCEPTED_PROFILE).exists() and not (root / paths.PREPARED).exists()


def test_a_sequence_longer_than_the_bound_is_refused(root, vowels):
    error = run_until_failure(root, vowels, **{"classify.max_length": 20})
    longest = vowels.groupby("utterance").size()
    first = longest[longest > 20].index[0]
    assert one_line(error) == (
        f"{SOURCE}: {int((longest > 20).sum())} sequence(s) longer than classify.max_length=20: "
        f"'{first}' has {longest[first]} steps"
    )
    assert not (root / paths.ACCEPTED_PROFILE).exists() and not (root / paths.PREPARED).exists()


def test_a_sequence_shorter_than_the_bound_is_refused(root, vowels):
    shortest = int(vowels.groupby("utterance").size().min())
    error = run_until_failure(root, vowels, **{"classify.min_length": shortest + 1})
    assert f"shorter than classify.min_length={shortest + 1}: '" in one_line(error)


def test_a_null_feature_value_is_refused_naming_column_row_and_sequence(root, vowels):
    frame = vowels.copy()
    frame.loc[40, "lpc5"] = np.nan
    error = run_until_failure(root, frame)
    assert one_line(error) == (
        f"{SOURCE}: column 'lpc5': 1 null or infinite value(s), the first at row 41 (sequence '{frame.utterance[40]}')"
    )
    assert not (root / paths.ACCEPTED_PROFILE).exists() and not (root / paths.PREPARED).exists()


def test_duplicate_steps_and_odd_split_values_are_refused(root, vowels):
    frame = vowels.copy()
    frame.loc[1, "step"] = 0
    assert one_line(run_until_failure(root, frame)) == f"{SOURCE}: sequence '1': 'step' 0 appears twice (row 1, row 2)"
    frame = vowels.copy()
    frame.loc[3, "split"] = "validation"
    assert one_line(run_until_failure(root, frame)) == f"{SOURCE}: column 'split': 'validation' at row 4; expected train or test"


def test_a_non_numeric_feature_is_refused(root, vowels):
    frame = vowels.astype({"lpc2": object})
    frame.loc[5, "lpc2"] = "n/a?"
    assert one_line(run_until_failure(root, frame)) == f"{SOURCE}: column 'lpc2' is not numeric: 'n/a?' at row 6"


# --- split ------------------------------------------------------------------------------------------


def test_without_a_split_column_the_test_and_validation_carves_are_stratified_and_seeded():
    labels = np.repeat(np.array(["a", "b", "c"]), [40, 20, 10])
    cfg = config_for(split_column=None, test_fraction=0.3, val_fraction=0.2)
    split = assign_splits(labels, None, cfg, seed=7)
    for name, n in (("a", 40), ("b", 20), ("c", 10)):
        mine = split[labels == name]
        assert (mine == "test").sum() == round(0.3 * n)
        assert (mine == "val").sum() == round(0.2 * (n - round(0.3 * n)))
    assert (assign_splits(labels, None, cfg, seed=7) == split).all()  # seeded: the same split again
    assert not (assign_splits(labels, None, cfg, seed=8) == split).all()


def test_a_class_with_a_single_sequence_stays_in_training():
    labels = np.array(["a"] * 10 + ["b"])
    split = assign_splits(labels, None, config_for(split_column=None), seed=0)
    assert split[-1] == "train"


def test_the_predefined_split_is_honoured_and_validation_is_carved_from_train_stratified(root, vowels):
    vowels.to_csv(root / SOURCE, index=False)
    cfg = config_for(val_fraction=0.2)
    ingest_sequences(cfg, root, root / paths.SNAPSHOT)
    p = prepare_sequences(cfg, root / paths.SNAPSHOT, root / paths.PREPARED, seed=42)
    archive = vowels.drop_duplicates("utterance").set_index("utterance").split
    split = pd.Series(p.split, index=[int(i) for i in p.ids])
    assert (split[archive == "test"] == "test").all()  # every archive test utterance is test, nothing else is
    assert set(split[archive == "train"]) == {"train", "val"}
    val_classes = pd.Series(np.array(p.labels)[np.asarray(p.split) == "val"]).value_counts()
    assert (val_classes == 1).all() and len(val_classes) == 9  # round(0.2 * 5) of each speaker
    assert p.classes == [str(i) for i in range(1, 10)]


def test_natural_order_sorts_numeric_class_names_as_numbers():
    assert natural_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert natural_order(["b", "a", "10"]) == ["10", "a", "b"]


# --- scaling ----------------------------------------------------------------------------------------


def test_the_scaler_comes_from_the_training_sequences_only(root, vowels):
    cfg = config_for()
    frame = vowels.copy()
    test = frame.split == "test"
    frame.loc[test, FEATURES] = frame.loc[test, FEATURES] * 100 + 50  # wild test values must not move the scaler
    frame.to_csv(root / SOURCE, index=False)
    ingest_sequences(cfg, root, root / paths.SNAPSHOT)
    p = prepare_sequences(cfg, root / paths.SNAPSHOT, root / paths.PREPARED, seed=42)
    train_ids = {i for i, s in zip(p.ids, p.split) if s == "train"}
    train_rows = frame[frame.utterance.astype(str).isin(train_ids)][FEATURES].to_numpy(np.float64)
    np.testing.assert_allclose(p.mean, train_rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(p.std, train_rows.std(axis=0), rtol=1e-12)
    values = load_values(root / paths.PREPARED)
    train = np.concatenate([values[o : o + n] for o, n, s in zip(p.offsets, p.lengths, p.split) if s == "train"])
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-5)


def test_prepared_sequences_are_in_step_order_and_raw_sequences_read_them_back(root, vowels):
    cfg = config_for()
    vowels.sample(frac=1, random_state=0).to_csv(root / SOURCE, index=False)  # rows shuffled
    ingest_sequences(cfg, root, root / paths.SNAPSHOT)
    p = prepare_sequences(cfg, root / paths.SNAPSHOT, root / paths.PREPARED, seed=42)
    first = vowels[vowels.utterance == int(p.ids[0])].sort_values("step")[FEATURES].to_numpy(np.float32)
    np.testing.assert_array_equal(raw_sequences(root / paths.SNAPSHOT, cfg, [p.ids[0]])[0], first)
    scaled = load_values(root / paths.PREPARED)[: p.lengths[0]]
    np.testing.assert_allclose(scaled * np.array(p.std) + np.array(p.mean), first, atol=1e-5)
    assert SequencesPrepared.load(root / paths.PREPARED) == p


def test_a_feature_constant_over_training_is_refused_at_prepare(root, vowels):
    frame = vowels.copy()
    frame.loc[frame.split == "train", "lpc4"] = 0.5
    error = run_until_failure(root, frame)
    assert one_line(error) == "feature 'lpc4' is constant over the training sequences (0.5); drop it from classify.features"
    assert not (root / paths.PREPARED).exists()


# --- s3 ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_ingest_reads_sequences_under_an_s3_prefix(root, vowels, s3_server, monkeypatch):
    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    half = vowels.utterance.isin(vowels.utterance.unique()[:45])
    for i, part in enumerate((vowels[half], vowels[~half])):
        s3.put_object(Bucket="lstmops", Key=f"vowels/part-{i}.csv", Body=part.to_csv(index=False).encode())
    snap = ingest_sequences(config_for("s3://lstmops/vowels/"), root, root / paths.SNAPSHOT)
    assert (snap.rows, snap.sequences) == (len(vowels), 90)
    with pytest.raises(DataError, match="s3://lstmops/nothing/: no .csv or .parquet objects under this prefix"):
        ingest_sequences(config_for("s3://lstmops/nothing/"), root, root / "other.parquet")
