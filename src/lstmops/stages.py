"""The seven pipeline stages, each reading its declared inputs and writing its declared outputs
(the paths in ``paths.py`` and ``dvc.yaml``). The CLI calls these; ``dvc repro`` calls the CLI;
the Prefect flow calls ``dvc repro``. Logic lives in the modules they call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from lstmops import paths
from lstmops.config import Config, flatten
from lstmops.io import read_json, write_json

STAGES = ("ingest", "validate", "prepare", "train", "evaluate", "export", "register", "gate")


def ingest(cfg: Config, root: Path) -> str:
    from lstmops.data.ingest import ingest as run

    snapshot = run(cfg.data, root, root / paths.SNAPSHOT)
    filled = snapshot.filled_rows
    note = f" (resampled to {cfg.data.frequency}: {filled} missing rows filled)" if filled is not None else ""
    shape = f"{snapshot.rows:,} rows x {snapshot.columns} columns"
    return f"ingested {shape} from {cfg.data.source} -> {paths.SNAPSHOT}{note}"


def validate(cfg: Config, root: Path, data: str | None = None) -> str:
    """Validate the snapshot, or with ``data`` any file or s3:// source, standalone."""
    import pandas as pd

    from lstmops.data.ingest import load_frame
    from lstmops.data.validate import validate as run

    if data is None:
        frame, label, report = pd.read_parquet(root / paths.SNAPSHOT), cfg.data.source, paths.VALIDATION
    else:
        frame = load_frame(cfg.data, data, root)
        label, report = data, paths.VALIDATION.with_name(f"validation-{Path(data).stem or 'data'}.json")
    # Only the pipeline's own snapshot becomes the accepted reference; a standalone check does not.
    checks = run(cfg.data, frame, root / report, label, root / paths.ACCEPTED_PROFILE, accept=data is None)
    return f"validation passed: {len(checks)} expectations -> {report} (and .html)"


def prepare(cfg: Config, root: Path) -> str:
    from lstmops.data.prepare import prepare as run

    meta = run(cfg, root / paths.SNAPSHOT, root / paths.PREPARED)
    s = meta.split
    return (
        f"prepared {s.length:,} rows: train {s.train_end:,}, validation {s.val_end - s.train_end:,}, "
        f"test {s.length - s.val_end:,} (scaler fitted on train) -> {paths.PREPARED}"
    )


def _mlflow_run(cfg: Config, root: Path, run_id: str | None = None):
    import mlflow

    from lstmops.tracking import configure

    configure(root, cfg.mlflow.experiment)
    return mlflow.start_run(run_id=run_id)


def train(cfg: Config, root: Path) -> str:
    import mlflow

    from lstmops import distributed
    from lstmops.train import fit, resolve_device

    world = distributed.init(resolve_device(cfg.train.device))
    if not world.is_main:
        # Under torchrun, ranks other than 0 train their shards; rank 0 logs and writes.
        fit(cfg, root / paths.PREPARED, root / paths.CHECKPOINT, state_path=root / paths.TRAIN_STATE)
        return f"rank {world.rank} done"

    # A killed run resumes from its saved state, and its metrics continue in the same MLflow run.
    unfinished = (root / paths.TRAIN_STATE).is_file() and (root / paths.TRAIN_RUN).is_file()
    resumed_run = read_json(root / paths.TRAIN_RUN) if unfinished else None
    with _mlflow_run(cfg, root, resumed_run and resumed_run["run_id"]) as run:
        if resumed_run is None:
            mlflow.log_params(flatten(cfg.model_dump(mode="json")))
            mlflow.log_artifact(str(root / "params.yaml"))
            write_json(root / paths.TRAIN_RUN, {"run_id": run.info.run_id})
        history, summary = fit(
            cfg, root / paths.PREPARED, root / paths.CHECKPOINT, state_path=root / paths.TRAIN_STATE,
            log_metrics=lambda row, step: mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=step),
        )  # fmt: skip
        (root / paths.TRAIN_RUN).unlink(missing_ok=True)
        (root / paths.HISTORY).parent.mkdir(parents=True, exist_ok=True)
        (root / paths.HISTORY).write_text(history.to_csv())
        mlflow.log_artifact(str(root / paths.CHECKPOINT), "checkpoint")
        for report in (paths.VALIDATION, paths.VALIDATION.with_suffix(".html")):
            if (root / report).is_file():
                mlflow.log_artifact(str(root / report), "validation")
        mlflow.log_artifact(str(root / paths.HISTORY))
        mlflow.set_tag("stage", "trained")
        write_json(root / paths.TRAIN_SUMMARY, {**summary, "run_id": run.info.run_id})
    return (
        f"trained {summary['epochs_run']} epochs ({summary['mode']} mode) in {summary['fit_seconds']} s on "
        f"{summary['device']}, {summary['windows_per_s']:,} windows/s; "
        f"best epoch {summary['best_epoch']} -> {paths.CHECKPOINT} (MLflow run {run.info.run_id})"
    )


