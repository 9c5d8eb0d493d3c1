"""Long-format sequence data for the classify task: ingest (source -> snapshot), validate, prepare
(split by sequence + scaling).

The counterpart of ``ingest.py``, ``validate.py`` and ``prepare.py`` for data with one row per
sequence per step: a sequence-id column, a step column that orders each sequence's rows, feature
columns and a label column (one value per sequence), optionally a column naming a predefined
train/test split. The whole table is held in memory: the prepared sequences are, for training.

- ingest: the source's files (the forecaster's block readers: CSV or Parquet, a file, a
  directory, a glob or ``s3://``) narrowed to the named columns; ids, labels and split as text,
  ISO timestamps in the step column parsed; written as a Parquet snapshot whose bytes depend only
  on the data.
- validate: one check per rule, each failure one line naming the sequence, column and row; a
  JSON + HTML report with the class counts.
- prepare: sequences ordered by step, split by sequence (stratified, seeded), features scaled
  with statistics of the training sequences only; ``values.npy`` (rows x features, the
  sequences one after another) plus ``meta.json``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lstmops.tasks.classify.settings import ClassifyConfig
from lstmops.data.check_report import check_rows, publish, verdict
from lstmops.errors import DataError, row_label
from lstmops.io import atomic_dir, atomic_path, read_json, write_json

SPLITS = ("train", "test")  # the values a predefined split column may hold
EXAMPLES = 3  # sequences or rows named in a message before "..."
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass(frozen=True)
class SequenceSnapshot:
    """What ingest wrote."""

    rows: int
    sequences: int


def columns_of(cfg: ClassifyConfig) -> list[str]:
    """The snapshot's columns, in order: sequence, step, features, label, [split]."""
    split = [cfg.split_column] if cfg.split_column is not None else []
    return [cfg.sequence_column, cfg.step_column, *cfg.features, cfg.label_column, *split]


def text_columns(cfg: ClassifyConfig) -> list[str]:
    """Columns compared as text: an id 7 in one partition and "7" in another are one sequence."""
    return [c for c in (cfg.sequence_column, cfg.label_column, cfg.split_column) if c is not None]


# --- ingest -------------------------------------------------------------------------------------


def _read_file(path: Path, label: str, cfg: ClassifyConfig) -> pa.Table:
    """One file's named columns, read in blocks by the forecaster's readers."""
    from lstmops.data.ingest import BATCH_ROWS, BLOCK_BYTES, read_blocks

    schema, blocks = read_blocks(path, label, {c: pa.string() for c in text_columns(cfg)}, BLOCK_BYTES, BATCH_ROWS)
    missing = [c for c in columns_of(cfg) if c not in schema.names]
    if missing:
        names = ", ".join(schema.names)
        hint = " - wrong delimiter? expected ','" if len(schema.names) == 1 and any(d in names for d in ";\t|") else ""
        raise DataError(f"{label}: column {missing[0]!r} not found (columns: {names}){hint}")
    wanted = columns_of(cfg)
    narrowed = pa.schema([schema.field(c) for c in wanted])
    table = pa.Table.from_batches([b.select(wanted) for b in blocks], schema=narrowed)
    for column in text_columns(cfg):  # Parquet keeps its own types: ids and labels become text here
        index = table.schema.get_field_index(column)
        if table.schema.field(column).type != pa.string():
            table = table.set_column(index, column, pc.cast(table.column(column), pa.string()))
    return table


def _parse_steps(table: pa.Table, column: str, label: str) -> pa.Table:
    """Steps must order rows: numbers as they are; text (the readers leave dates as text) parsed
    as ISO timestamps, a value that is neither failing with its row."""
    kind = table.schema.field(column).type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind) or pa.types.is_null(kind):
        return table
    raw = table.column(column).to_pandas()
    parsed = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=True)
    bad = parsed.isna() & raw.notna()
    if bad.any():
        pos = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{label}: column {column!r}, {row_label(pos)}: {raw.iloc[pos]!r} is neither a number nor a timestamp"
        )
    return table.set_column(table.schema.get_field_index(column), column, pa.Array.from_pandas(parsed))


