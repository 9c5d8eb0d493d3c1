"""``lstmops predict``: the champion's forecasts from the pipeline's newest data, into the store.

The champion is loaded as the server loads it (``serve.loader.RegistrySource``: resolved by
alias, fetched, self-checked). A version with forecasts in the store forecasts from every origin
since its newest one (at most ``monitor.max_origins``); a version with none starts from the
latest origin. Origins already stored are left as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lstmops.config import Config
from lstmops.errors import LstmopsError, ServiceUnavailable


@dataclass(frozen=True)
class Champion:
    name: str
    version: int
    model: object  # serve.loader.Loaded
    tracking_uri: str


def load_champion(cfg: Config, root: Path) -> Champion:
    """The champion's TorchScript file through the server's loading path."""
    from lstmops.serve.loader import LoadedClassifier, RegistrySource, RegistryUnavailable
    from lstmops.tracking import configure

    uri = configure(root, cfg.mlflow.experiment)
    source = RegistrySource(f"models:/{cfg.model_name}@champion", uri)
    try:
        resolved = source.resolve()
        loaded = source.fetch(resolved)
    except RegistryUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None
    if isinstance(loaded, LoadedClassifier):
        raise LstmopsError(f"{resolved}: a classifier; lstmops predict forecasts")
    return Champion(cfg.model_name, int(resolved.rsplit("/", 1)[1]), loaded, uri)


def forecasting_task(cfg: Config, root: Path, command: str):
    """The pipeline's task, if it can forecast in batch and be monitored."""
    from lstmops.tasks import for_task
    from lstmops.tasks.base import Monitors, Predicts

    task = for_task(cfg.task)
    if not isinstance(task, Predicts) or not isinstance(task, Monitors):
        raise LstmopsError(f"lstmops {command}: the task of {root / 'params.yaml'} ({cfg.task}) makes no batch forecasts")
    return task


def predict(cfg: Config, root: Path) -> str:
    import pandas as pd

    from lstmops.monitor.sql import write_sql
    from lstmops.monitor.store import last_origin, open_store, sql_url, write_forecasts

    task = forecasting_task(cfg, root, "predict")
    settings = cfg.monitor  # type: ignore[attr-defined]  # a task that Predicts has the monitor section
    store = open_store(settings.store, root)
    champion = load_champion(cfg, root)
    after = last_origin(store, champion.name, champion.version)
    # a version new to the store starts at the latest origin: its past origins are not forecasts anyone made
    rows = task.predict(cfg, root, champion.model, after, settings.max_origins if after is not None else 1)
    who = f"{champion.name} version {champion.version}"
    if rows.empty:
        return f"predict: {who}: up to date (newest origin {after} is already in {store.location})"
    issued = pd.Timestamp.now(tz="UTC").floor("s")
    lines = []
    if settings.sql:  # first: a table that fails leaves the store as it was, so a rerun forecasts these origins again
        table_rows = rows.assign(model=champion.name, version=champion.version, issued_at=issued)
        inserted = write_sql(sql_url(settings.sql), settings.sql_table, table_rows)
        lines.append(f"  SQL table {settings.sql_table}: {inserted} row(s) inserted")
    written = write_forecasts(store, champion.name, champion.version, rows, issued)
    span = f" ({written.origins[0]} .. {written.origins[-1]})" if written.origins else ""
    lines.insert(0, f"predict: {who}: {len(written.origins)} origin(s) x {rows.step.max()} steps -> {store.location}{span}")
    if written.kept:
        lines.append(f"  {len(written.kept)} origin(s) already stored, left as they were")
    return "\n".join(lines)
