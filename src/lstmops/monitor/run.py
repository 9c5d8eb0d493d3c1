"""``lstmops monitor``: score the stored forecasts against the actuals that have arrived, beside
the naive forecasts on the same origins; measure input drift; apply the decay rule; write the
report, the Prometheus textfile and MLflow metrics; announce a decay (``events.py``).

A run whose evidence (the scored days, per-step errors, drift, champion) equals the last run's
changes nothing: no file is rewritten, no metric logged, no event sent. The last report is kept in
the forecasts store too (``monitor/model=NAME/monitor.json``), so a flow run in a fresh clone
knows what was already scored, logged and announced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lstmops.config import Config
from lstmops.errors import ServiceUnavailable
from lstmops.io import read_json, write_json
from lstmops.monitor.report import HTML_FILE, JSON_FILE, PROM_FILE, REPORT_DIR


@dataclass(frozen=True)
class Registered:
    """What the registry knows about the champion that the monitor needs."""

    name: str
    version: int
    run_id: str
    error: float | None  # its test error at registration, in the rule's metric
    trained_rows: int | None  # rows of the snapshot it was trained on (drift's reference span)


def registered_champion(client, name: str, metric: str) -> Registered:
    """The champion's version, its registration-time error (tag ``test_<metric>``) and the rows
    of the data it was trained on (the MLflow dataset input of its run)."""
    from mlflow.exceptions import MlflowException

    from lstmops.errors import LstmopsError

    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except MlflowException as exc:
        raise LstmopsError(f"models:/{name}@champion: no champion to monitor ({str(exc).splitlines()[0]})") from None
    error = mv.tags.get(f"test_{metric}")
    rows = None
    try:
        for entry in client.get_run(mv.run_id).inputs.dataset_inputs:
            rows = json.loads(entry.dataset.profile or "{}").get("num_rows", rows)
    except (MlflowException, ValueError):
        rows = None  # drift then compares with the training span of the data as it is now
    return Registered(name, int(mv.version), mv.run_id, float(error) if error else None, rows)


def state_key(model: str) -> str:
    """The last report, kept in the store: a flow run that works in a fresh clone finds it there."""
    from urllib.parse import quote

    return f"monitor/model={quote(model, safe='')}/monitor.json"


def last_report(store, model: str, local: Path) -> dict:
    """The previous run's report: the store's copy, else the pipeline's reports/monitor/ (none: {})."""
    key = state_key(model)
    if store.exists(key):
        return json.loads(store.get(key))
    return read_json(local) if local.is_file() else {}


