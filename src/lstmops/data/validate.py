"""Validate: a Great Expectations 1.x suite generated from params, run on the snapshot.

Checks: required columns exist, features are numeric, no nulls in the columns used,
timestamps unique and strictly increasing at the declared frequency, values within bounds,
robust z-score outliers, and drift against the last accepted snapshot (its profile: columns,
dtypes, means and standard deviations, saved when a validation passes).
A failure raises ``ValidationFailed`` with one line per failed expectation (column, count,
a few offending rows); the JSON results are written either way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lstmops.config import DataConfig
from lstmops.errors import DataError, ValidationFailed, row_label
from lstmops.io import atomic_path, read_json, write_json
from lstmops.paths import ACCEPTED_PROFILE

# dtype names GX sees for pandas numeric columns (pandas 3 nullable ones included).
NUMERIC_TYPES = [
    "float64", "float32", "float16", "Float64", "Float32",
    "int64", "int32", "int16", "int8", "Int64", "Int32", "Int16", "Int8",
    "uint64", "uint32", "uint16", "uint8", "UInt64", "UInt32", "UInt16", "UInt8", "bool",
]  # fmt: skip
EXAMPLES = 3  # offending rows quoted per failed expectation
ACCEPT_HINT = f" (if intended, delete {ACCEPTED_PROFILE} to accept the new layout)"
FINITE = sys.float_info.max
ROBUST_Z = "__robust_z"  # suffix of the derived robust z-score column of a feature


def step_column(cfg: DataConfig) -> str:
    """Name of the derived column holding the time step (seconds) from the previous row."""
    return f"{cfg.time_column}__step_seconds"


def profile(frame: pd.DataFrame) -> dict[str, Any]:
    """What drift is judged against: every column's dtype, and mean/std of the numeric ones."""
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    return {
        "rows": len(frame),
        "dtypes": {str(c): str(frame[c].dtype) for c in frame.columns},
        "stats": {str(c): {"mean": float(frame[c].mean()), "std": float(frame[c].std())} for c in numeric},
    }


def drift_expectations(cfg: DataConfig, frame: pd.DataFrame, reference: dict[str, Any], derived: list[str]) -> list[Any]:
    """The accepted snapshot's columns and dtypes must not change; each numeric column's mean
    must stay within ``drift_threshold`` reference standard deviations and its standard deviation
    within that fraction of the reference. ``derived``: the helper columns validation adds."""
    import great_expectations.expectations as gxe

    before = reference["dtypes"]
    suite: list[Any] = [gxe.ExpectTableColumnsToMatchSet(column_set=[*before, *derived], exact_match=True)]
    suite += [gxe.ExpectColumnValuesToBeOfType(column=c, type_=before[c]) for c in frame.columns if c in before]
    if cfg.drift_threshold is None:
        return suite
    t = cfg.drift_threshold
    for column, stats in reference["stats"].items():
        if column in frame.columns and str(frame[column].dtype) == before[column]:
            mean, std = stats["mean"], stats["std"]
            suite += [
                gxe.ExpectColumnMeanToBeBetween(column=column, min_value=mean - t * std, max_value=mean + t * std),
                gxe.ExpectColumnStdevToBeBetween(column=column, min_value=std * (1 - t), max_value=std * (1 + t)),
            ]
    return suite


def build_expectations(
    cfg: DataConfig, frame: pd.DataFrame, reference: dict[str, Any] | None = None, derived: list[str] | None = None
) -> list[Any]:
    """The suite for this config. Column-level checks only target columns that exist and have a
    usable type, so a missing or mistyped column yields one clear failure, not a cascade."""
    import great_expectations.expectations as gxe

    required = [cfg.time_column, *cfg.features]
    present = [c for c in required if c in frame.columns]
    numeric = [c for c in cfg.features if c in present and pd.api.types.is_numeric_dtype(frame[c])]
    expected_step = pd.Timedelta(cfg.frequency).total_seconds()

    suite: list[Any] = [gxe.ExpectColumnToExist(column=c) for c in required]
    suite += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=NUMERIC_TYPES) for c in cfg.features if c in present]
    suite += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in present]
    if cfg.time_column in present:
        suite += [
            gxe.ExpectColumnValuesToBeUnique(column=cfg.time_column),
            gxe.ExpectColumnValuesToBeIncreasing(column=cfg.time_column, strictly=True),
            gxe.ExpectColumnValuesToBeInSet(column=step_column(cfg), value_set=[expected_step]),
        ]
    for column in numeric:
        # Declared bounds, or at least finite values: inf would poison the scaler.
        low, high = cfg.bounds.get(column, (-FINITE, FINITE))
        suite.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high))
        if cfg.outlier_z is not None:
            suite.append(gxe.ExpectColumnValuesToBeBetween(
                column=robust_z_column(column), max_value=cfg.outlier_z, mostly=1 - cfg.outlier_max_share,
            ))  # fmt: skip
    if reference is not None:
        suite += drift_expectations(cfg, frame, reference, derived or [])
    return suite


