"""The monitor's outputs: ``reports/monitor/monitor.json`` (everything), ``index.html`` (the same
for a reader), ``metrics.prom`` (Prometheus textfile gauges) and MLflow metrics on the run of the
champion's version."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

REPORT_DIR = Path("reports/monitor")
JSON_FILE, HTML_FILE, PROM_FILE = "monitor.json", "index.html", "metrics.prom"


def day_number(origin: str) -> int:
    """An MLflow step per day: days since 1970-01-01."""
    return int(pd.Timestamp(origin).value // 86_400_000_000_000)


def log_mlflow(client, run_id: str, report: dict, after: str | None) -> int:
    """The champion's scored days newer than ``after`` as metrics of its version's run; how many."""
    from mlflow.entities import Metric

    metric = report["rule"]["metric"]
    registered = report["registered"]["value"]
    metrics = []
    for day in report["champion_days"]:
        if after is not None and day["origin"] <= after:
            continue
        ms, step = int(pd.Timestamp(day["origin"]).value // 1_000_000), day_number(day["origin"])
        metrics.append(Metric(f"monitor_{metric}", day["error"], ms, step))
        if day["baseline_error"] is not None:
            metrics.append(Metric(f"monitor_best_baseline_{metric}", day["baseline_error"], ms, step))
        if registered:
            metrics.append(Metric("monitor_ratio_to_registered", round(day["error"] / registered, 6), ms, step))
        metrics.append(Metric("monitor_violates", float(day["violates"]), ms, step))
    if metrics:
        last = report["champion_days"][-1]
        ms, step = int(pd.Timestamp(last["origin"]).value // 1_000_000), day_number(last["origin"])
        metrics.append(Metric("monitor_decayed", float(report["decay"]["fired"]), ms, step))
        metrics += [Metric(f"monitor_drift_{name}", d["value"], ms, step) for name, d in report["drift"].items()]
        for start in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=metrics[start : start + 900])
    return len(metrics)


def prometheus(report: dict, path: Path) -> None:
    """Gauges of the newest scored day, the rule and drift, as a node-exporter textfile."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    labels = {"model": report["model"], "version": str(report["champion_version"])}
    error = Gauge("lstmops_monitor_error", "The newest scored day's error, by forecaster",
                  ["model", "version", "forecaster", "metric"], registry=registry)  # fmt: skip
    newest = report["champion_days"][-1]["origin"] if report["champion_days"] else None
    for row in report["days"]:
        if row["origin"] == newest and row["version"] == report["champion_version"]:
            for metric in ("rmse", "mae"):
                error.labels(**labels, forecaster=row["forecaster"], metric=metric).set(row[metric])
    decay = report["decay"]
    Gauge("lstmops_monitor_decayed", "1 when the decay rule fired on this run", ["model", "version"],
          registry=registry).labels(**labels).set(float(decay["fired"]))  # fmt: skip
    Gauge("lstmops_monitor_bad_days", "Violating days among the rule's window", ["model", "version"],
          registry=registry).labels(**labels).set(decay["bad_days"])  # fmt: skip
    if newest is not None:
        Gauge("lstmops_monitor_newest_origin_seconds", "Origin of the newest scored day (Unix time)", ["model", "version"],
              registry=registry).labels(**labels).set(pd.Timestamp(newest).value / 1e9)  # fmt: skip
    drift = Gauge("lstmops_monitor_drift", "Drift of a feature against the training span", ["model", "feature", "statistic"],
                  registry=registry)  # fmt: skip
    for name, d in report["drift"].items():
        drift.labels(model=report["model"], feature=name, statistic=d["statistic"]).set(d["value"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)  # a temporary file renamed into place


def table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def render_html(report: dict) -> str:
    """One page: the verdict, the champion's days beside the naive forecasts, per-step error, drift."""
    decay, metric = report["decay"], report["rule"]["metric"]
    verdict = "DECAYED: retraining" if decay["fired"] else "healthy"
    registered = report["registered"]["value"]
    days = [[d["origin"], d["error"], d["best_baseline"], d["baseline_error"],
             None if not registered else d["error"] / registered, "yes" if d["violates"] else "", d["why"]]
            for d in report["champion_days"]]  # fmt: skip
    steps = [[s["step"], s["forecaster"], s["rmse"], s["mae"], s["n"]] for s in report["steps"]
             if s["version"] == report["champion_version"]]  # fmt: skip
    drift = [[name, d["statistic"], d["value"], "yes" if d["drifted"] else "", d["reference_mean"], d["current_mean"]]
             for name, d in report["drift"].items()]  # fmt: skip
    others = [[r["version"], r["origin"], r["forecaster"], r["rmse"], r["mae"]] for r in report["days"]
              if r["version"] != report["champion_version"]]  # fmt: skip
    title = f"{report['model']} version {report['champion_version']}: {verdict}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}th{{background:#eee}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Rule ({html.escape(metric)}): {html.escape(decay['reason'])}. Registration-time test {html.escape(metric)}:
{html.escape(fmt(registered))}. Newest data: {html.escape(report['newest_data'])}. Store: {html.escape(report['store'])}.</p>
<h2>Realized error by day (the champion's origins)</h2>
{table(["origin", f"champion {metric}", "best naive", f"its {metric}", "ratio to registration", "violates", "why"], days)}
<h2>Realized error by horizon step</h2>
{table(["step", "forecaster", "RMSE", "MAE", "origins"], steps)}
<h2>Input drift against the training span (newest {report['drift_days']} days)</h2>
{table(["feature", "statistic", "value", "drifted", "training mean", "newest mean"], drift)}
<h2>Other versions' scored days</h2>
{table(["version", "origin", "forecaster", "RMSE", "MAE"], others)}
</body></html>
"""