def write_snapshot(table: pa.Table, path: Path) -> None:
    """Parquet with every option fixed and no pandas metadata: equal data gives equal bytes."""
    with atomic_path(path) as tmp:
        pq.write_table(
            table.replace_schema_metadata(), tmp, compression="zstd", compression_level=3,
            use_dictionary=False, write_statistics=False, row_group_size=max(1, table.num_rows),
        )  # fmt: skip


def ingest_sequences(cfg: ClassifyConfig, root: Path, out: Path) -> SequenceSnapshot:
    """Read ``cfg.source`` (a file, a directory, a glob or s3:// key / prefix) into the snapshot at
    ``out``, replaced only once every file was read. Partitions are stacked in name order."""
    from lstmops.data.sources import source_files

    with source_files(cfg.source, root) as files:
        tables = [_read_file(path, label, cfg) for path, label in files]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        reason = str(exc).splitlines()[0]
        raise DataError(f"{cfg.source}: the partitions' columns have different types ({reason})") from None
    if table.num_rows == 0:
        raise DataError(f"{cfg.source}: no data rows (header only)")
    table = _parse_steps(table, cfg.step_column, cfg.source)
    write_snapshot(table, out)
    return SequenceSnapshot(rows=table.num_rows, sequences=len(pc.unique(table.column(cfg.sequence_column))))


def read_snapshot(snapshot: Path, cfg: ClassifyConfig) -> pd.DataFrame:
    if not Path(snapshot).is_file():
        raise DataError(f"{snapshot}: sequence snapshot not found (run ingest first)")
    try:
        return pq.read_table(snapshot, columns=columns_of(cfg)).to_pandas()
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise DataError(
            f"{snapshot}: not a snapshot with the columns {columns_of(cfg)} ({exc}); run ingest again"
        ) from None


# --- validate -----------------------------------------------------------------------------------


def _names(items: list[str]) -> str:
    """A few quoted names, then how many more."""
    shown = ", ".join(f"{item!r}" for item in items[:EXAMPLES])
    return shown + (f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else "")


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    """A check as the other validations report one (``success``), so the registry reads all alike."""
    return {"check": name, "success": passed, "detail": detail}


def natural_order(labels: list[str]) -> list[str]:
    """Class names in a stable order: numerically when every name is a number ("2" before "10")."""
    if labels and all(NUMBER.match(label) for label in labels):
        return sorted(labels, key=float)
    return sorted(labels)


def _empty_check(frame: pd.DataFrame, cfg: ClassifyConfig, empty: pd.Series) -> dict[str, Any]:
    """An empty sequence, in long format: an id whose rows carry no step, i.e. no observation (a
    placeholder row for a recording that holds nothing). It has length 0: not "too short", but no
    data at all, so it is reported on its own and left out of every other check."""
    ids = list(empty[empty].index)
    if not ids:
        return _check("empty_sequences", True, "every sequence has at least one step")
    first = {s: int(frame.index[frame[cfg.sequence_column] == s][0]) for s in ids[:EXAMPLES]}
    where = ", ".join(f"{s!r} ({row_label(r)})" for s, r in first.items())
    where += f" and {len(ids) - EXAMPLES} more" if len(ids) > EXAMPLES else ""
    detail = f"{len(ids)} empty sequence(s), whose rows have no {cfg.step_column!r}: {where}"
    return _check("empty_sequences", False, detail)


def _step_check(rows: pd.DataFrame, cfg: ClassifyConfig) -> dict[str, Any]:
    seq, step = cfg.sequence_column, cfg.step_column
    missing = rows[rows[step].isna()]
    if len(missing):
        first = missing.index[0]
        return _check("steps", False, f"sequence {missing[seq].iloc[0]!r}: {len(missing)} row(s) without a {step!r}, "
                      f"the first at {row_label(first)}")  # fmt: skip
    twice = rows[rows.duplicated([seq, step], keep=False)]
    if len(twice):
        s, value = twice[seq].iloc[0], twice[step].iloc[0]
        at = twice.index[(twice[seq] == s) & (twice[step] == value)][:2]
        detail = f"sequence {s!r}: {step!r} {value} appears twice ({row_label(at[0])}, {row_label(at[1])})"
        return _check("steps", False, detail)
    return _check("steps", True, f"every row has a {step!r}, unique within its sequence")