def evidence_digest(report: dict) -> str:
    keys = ("model", "champion_version", "registered", "days", "steps", "drift", "rule")
    return hashlib.sha256(json.dumps({k: report[k] for k in keys}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rounded(frame, columns: tuple[str, ...] = ("rmse", "mae")) -> list[dict]:
    out = frame.copy()
    for column in columns:
        out[column] = out[column].round(6)
    if "origin" in out:
        out["origin"] = out["origin"].astype(str)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in out.to_dict("records")]


def monitor(cfg: Config, root: Path) -> str:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from lstmops.monitor import decay, drift, report, score
    from lstmops.monitor.events import announce
    from lstmops.monitor.predict import forecasting_task
    from lstmops.monitor.store import open_store, read_forecasts
    from lstmops.tracking import configure

    task = forecasting_task(cfg, root, "monitor")
    settings = cfg.monitor  # type: ignore[attr-defined]
    rule = settings.rule
    store = open_store(settings.store, root)
    configure(root, cfg.mlflow.experiment)
    client = MlflowClient()
    champion = registered_champion(client, cfg.model_name, rule.metric)
    observed = task.observe(cfg, root)
    newest = observed.actuals.index[-1]

    # Origins whose horizon may have arrived within the report's days (a horizon of up to a week).
    since = newest - pd.Timedelta(days=settings.days + 7)
    scored = score.realized(read_forecasts(store, champion.name, since), observed.actuals)
    origins = sorted(scored.origin.unique())[-settings.days :]
    scored = scored[scored.origin.isin(origins)]
    horizon = int(scored.step.max()) if len(scored) else 0
    baselines = observed.baselines(pd.DatetimeIndex(origins), horizon) if origins else pd.DataFrame()
    frame = score.long_form(scored, baselines)
    days, steps = score.by_day(frame), score.by_step(frame)

    judged = []
    for origin, group in days[days.version == champion.version].groupby("origin", sort=True):
        errors = dict(zip(group.forecaster, group[rule.metric], strict=True))
        own = errors.pop(score.MODEL, None)
        if own is not None:
            judged.append(decay.judge(str(origin), round(float(own), 6), {k: round(float(v), 6) for k, v in errors.items()},
                                      champion.error, rule))  # fmt: skip

    reference = observed.reference(champion.trained_rows)
    drifted = drift.drift(reference, drift.newest_days(observed.features, settings.drift.days), settings.drift)

    out = root / REPORT_DIR
    previous = last_report(store, champion.name, out / JSON_FILE)
    last_fired = dict(previous.get("decay", {}).get("last_fired", {}))
    decision = decay.decide(judged, rule, last_fired.get(str(champion.version)))
    result = {
        "model": champion.name, "champion_version": champion.version,
        "registered": {"metric": rule.metric, "value": champion.error, "trained_rows": champion.trained_rows},
        "newest_data": str(newest), "store": store.location, "rule": rule.model_dump(mode="json"),
        "days": rounded(days), "steps": rounded(steps), "champion_days": [asdict(d) for d in judged],
        "drift": drifted, "drift_days": settings.drift.days,
    }  # fmt: skip
    result["evidence"] = evidence_digest(result)
    who = f"{champion.name} version {champion.version}"
    if previous.get("evidence") == result["evidence"]:
        return f"monitor: {who}: nothing new since the last run ({REPORT_DIR / JSON_FILE} unchanged)"

    # MLflow first, then the event, then the files: a failure before the files are written leaves
    # the last run's report in place, so the next run does (and announces) this one's work again.
    logged = dict(previous.get("logged_through", {}))
    result_for_mlflow = {**result, "decay": decision.as_dict()}
    try:
        count = report.log_mlflow(client, champion.run_id, result_for_mlflow, logged.get(str(champion.version)))
    except Exception as exc:
        raise ServiceUnavailable(f"MLflow: cannot log the monitor's metrics on run {champion.run_id} ({exc})") from None
    if judged:
        logged[str(champion.version)] = judged[-1].origin
    lines = []
    if decision.fired:
        lines.append(announce(settings.on_decay, settings.deployment, root, champion.name, champion.version, decision.reason))
        last_fired[str(champion.version)] = decision.last_origin
    result["decay"] = {**decision.as_dict(), "last_fired": last_fired}
    result["logged_through"] = logged
    store.put(state_key(champion.name), json.dumps(result, indent=2, sort_keys=True).encode() + b"\n")
    write_json(out / JSON_FILE, result)
    from lstmops.io import atomic_path

    with atomic_path(out / HTML_FILE) as tmp:
        tmp.write_text(report.render_html(result))
    report.prometheus(result, out / PROM_FILE)

    scored_days = len(judged)
    latest = judged[-1] if judged else None
    drifting = sorted(name for name, d in drifted.items() if d["drifted"])
    head = (f"monitor: {who}: {scored_days} scored day(s)"
            + (f", newest {latest.origin}: {rule.metric} {latest.error:.4g} vs {latest.best_baseline} {latest.baseline_error:.4g}"
               if latest is not None and latest.best_baseline else ""))  # fmt: skip
    rule_line = f"  rule: {'FIRED: ' if decision.fired else ''}{decision.reason}"
    drift_line = f"  drift ({settings.drift.test}, newest {settings.drift.days} days): " + (", ".join(drifting) or "none")
    files = f"  -> {REPORT_DIR}/{{{JSON_FILE},{HTML_FILE},{PROM_FILE}}}; {count} MLflow metric(s) on run {champion.run_id}"
    return "\n".join([head, rule_line, drift_line, *(f"  {line}" for line in lines), files])