def robust_z_column(column: str) -> str:
    return f"{column}{ROBUST_Z}"


def robust_z(values: pd.Series) -> pd.Series:
    """|x - median| / (1.4826 * MAD): a z-score that a few outliers cannot mask."""
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    median = numeric.median()
    mad = 1.4826 * (numeric - median).abs().median()
    return (numeric - median).abs() / (mad if mad > 0 else 1.0)


def check_name(check: dict[str, Any], cfg: DataConfig) -> str:
    """The name a user gives in ``data.warn_only`` for this check."""
    column = check["column"] or ""
    if column.endswith(ROBUST_Z):
        return "outliers"
    return {
        "expect_column_to_exist": "columns",
        "expect_column_values_to_be_in_type_list": "types",
        "expect_column_values_to_not_be_null": "nulls",
        "expect_column_values_to_be_unique": "unique",
        "expect_column_values_to_be_increasing": "increasing",
        "expect_column_values_to_be_in_set": "frequency",
        "expect_column_values_to_be_between": "bounds",
        "expect_table_columns_to_match_set": "drift_columns",
        "expect_column_values_to_be_of_type": "drift_dtypes",
        "expect_column_mean_to_be_between": "drift_stats",
        "expect_column_stdev_to_be_between": "drift_stats",
    }.get(check["expectation"], check["expectation"])