def _feature_checks(rows: pd.DataFrame, cfg: ClassifyConfig) -> list[dict[str, Any]]:
    """Features numeric, then no nulls and no infinities (they would poison the scaler)."""
    checks = []
    for column in cfg.features:
        values = rows[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            numbers = pd.to_numeric(values, errors="coerce")
            bad = values[numbers.isna() & values.notna()]
            example = f": {bad.iloc[0]!r} at {row_label(bad.index[0])}" if len(bad) else f" (type {values.dtype})"
            checks.append(_check("numeric_features", False, f"column {column!r} is not numeric{example}"))
            continue
        bad = ~np.isfinite(values.to_numpy(np.float64))
        if bad.any():
            first = rows.index[bad][0]
            detail = (f"column {column!r}: {int(bad.sum())} null or infinite value(s), the first at {row_label(first)} "
                      f"(sequence {rows.at[first, cfg.sequence_column]!r})")  # fmt: skip
            checks.append(_check("feature_nulls", False, detail))
    if not checks:
        checks.append(_check("feature_nulls", True, f"{len(cfg.features)} numeric feature(s), no nulls or infinities"))
    return checks


def _label_check(rows: pd.DataFrame, cfg: ClassifyConfig) -> dict[str, Any]:
    seq, label = cfg.sequence_column, cfg.label_column
    unlabelled = rows[rows[label].isna()]
    if len(unlabelled):
        detail = (f"sequence {unlabelled[seq].iloc[0]!r}: {len(unlabelled)} row(s) without a {label!r}, the first at "
                  f"{row_label(unlabelled.index[0])}; every row carries its sequence's label")  # fmt: skip
        return _check("one_label", False, detail)
    counts = rows.groupby(seq, sort=False)[label].nunique()
    several = counts[counts > 1]
    if len(several):
        s = several.index[0]
        mine = rows[rows[seq] == s].drop_duplicates(label)
        found = ", ".join(f"{v!r} at {row_label(i)}" for i, v in zip(mine.index, mine[label]))
        more = f" ({len(several)} such sequences)" if len(several) > 1 else ""
        detail = f"sequence {s!r} has {len(mine)} labels in {label!r} ({found}); a sequence has exactly one{more}"
        return _check("one_label", False, detail)
    return _check("one_label", True, f"every sequence has exactly one {label!r}")


def _length_check(lengths: pd.Series, cfg: ClassifyConfig) -> dict[str, Any]:
    long, short = lengths[lengths > cfg.max_length], lengths[lengths < cfg.min_length]
    if len(long):
        return _check("lengths", False, f"{len(long)} sequence(s) longer than classify.max_length={cfg.max_length}: "
                      f"{long.index[0]!r} has {int(long.iloc[0])} steps")  # fmt: skip
    if len(short):
        return _check("lengths", False, f"{len(short)} sequence(s) shorter than classify.min_length={cfg.min_length}: "
                      f"{short.index[0]!r} has {int(short.iloc[0])} step(s)")  # fmt: skip
    return _check("lengths", True, f"{int(lengths.min())} to {int(lengths.max())} steps, within "
                  f"classify.min_length={cfg.min_length}..max_length={cfg.max_length}")  # fmt: skip


def _split_checks(
    rows: pd.DataFrame, cfg: ClassifyConfig, labels: pd.Series
) -> tuple[list[dict[str, Any]], pd.Series | None]:
    """The predefined split: train/test values, one per sequence, both present, and no label that
    only the test split has (the model could never predict it). Returns the split per sequence."""
    column, seq = cfg.split_column, cfg.sequence_column
    if column is None:
        detail = "no predefined split: the stratified carve keeps every class in training"
        return [_check("train_classes", True, detail)], None
    odd = rows[~rows[column].isin(SPLITS)]
    if len(odd):
        value = odd[column].iloc[0]
        shown = "an empty value" if pd.isna(value) else repr(value)
        detail = f"column {column!r}: {shown} at {row_label(odd.index[0])}; expected train or test"
        return [_check("split_values", False, detail)], None
    both = rows.groupby(seq, sort=False)[column].nunique()
    if (both > 1).any():
        detail = f"sequence {both[both > 1].index[0]!r} has rows in both splits (column {column!r})"
        return [_check("split_values", False, detail)], None
    split = rows.groupby(seq, sort=False)[column].first()
    absent = [s for s in SPLITS if not (split == s).any()]
    if absent:
        return [_check("split_values", False, f"column {column!r} has no {absent[0]!r} sequences")], None
    checks = [_check("split_values", True, f"column {column!r}: {int((split == 'train').sum())} train and "
                     f"{int((split == 'test').sum())} test sequences")]  # fmt: skip
    trained = set(labels[split == "train"])
    unseen = [c for c in natural_order(sorted(set(labels))) if c not in trained]
    if unseen:
        holders = list(labels[labels == unseen[0]].index)
        detail = (f"label {unseen[0]!r} appears only in the test split ({len(holders)} sequence(s): {_names(holders)}); "
                  "the model cannot learn a class it never trains on")  # fmt: skip
        checks.append(_check("train_classes", False, detail))
    else:
        checks.append(_check("train_classes", True, f"all {len(trained)} classes have training sequences"))
    return checks, split


def sequence_checks(frame: pd.DataFrame, cfg: ClassifyConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(checks, counts) of a snapshot. Every rule is one check whose failure is one line; a rule
    that cannot be judged because an earlier one failed (lengths of sequences with duplicate steps)
    is still judged on what there is, so a single defect gives a single failed check."""
    seq, step = cfg.sequence_column, cfg.step_column
    checks = []
    no_id = frame[frame[seq].isna()]
    checks.append(_check("sequence_ids", no_id.empty, f"every row has a {seq!r}" if no_id.empty else
                         f"{len(no_id)} row(s) without a {seq!r}, the first at {row_label(no_id.index[0])}"))  # fmt: skip
    frame = frame[frame[seq].notna()]
    empty = frame[step].isna().groupby(frame[seq], sort=False).all()
    checks.append(_empty_check(frame, cfg, empty))
    rows = frame[~frame[seq].isin(set(empty[empty].index))]
    checks.append(_step_check(rows, cfg))
    checks += _feature_checks(rows, cfg)
    checks.append(_label_check(rows, cfg))
    lengths = rows[rows[step].notna()].groupby(seq, sort=False).size()
    if len(lengths):
        checks.append(_length_check(lengths, cfg))
    labels = rows.groupby(seq, sort=False)[cfg.label_column].first()
    split_checks, split = _split_checks(rows, cfg, labels)
    checks += split_checks
    counts = profile(labels, lengths, split, len(frame), int(empty.sum()))
    return checks, counts


def profile(labels: pd.Series, lengths: pd.Series, split: pd.Series | None, rows: int, empty: int) -> dict[str, Any]:
    """What the report shows: rows, sequences, lengths and the class counts (per split)."""
    classes = natural_order(sorted(labels.dropna().unique()))
    per_class: dict[str, dict[str, int]] = {}
    for name in classes:
        mine = labels == name
        per_class[name] = {"all": int(mine.sum())}
        if split is not None:
            per_class[name].update({s: int((mine & (split.reindex(labels.index) == s)).sum()) for s in SPLITS})
    return {
        "rows": rows, "sequences": int(len(labels)), "empty_sequences": empty, "classes": per_class,
        "length": None if not len(lengths) else
                  {"min": int(lengths.min()), "median": float(lengths.median()), "max": int(lengths.max())},
    }  # fmt: skip


def validate_sequences(cfg: ClassifyConfig, snapshot: Path, report: Path, label: str) -> list[dict[str, Any]]:
    """Check the snapshot; write the JSON report and its HTML view, then raise ``ValidationFailed``
    (one line per failed check, prefixed by ``label``) on a failure.

    Great Expectations is not used: its expectations judge a table row by row, while most rules
    here are about groups of rows (one label per sequence, its length, a class that only the test
    split has), and the messages must name the sequence."""
    frame = read_snapshot(snapshot, cfg)
    checks, counts = sequence_checks(frame, cfg)
    return publish(report, label, checks, counts, render_html)


def render_html(summary: dict[str, Any]) -> str:
    """A self-contained page: verdict, checks (failed first), the class counts and lengths."""
    from html import escape

    counts = summary["counts"]
    rows = check_rows(summary["checks"])
    splits = sorted({k for v in counts["classes"].values() for k in v if k != "all"}, key=lambda s: SPLITS.index(s))
    head = "".join(f"<th>{s}</th>" for s in ["class", "sequences", *splits])
    classes = "".join(
        f"<tr><td>{escape(name)}</td><td>{n['all']}</td>{''.join(f'<td>{n[s]}</td>' for s in splits)}</tr>"
        for name, n in counts["classes"].items()
    )
    length = counts["length"]
    lengths = f"{length['min']} to {length['max']} steps (median {length['median']:g})" if length else "no steps"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Sequence validation: {escape(summary["source"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #ccc;padding:4px 8px}}
tr.fail{{background:#fdd}}tr.pass{{background:#efe}}h1 span{{color:{"#070" if summary["success"] else "#b00"}}}</style></head>
<body><h1>Sequence validation <span>{verdict(summary)}</span></h1>
<p>Source: <code>{escape(summary["source"])}</code>: {counts["rows"]:,} rows, {counts["sequences"]:,} sequences
({counts["empty_sequences"]} empty), {lengths}. Rows are counted from 1 at the first data row.</p>
<table><tr><th>result</th><th>check</th><th>detail</th></tr>{rows}</table>
<table><tr>{head}</tr>{classes}</table></body></html>
"""


# --- prepare ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequencesPrepared:
    """The prepared sequences: sequence ``i`` is ``values[offsets[i] : offsets[i] + lengths[i]]``
    (scaled, in step order), of class ``classes[labels[i]]``, in split ``split[i]``."""

    features: list[str]
    classes: list[str]
    mean: list[float]
    std: list[float]
    ids: list[str]
    offsets: list[int]
    lengths: list[int]
    labels: list[int]
    split: list[str]  # train | val | test
    split_from: str  # how the test split was chosen, for the summary

    @classmethod
    def load(cls, directory: Path) -> SequencesPrepared:
        meta = Path(directory) / "meta.json"
        if not meta.is_file():
            raise DataError(f"{meta}: prepared sequences not found (run prepare first)")
        return cls(**read_json(meta))

    def indices(self, part: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.split) == part)

    def count(self, part: str) -> int:
        return int(np.count_nonzero(np.asarray(self.split) == part))


def load_values(directory: Path) -> np.ndarray:
    """Every sequence's scaled rows, one sequence after another (float32, rows x features)."""
    return np.load(Path(directory) / "values.npy")


def stratified_carve(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A mask of the sequences carved out: ``round(fraction * n)`` of each class's ``n``, drawn at
    random, always leaving at least one of each class behind (a class must stay trainable)."""
    carved = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(int(round(fraction * len(members))), len(members) - 1)
        carved[rng.permutation(members)[:take]] = True
    return carved


def assign_splits(labels: np.ndarray, predefined: np.ndarray | None, cfg: ClassifyConfig, seed: int) -> np.ndarray:
    """train | val | test per sequence. The test split is the predefined one when given, else a
    stratified carve of ``test_fraction``; validation is then a stratified carve of the training
    sequences. One generator, seeded, draws both, so a seed gives one split."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    if predefined is not None:
        split[predefined == "test"] = "test"
    else:
        split[stratified_carve(labels, cfg.test_fraction, rng)] = "test"
    train = np.flatnonzero(split == "train")
    split[train[stratified_carve(labels[train], cfg.val_fraction, rng)]] = "val"
    for part, setting in (("val", "val_fraction"), ("test", "test_fraction")):
        if not (split == part).any():
            raise DataError(f"the {part} split is empty: every class has too few sequences for classify.{setting}")
    return split


def ordered(frame: pd.DataFrame, cfg: ClassifyConfig) -> tuple[pd.DataFrame, pd.Index, np.ndarray, np.ndarray]:
    """(rows sorted, sequence ids, offsets, lengths): sequences in order of first appearance, each
    one's rows by step (a stable sort); column ``_seq`` numbers the sequences."""
    order = pd.Index(pd.unique(frame[cfg.sequence_column]))
    frame = frame.assign(_seq=order.get_indexer(frame[cfg.sequence_column]))
    frame = frame.sort_values(["_seq", cfg.step_column], kind="stable")
    lengths = frame.groupby("_seq", sort=True).size().to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return frame, order, offsets, lengths


def raw_sequences(snapshot: Path, cfg: ClassifyConfig, ids: list[str]) -> list[np.ndarray]:
    """The named sequences from the snapshot in original units (float32, step order), as a client
    would send them: what the export's parity check and the gate feed the TorchScript file."""
    frame, order, offsets, lengths = ordered(read_snapshot(snapshot, cfg), cfg)
    values = frame[cfg.features].to_numpy(np.float32)
    position = {str(s): i for i, s in enumerate(order)}
    missing = [s for s in ids if s not in position]
    if missing:
        raise DataError(
            f"{snapshot}: sequence {missing[0]!r} of the prepared data is not in the snapshot (run prepare again)"
        )
    return [values[offsets[i] : offsets[i] + lengths[i]] for i in (position[s] for s in ids)]


def prepare_sequences(cfg: ClassifyConfig, snapshot: Path, out_dir: Path, seed: int) -> SequencesPrepared:
    """Order each sequence by step, split by sequence, fit the scaler on the training sequences
    only, and write ``values.npy`` and ``meta.json`` into ``out_dir`` as a whole."""
    frame, order, offsets, lengths = ordered(read_snapshot(snapshot, cfg), cfg)
    first = frame.groupby("_seq", sort=True).first()
    names = first[cfg.label_column].astype(str).to_numpy()
    predefined = first[cfg.split_column].to_numpy() if cfg.split_column is not None else None
    split = assign_splits(names, predefined, cfg, seed)
    classes = natural_order(sorted(set(names[split == "train"])))
    lookup = {c: i for i, c in enumerate(classes)}
    values = frame[cfg.features].to_numpy(np.float64)
    train_rows = np.repeat(split == "train", lengths)
    mean, std = values[train_rows].mean(axis=0), values[train_rows].std(axis=0)
    for name, m, s in zip(cfg.features, mean, std):
        if not s > 0:
            raise DataError(
                f"feature {name!r} is constant over the training sequences ({m:g}); drop it from classify.features"
            )
    prepared = SequencesPrepared(
        features=list(cfg.features), classes=classes, mean=mean.tolist(), std=std.tolist(),
        ids=[str(i) for i in order], offsets=offsets.tolist(), lengths=lengths.tolist(),
        labels=[lookup[n] for n in names], split=split.tolist(),
        split_from=(f"column {cfg.split_column!r}" if cfg.split_column is not None
                    else f"a stratified carve of {cfg.test_fraction:g}"),
    )  # fmt: skip
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "values.npy", ((values - mean) / std).astype(np.float32))
        write_json(tmp / "meta.json", asdict(prepared))
    return prepared


def scaled_sequences(prepared: SequencesPrepared, values: np.ndarray, index: np.ndarray) -> list[np.ndarray]:
    """The chosen sequences as the model trains on them (scaled, float32)."""
    return [values[prepared.offsets[i] : prepared.offsets[i] + prepared.lengths[i]] for i in index]


def pad(sequences: list[np.ndarray], n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(batch, longest, features) zero-padded array and the lengths: the artifact's input."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    out = np.zeros((len(sequences), int(lengths.max(initial=1)), n_features), dtype=np.float32)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out, lengths