def _load_eval_inputs(cfg: Config, root: Path):
    import numpy as np
    import pandas as pd

    from lstmops.data.prepare import Prepared
    from lstmops.train import load_model

    meta = Prepared.load(root / paths.PREPARED)
    series = np.load(root / paths.SERIES)
    raw_target = pd.read_parquet(root / paths.SNAPSHOT, columns=[cfg.data.target])[cfg.data.target].to_numpy(np.float64)
    model, _ = load_model(root / paths.CHECKPOINT)
    return meta, series, raw_target, model


def evaluate(cfg: Config, root: Path) -> str:
    import mlflow

    from lstmops.evaluate import evaluate as run, skill, write_plots

    meta, series, raw_target, model = _load_eval_inputs(cfg, root)
    test_origins, actual, forecasts, overall, per_step = run(model, meta, series, raw_target, cfg.evaluate.seasonal_periods)
    reference = next(iter(cfg.evaluate.seasonal_periods))
    metrics = {"test": overall, "test_windows": len(test_origins), "horizon": meta.horizon, "target": meta.target,
               f"skill_vs_{reference}": skill(overall, reference)}  # fmt: skip
    write_json(root / paths.METRICS, metrics)
    per_step.to_csv(root / paths.PER_STEP, index=False, float_format="%.6g")
    plots = write_plots(root / paths.PLOTS, meta, test_origins, actual, forecasts, per_step, cfg.evaluate.plot_days)
    with _mlflow_run(cfg, root, read_json(root / paths.TRAIN_SUMMARY)["run_id"]) as run:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        by_step = [Metric("test_lstm_rmse_by_step", float(r.rmse), now, int(r.step))
                   for r in per_step[per_step.forecaster == "lstm"].itertuples()]  # fmt: skip
        mlflow.log_metrics({f"test_{name}_{m}": v for name, ms in overall.items() for m, v in ms.items()})
        mlflow.MlflowClient().log_batch(run.info.run_id, metrics=by_step)  # one request, not one per step
        for path in [root / paths.METRICS, root / paths.PER_STEP, *plots]:
            mlflow.log_artifact(str(path), "evaluation")
    return format_metrics(overall, meta.target)


def format_metrics(overall: dict[str, dict[str, float]], target: str) -> str:
    """A small table: one row per forecaster, test metrics in original units."""
    lines = [f"test metrics ({target}, original units)", f"  {'forecaster':<22}{'RMSE':>9}{'MAE':>9}{'MAPE%':>8}{'R2':>8}"]
    for name, m in overall.items():
        lines.append(f"  {name:<22}{m['rmse']:>9.4f}{m['mae']:>9.4f}{m['mape']:>8.2f}{m['r2']:>8.3f}")
    return "\n".join(lines)