def run_suite(frame: pd.DataFrame, expectations: list[Any]) -> Any:
    """Run expectations on an in-memory frame with an ephemeral (file-less) GX context."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        ctx.data_sources.add_pandas("lstmops")
        .add_dataframe_asset("snapshot")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name="lstmops", expectations=expectations))
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name="lstmops", data=batch, suite=suite))
    return definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")


def _examples(frame: pd.DataFrame, column: str, rows: list[int]) -> str:
    source = column if column in frame.columns else None
    parts = []
    for pos in rows[:EXAMPLES]:
        value = frame[source].iloc[pos] if source else None
        value = value.item() if hasattr(value, "item") else value  # numpy scalar -> plain repr
        parts.append(f"{row_label(pos)} ({value!r})" if source else row_label(pos))
    return ", ".join(parts)


def _non_numeric_rows(series: pd.Series) -> list[int]:
    coerced = pd.to_numeric(series, errors="coerce")
    return list((coerced.isna() & series.notna()).to_numpy().nonzero()[0])


def _statistic(observed: str | None) -> float | None:
    """A statistic GX observed, or None: an infinite or missing value in the column leaves GX with
    no number (``None``) or a non-finite one, which a message must not try to format."""
    try:
        value = float(observed) if observed is not None else float("nan")
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def describe(cfg: DataConfig, frame: pd.DataFrame, check: dict[str, Any]) -> str:
    """One human line for one failed check."""
    if check.get("detail") is not None:  # a task's own rule (``rule``) words its failure itself
        return check["detail"]
    kind, column, count, rows = check["expectation"], check["column"], check["unexpected_count"], check["rows"]
    shown_column = cfg.time_column if column == step_column(cfg) else column
    where = _examples(frame, shown_column, rows)
    if kind == "expect_column_to_exist":
        return f"column {column!r}: required column is missing (columns: {', '.join(map(str, frame.columns))})"
    if column and column.endswith(ROBUST_Z):
        source = column.removesuffix(ROBUST_Z)
        share = f"{100 * cfg.outlier_max_share:g}%"
        return (
            f"column {source!r}: {count} value(s) with robust z-score above {cfg.outlier_z:g} "
            f"(at most {share} allowed): {_examples(frame, source, rows)}"
        )
    if kind == "expect_table_columns_to_match_set":
        changed = check["details"] or {}
        return (
            f"columns differ from the accepted snapshot: added {changed.get('unexpected', [])}, "
            f"removed {changed.get('missing', [])}{ACCEPT_HINT}"
        )
    if kind == "expect_column_values_to_be_of_type":
        return (
            f"column {column!r}: dtype {check['observed']} differs from the accepted snapshot's "
            f"{check['kwargs']['type_']}{ACCEPT_HINT}"
        )
    if kind in ("expect_column_mean_to_be_between", "expect_column_stdev_to_be_between"):
        stat = "mean" if "mean" in kind else "standard deviation"
        low, high = check["kwargs"]["min_value"], check["kwargs"]["max_value"]
        accepted = f"(accepted snapshot's value +/- data.drift_threshold={cfg.drift_threshold:g})"
        value = _statistic(check["observed"])
        if value is None:
            return f"column {column!r}: {stat} is not a number (infinite or missing values), so not in [{low:.4g}, {high:.4g}] {accepted}"
        return f"column {column!r}: {stat} {value:.4g} drifted outside [{low:.4g}, {high:.4g}] {accepted}"
    if kind == "expect_column_values_to_be_in_type_list":
        bad = _non_numeric_rows(frame[column])
        hint = f"; e.g. {_examples(frame, column, bad)}" if bad else ""
        return f"column {column!r}: expected numbers, found dtype {check['observed']}{hint}"
    what = {
        "expect_column_values_to_not_be_null": "null value(s)",
        "expect_column_values_to_be_unique": "duplicated timestamp(s)",
        "expect_column_values_to_be_increasing": "timestamp(s) not after the previous row",
        "expect_column_values_to_be_in_set": f"step(s) from the previous row differ from {cfg.frequency}",
        "expect_column_values_to_be_between": "infinite value(s)"
        if check["kwargs"].get("max_value") == FINITE
        else "value(s) outside [{min_value}, {max_value}]",
    }.get(kind, kind).format(**check["kwargs"])
    return f"column {shown_column!r}: {count} {what}: {where}"


def rule(name: str, column: str | None, success: bool, detail: str) -> dict[str, Any]:
    """A check that is not a GX expectation (a task's rule on the whole series, e.g. its length),
    shaped like ``summarize``'s, so the report, ``data.warn_only`` and the registry read both alike."""
    return {"expectation": name, "column": column, "kwargs": {}, "success": success, "unexpected_count": 0,
            "rows": [], "observed": None, "details": None, "detail": detail}  # fmt: skip


def summarize(result: Any) -> list[dict[str, Any]]:
    """Flatten GX results into plain dicts (the JSON report), in a stable order."""
    checks = []
    for r in result.results:
        kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id",)}
        rows = [int(i) for i in r.result.get("unexpected_index_list") or []]
        checks.append({
            "expectation": r.expectation_config.type,
            "column": kwargs.get("column"),
            "kwargs": {k: v for k, v in kwargs.items() if k != "column"},
            "success": bool(r.success),
            "unexpected_count": int(r.result.get("unexpected_count") or 0),
            "rows": rows[:20],
            "observed": str(r.result["observed_value"]) if "observed_value" in r.result else None,
            "details": (r.result.get("details") or {}).get("mismatched"),
        })  # fmt: skip
    return sorted(checks, key=lambda c: (c["column"] or "", c["expectation"]))


def validate_frame(
    cfg: DataConfig, frame: pd.DataFrame, reference: dict[str, Any] | None = None,
    rules: Callable[[pd.DataFrame], list[dict[str, Any]]] | None = None,
) -> tuple[list[dict[str, Any]], list[str], list[str]]:  # fmt: skip
    """Run the suite (with drift checks against ``reference``, a ``profile``, if given) and the
    task's ``rules`` (frame -> ``rule`` checks); return (checks, error lines, warning lines). Each
    failed check is an error unless its name is in ``data.warn_only``."""
    if frame.empty:
        raise DataError("the snapshot has no data rows")
    frame = frame.reset_index(drop=True)
    derived = frame.copy()
    if cfg.time_column in frame.columns:
        times = pd.to_datetime(frame[cfg.time_column])
        steps = times.diff().dt.total_seconds()
        if cfg.gaps == "segment":
            # A gap of whole steps starts a new segment: it has no previous step to check (null,
            # which the frequency expectation skips, as for the first row). Off-grid steps still fail.
            expected = pd.Timedelta(cfg.frequency).total_seconds()
            steps = steps.mask((steps > expected) & (steps % expected == 0))
        derived[step_column(cfg)] = steps
    if cfg.outlier_z is not None:
        for column in cfg.features:
            if column in frame.columns and pd.api.types.is_numeric_dtype(frame[column]):
                derived[robust_z_column(column)] = robust_z(frame[column])
    added = [c for c in derived.columns if c not in frame.columns]
    checks = summarize(run_suite(derived, build_expectations(cfg, frame, reference, added)))
    checks += rules(frame) if rules is not None else []
    errors, warnings = [], []
    for check in checks:
        check["check"] = check_name(check, cfg)
        check["severity"] = "warning" if check["check"] in cfg.warn_only else "error"
        if not check["success"]:
            (warnings if check["severity"] == "warning" else errors).append(describe(cfg, frame, check))
    return checks, errors, warnings


def validate(
    cfg: DataConfig, frame: pd.DataFrame, report: Path, label: str, accepted: Path | None = None, accept: bool = True,
    cleaning: dict[str, int] | None = None, rules: Callable[[pd.DataFrame], list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Validate a frame; write the JSON report and its HTML view (``report`` with .html);
    raise ``ValidationFailed`` on any failure. ``accepted`` is the profile of the last accepted
    snapshot: drift is judged against it when it exists, and a passing frame replaces it if
    ``accept`` (a standalone check of some other file does not). ``cleaning``: what ingest's
    cleaning policies changed (``clean.py``), reported beside the checks. ``rules``: the task's
    checks of the whole series (``validate_frame``)."""
    reference = read_json(accepted) if accepted is not None and accepted.exists() else None
    checks, failures, warnings = validate_frame(cfg, frame, reference, rules)
    for line in warnings:
        print(f"warning: {label}: {line}", file=sys.stderr)
    summary = {"source": label, "rows": len(frame), "success": not failures, "failed": failures,
               "warnings": warnings, "drift_reference": str(accepted) if reference else None, "checks": checks}  # fmt: skip
    if cleaning is not None:
        from lstmops.data.clean import describe as describe_cleaning

        summary["cleaning"] = cleaning
        summary["cleaning_summary"] = describe_cleaning(cleaning, cfg)
    write_json(report, summary)
    with atomic_path(report.with_suffix(".html")) as tmp:
        tmp.write_text(render_html(summary))
    if failures:
        raise ValidationFailed([f"{label}: {line}" for line in failures])
    if accepted is not None and accept:
        write_json(accepted, profile(frame))
    return checks


def cleaning_section(summary: dict[str, Any]) -> str:
    """What ingest's cleaning policies changed, before validation saw the data ('' if none was on)."""
    from html import escape

    if "cleaning" not in summary:
        return ""
    items = "".join(f"<li>{escape(part)}</li>" for part in summary["cleaning_summary"].split("; ") if part)
    counts = ", ".join(f"{escape(k)}={v:,}" for k, v in summary["cleaning"].items())
    items = items or "<li>nothing changed</li>"
    return f"<h2>Cleaning before validation</h2><ul>{items}</ul><p><code>{counts}</code></p>"


def render_html(summary: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no CDN): verdict, failed checks first, then the rest."""
    from html import escape

    def row(check: dict[str, Any]) -> str:
        state = "pass" if check["success"] else ("warn" if check.get("severity") == "warning" else "FAIL")
        rows = ", ".join(str(r + 1) for r in check["rows"][:EXAMPLES]) or ""
        args = ", ".join(f"{k}={v}" for k, v in check["kwargs"].items() if v is not None)
        return (
            f'<tr class="{state.lower()}"><td>{state}</td><td>{escape(str(check["column"]))}</td>'
            f"<td>{escape(check['expectation'])}</td><td>{escape(args)}</td>"
            f"<td>{check['unexpected_count']}</td><td>{rows}</td></tr>"
        )

    ordered = sorted(summary["checks"], key=lambda c: (c["success"], c.get("severity") == "warning"))
    verdict = "PASSED" if summary["success"] else f"FAILED ({len(summary['failed'])} checks)"
    failed = "".join(f"<li>{escape(line)}</li>" for line in summary["failed"])
    failed += "".join(f"<li>warning: {escape(line)}</li>" for line in summary.get("warnings", []))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Validation: {escape(summary['source'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
tr.fail{{background:#fdd}}tr.warn{{background:#ffd}}tr.pass{{background:#efe}}h1 span{{color:{'#070' if summary['success'] else '#b00'}}}</style></head>
<body><h1>Validation <span>{verdict}</span></h1>
<p>Source: <code>{escape(summary['source'])}</code>, {summary['rows']:,} rows. Rows are counted from 1 at the first data row.
Drift judged against: {escape(summary.get('drift_reference') or 'nothing (no accepted snapshot yet)')}.</p>
<ul>{failed}</ul>
{cleaning_section(summary)}
<table><tr><th>result</th><th>column</th><th>expectation</th><th>arguments</th><th>unexpected</th><th>example rows</th></tr>
{''.join(row(c) for c in ordered)}</table></body></html>
"""