def _signature(n_features: int, horizon: int):
    """Tensor signature with batch and history length free (-1): any history length works."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, n_features))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, horizon))]),
    )


def export(cfg: Config, root: Path) -> str:
    import mlflow
    import torch

    from lstmops.export import export as run

    meta, series, _, model = _load_eval_inputs(cfg, root)
    check = run(model, meta, series, root / paths.TORCHSCRIPT)
    with _mlflow_run(cfg, root, read_json(root / paths.TRAIN_SUMMARY)["run_id"]) as mlflow_run:
        mlflow.log_artifact(str(root / paths.TORCHSCRIPT), "torchscript")
        info = mlflow.pytorch.log_model(
            torch.jit.load(str(root / paths.TORCHSCRIPT)), name="model", serialization_format="pickle",
            signature=_signature(len(meta.features), meta.horizon),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata={"features": meta.features, "target": meta.target, "input_steps": meta.input_steps,
                      "horizon": meta.horizon, "frequency": meta.frequency},
        )  # fmt: skip
        mlflow.log_metric("export_max_abs_diff", check["max_abs_diff"])
    write_json(root / paths.EXPORT_SUMMARY, {
        **check, "model_uri": info.model_uri, "run_id": mlflow_run.info.run_id, "torchscript": str(paths.TORCHSCRIPT),
        "features": meta.features, "input_steps": meta.input_steps, "horizon": meta.horizon,
    })  # fmt: skip
    return (
        f"exported {paths.TORCHSCRIPT} (max |TorchScript - eager| = {check['max_abs_diff']:.2e} "
        f"on {check['checked_windows']} test windows)"
    )


def register(cfg: Config, root: Path) -> str:
    """A new version with lineage, aliased ``challenger``; the gate decides about ``champion``."""
    from lstmops.io import md5_file
    from lstmops.registry.register import lineage_tags, log_lineage, register as run, validation_verdict

    exported = read_json(root / paths.EXPORT_SUMMARY)
    lstm = read_json(root / paths.METRICS)["test"]["lstm"]
    data_md5 = md5_file(root / paths.SNAPSHOT)
    verdict = validation_verdict(read_json(root / paths.VALIDATION))
    tags = lineage_tags(root, data_md5, cfg.model_dump(mode="json"), lstm, verdict)
    with _mlflow_run(cfg, root, exported["run_id"]):
        log_lineage(root, root / paths.SNAPSHOT, data_md5, cfg.data.source, [root / "dvc.lock", root / "params.yaml"])
        entry = run(exported["model_uri"], cfg.mlflow.model_name, exported["run_id"], tags)
    write_json(root / paths.REGISTERED, entry)
    return f"registered {entry['name']} version {entry['version']} (alias: challenger until the gate decides)"


def gate(cfg: Config, root: Path, force: bool = False) -> str:
    """Score the new version against the champion on the newest test windows; promote if it wins.

    ``LSTMOPS_FORCE_PROMOTION=1`` forces too: it is how the flow's ``force`` reaches this stage,
    whether it runs in the flow's process or as ``lstmops gate`` started by ``dvc repro``.
    """
    import os

    force = force or os.environ.get("LSTMOPS_FORCE_PROMOTION") == "1"
    from dataclasses import asdict

    import numpy as np
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from lstmops.data.prepare import Prepared
    from lstmops.data.windows import origins
    from lstmops.export import TOLERANCE
    from lstmops.io import md5_file
    from lstmops.registry.gate import run_gate
    from lstmops.registry.register import validation_verdict
    from lstmops.tracking import configure

    configure(root, cfg.mlflow.experiment)
    registered, exported = read_json(root / paths.REGISTERED), read_json(root / paths.EXPORT_SUMMARY)
    meta = Prepared.load(root / paths.PREPARED)
    raw = pd.read_parquet(root / paths.SNAPSHOT, columns=meta.features).to_numpy(np.float32)

    verdict = run_gate(
        MlflowClient(), registered["name"], registered["version"], root / paths.TORCHSCRIPT, raw,
        meta.target_index, meta.features, meta.input_steps, meta.horizon,
        origins(meta.split, "test", meta.input_steps, meta.horizon), read_json(root / paths.METRICS),
        validation_verdict(read_json(root / paths.VALIDATION)), exported["max_abs_diff"] <= TOLERANCE,
        md5_file(root / paths.SNAPSHOT),
        cfg.promote.metric, cfg.promote.min_improvement, force,
    )  # fmt: skip
    write_json(root / paths.GATE, asdict(verdict))
    action = "promoted to champion" if verdict.promoted else ("stays champion" if verdict.passed else "not promoted")
    return f"gate: {registered['name']} version {registered['version']} {action}: {verdict.reason}"


RUNNERS: dict[str, Callable[[Config, Path], str]] = {
    "ingest": ingest, "validate": validate, "prepare": prepare, "train": train,
    "evaluate": evaluate, "export": export, "register": register, "gate": gate,
}  # fmt: skip
