"""The eight pipeline stages, each reading its declared inputs and writing its declared outputs
(the paths in ``paths.py`` and ``dvc.yaml``). The CLI calls these; ``dvc repro`` calls the CLI;
the Prefect flow calls ``dvc repro``. Logic lives in the modules they call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from lstmops import paths
from lstmops.config import Config, as_section_overrides, flatten
from lstmops.io import read_json, write_json

if TYPE_CHECKING:
    from lstmops.tasks.base import Task

STAGES = ("ingest", "validate", "prepare", "train", "evaluate", "backtest", "export", "register", "gate")


def task(cfg: Config) -> Task:
    """The module that implements ``cfg.task`` (see ``tasks/``)."""
    from lstmops.tasks import for_task

    return for_task(cfg.task)


def ingest(cfg: Config, root: Path) -> str:
    return task(cfg).ingest(cfg, root)


def validate(cfg: Config, root: Path, data: str | None = None) -> str:
    """Validate the snapshot, or with ``data`` any file or s3:// source, standalone.

    The snapshot's report is bound to the bytes it judged: ``data_md5`` (the hash dvc.lock records)
    goes into ``reports/validation.json``, pass or fail, and the stages that use the snapshot refuse
    it unless that report matches and passed (``require_validated``). The old report is removed
    first (as ``dvc repro`` removes a stage's outputs), so a validation that dies before writing
    one leaves none, never a stale pass."""
    if data is not None:
        return task(cfg).validate(cfg, root, data)
    from lstmops.io import md5_file

    report = root / paths.VALIDATION
    report.unlink(missing_ok=True)
    snapshot_md5 = md5_file(root / paths.SNAPSHOT) if (root / paths.SNAPSHOT).is_file() else None
    try:
        return task(cfg).validate(cfg, root, data)
    finally:
        if report.is_file() and snapshot_md5 is not None:
            write_json(report, {**read_json(report), "data_md5": snapshot_md5})


def require_validated(root: Path) -> str:
    """The snapshot's md5, if its validation report judged these very bytes and passed; else one
    line saying what to do. Every stage that trains on, registers or promotes from the snapshot
    calls it, so ``lstmops STAGE``, ``dvc repro -s STAGE`` and the flow all refuse alike."""
    from lstmops.errors import DataError
    from lstmops.io import md5_file

    snapshot, report = root / paths.SNAPSHOT, root / paths.VALIDATION
    if not snapshot.is_file():
        raise DataError(f"{_shown(snapshot)}: no snapshot; run ingest and validate first")
    if not report.is_file():
        raise DataError(f"{_shown(snapshot)} has no validation report ({_shown(report)}); run validate first")
    judged, md5 = read_json(report), md5_file(snapshot)
    if judged.get("data_md5") != md5:
        other = judged.get("data_md5") or "no hash"
        raise DataError(
            f"{_shown(report)} judged other data ({other}) than {_shown(snapshot)} (md5 {md5}); run validate again"
        )
    if not judged.get("success", False):
        failed = len(judged.get("failed") or []) or "some"
        raise DataError(
            f"{_shown(snapshot)} (md5 {md5}) failed validation ({failed} failed checks in {_shown(report)}); "
            "fix the source, then ingest and validate again"
        )
    return md5


def _shown(path: Path) -> str:
    """A path as the user can find it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def prepare(cfg: Config, root: Path) -> str:
    require_validated(root)
    return task(cfg).prepare(cfg, root)


def _mlflow_run(cfg: Config, root: Path, run_id: str | None = None):
    import mlflow

    from lstmops.tracking import configure

    configure(root, cfg.mlflow.experiment)
    return mlflow.start_run(run_id=run_id)


def train(cfg: Config, root: Path) -> str:
    from lstmops.cpus import configure_threads

    configure_threads()  # first: before torch's thread pool starts (the stage runs in a process of its own)
    import mlflow

    from lstmops import distributed
    from lstmops.train import fit, resolve_device

    require_validated(root)
    nproc = cfg.task_train.nproc_per_node
    if nproc > 1 and not distributed.launched_by_torchrun():
        # One process per GPU: torchrun runs this stage nproc times, with exactly this run's settings.
        distributed.torchrun(nproc, ["train", *(a for o in as_section_overrides(cfg) for a in ("-S", o))], root)
        return _trained(read_json(root / paths.TRAIN_SUMMARY))
    world = distributed.init(resolve_device(cfg.task_train.device))
    trainer_for = partial(task(cfg).trainer, cfg, root)
    if not world.is_main:
        # Under torchrun, ranks other than 0 train their shards; rank 0 logs and writes.
        fit(cfg, trainer_for, root / paths.CHECKPOINT, state_path=root / paths.TRAIN_STATE)
        return f"rank {world.rank} done"

    # A killed run resumes from its saved state, and its metrics continue in the same MLflow run.
    unfinished = (root / paths.TRAIN_STATE).is_file() and (root / paths.TRAIN_RUN).is_file()
    resumed_run = read_json(root / paths.TRAIN_RUN) if unfinished else None
    with _mlflow_run(cfg, root, resumed_run and resumed_run["run_id"]) as run:
        if resumed_run is None:
            mlflow.log_params(flatten(cfg.model_dump(mode="json")))
            mlflow.log_artifact(str(root / "params.yaml"))
            write_json(root / paths.TRAIN_RUN, {"run_id": run.info.run_id})
        mlflow.set_tag("task", cfg.task)
        history, summary = fit(
            cfg, trainer_for, root / paths.CHECKPOINT, state_path=root / paths.TRAIN_STATE,
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
        _log_data_counts(root, summary)
        mlflow.set_tag("stage", "trained")
        write_json(root / paths.TRAIN_SUMMARY, {**summary, "run_id": run.info.run_id})
    return _trained({**summary, "run_id": run.info.run_id})


def _trained(summary: dict) -> str:
    """The train stage's line, from its summary (``models/train.json``)."""
    mode = f" ({summary['mode']} mode)" if "mode" in summary else ""
    rate = next(f"{v:,} {k.removesuffix('_per_s')}/s" for k, v in summary.items() if k.endswith("_per_s"))
    ranks = f" x {summary['processes']} processes" if summary.get("processes", 1) > 1 else ""
    return (
        f"trained {summary['epochs_run']} epochs{mode} in {summary['fit_seconds']} s on {summary['device']}{ranks}, "
        f"{rate}; best epoch {summary['best_epoch']} -> {paths.CHECKPOINT} (MLflow run {summary['run_id']})"
    )


def _log_data_counts(root: Path, summary: dict) -> None:
    """What ingest's cleaning policies changed (the validation report's ``cleaning``) and the
    windows that segmenting kept and lost (the trainer's ``windows``), as metrics of the run."""
    import mlflow

    report = read_json(root / paths.VALIDATION) if (root / paths.VALIDATION).is_file() else {}
    counts = {f"cleaning_{k}": v for k, v in (report.get("cleaning") or {}).items()}
    counts |= {f"windows_{k}": v for k, v in (summary.get("windows") or {}).items()}
    if counts:
        mlflow.log_metrics(counts)


def evaluate(cfg: Config, root: Path) -> str:
    import mlflow
    from mlflow.entities import Metric

    done = task(cfg).evaluate(cfg, root)
    with _mlflow_run(cfg, root, read_json(root / paths.TRAIN_SUMMARY)["run_id"]) as run:
        now = int(time.time() * 1000)
        mlflow.log_metrics(done.metrics)
        series = [Metric(name, value, now, step) for name, value, step in done.series]
        if series:
            mlflow.MlflowClient().log_batch(run.info.run_id, metrics=series)  # one request, not one per step
        for path in done.files:
            mlflow.log_artifact(str(path), "evaluation")
        for where, files in done.artifacts.items():
            for path in files:
                mlflow.log_artifact(str(path), where)
    return done.summary


def backtest(cfg: Config, root: Path) -> str:
    """The rolling-origin backtest (a task that ``Backtests``): folds retrained, logged to the training run."""
    import mlflow
    from mlflow.entities import Metric

    from lstmops.tasks.base import Backtests

    runner = task(cfg)
    report = runner.backtest(cfg, root) if isinstance(runner, Backtests) else None
    if report is None:
        why = f"task {cfg.task} has no backtest" if not isinstance(runner, Backtests) else "switched off in the settings"
        write_json(root / paths.BACKTEST, {"folds": [], "off": why})
        return f"backtest: off ({why})"
    write_json(root / paths.BACKTEST, report)
    # In the pipeline it joins the training run; run on its own before any training, a run of its own.
    trained = root / paths.TRAIN_SUMMARY
    with _mlflow_run(cfg, root, read_json(trained)["run_id"] if trained.is_file() else None) as mlflow_run:
        flat = {f"backtest_{name}_{metric}_{stat}": value for name, metrics in report["summary"].items()
                for metric, stats in metrics.items() for stat, value in stats.items()}  # fmt: skip
        mlflow.log_metrics(flat | {"backtest_lstm_beats_best_baseline": report["lstm_beats_best_baseline"]})
        now = int(time.time() * 1000)
        per_fold = [Metric(f"backtest_{name}_rmse", m["rmse"], now, f["fold"]) for f in report["folds"] for name, m in f["metrics"].items()]
        mlflow.MlflowClient().log_batch(mlflow_run.info.run_id, metrics=per_fold)
        mlflow.log_artifact(str(root / paths.BACKTEST), "evaluation")
    return "\n".join(runner.backtest_lines(report))


def export(cfg: Config, root: Path) -> str:
    """The task's TorchScript file, stored in the training run under its own sha256
    (``torchscript/<sha256>/model.ts``: a file is stored once and never rewritten, so a re-export
    can only add a file, and identical bytes add nothing), signed when a signing key is set, and
    logged as the pyfunc model that registration points at (``registry/pyfunc.py``: no pickle)."""
    import mlflow
    import torch

    from lstmops.registry.pyfunc import log_model
    from lstmops.registry.signing import sign, signing_key
    from lstmops.registry.verify import Recorded, artifact_path, file_digest

    key = signing_key()  # a wrong key setting fails before anything is exported
    done = task(cfg).export(cfg, root)
    file = root / paths.TORCHSCRIPT
    sha256, size = file_digest(file)
    signed = sign(key, sha256, size) if key is not None else None
    record = Recorded(sha256, size, artifact_path(sha256), signed and signed.signature, signed and signed.key_id)
    with _mlflow_run(cfg, root, read_json(root / paths.TRAIN_SUMMARY)["run_id"]) as mlflow_run:
        client = mlflow.MlflowClient()
        if not client.list_artifacts(mlflow_run.info.run_id, record.artifact):  # stored once, never rewritten
            mlflow.log_artifact(str(file), record.artifact.rsplit("/", 1)[0])
        info = log_model(
            file, record, done.signature, {"task": cfg.task, "sha256": sha256, **done.metadata},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )  # fmt: skip
        mlflow.log_metric("export_max_abs_diff", done.check["max_abs_diff"])
    write_json(root / paths.EXPORT_SUMMARY, {
        **done.check, "model_uri": info.model_uri, "run_id": mlflow_run.info.run_id, "torchscript": str(paths.TORCHSCRIPT),
        "sha256": sha256, "size": size, "torchscript_artifact": record.artifact,
        "signature": record.signature, "signing_key": record.key_id, **done.metadata,
    })  # fmt: skip
    signed_by = f", signed by key {record.key_id}" if record.signature else ""
    return f"{done.summary}\nstored as {record.artifact} ({size:,} bytes{signed_by})"


def register(cfg: Config, root: Path) -> str:
    """A new version with lineage, aliased ``challenger``; the gate decides about ``champion``."""
    from lstmops.registry.register import lineage_tags, log_lineage, validation_verdict
    from lstmops.registry.register import register as run
    from lstmops.registry.seen import as_tags as seen_tags

    data_md5 = require_validated(root)
    exported = read_json(root / paths.EXPORT_SUMMARY)
    record = exported_record(exported)
    lstm = read_json(root / paths.METRICS)["test"]["lstm"]
    verdict = validation_verdict(read_json(root / paths.VALIDATION))
    tags = lineage_tags(root, data_md5, cfg.model_dump(mode="json"), lstm, verdict, cfg.source) | task(cfg).lineage_tags(cfg)
    tags |= seen_tags(task(cfg).seen(cfg, root))  # what it trained and validated on: the gate's fairness
    with _mlflow_run(cfg, root, exported["run_id"]):
        log_lineage(root, root / paths.SNAPSHOT, data_md5, cfg.source, [root / "dvc.lock", root / "params.yaml"])
        entry = run(exported["model_uri"], cfg.model_name, exported["run_id"], tags, record)
    write_json(root / paths.REGISTERED, entry)
    signed = f", signed by key {record.key_id}" if record.signature else ""
    return (
        f"registered {entry['name']} version {entry['version']} (sha256 {record.sha256[:12]}{signed}; "
        "alias: challenger until the gate decides)"
    )


def exported_record(exported: dict):
    """The model file that export stored (``models/export.json``), as a version records it."""
    from lstmops.errors import LstmopsError
    from lstmops.registry.signing import SIGNING_ENV, SIGNING_FILE_ENV, signing_key
    from lstmops.registry.verify import Recorded

    if not exported.get("sha256"):
        raise LstmopsError(f"{paths.EXPORT_SUMMARY}: no sha256 of the exported file (an older export): run lstmops export again")
    if signing_key() is not None and not exported.get("signature"):
        raise LstmopsError(
            f"{paths.EXPORT_SUMMARY}: the exported file is not signed, but ${SIGNING_ENV}/${SIGNING_FILE_ENV} is set: "
            "export again with the key (dvc repro -f -s export, or lstmops export), then register"
        )
    return Recorded(exported["sha256"], int(exported["size"]), exported["torchscript_artifact"],
                    exported.get("signature"), exported.get("signing_key"))  # fmt: skip


def gate(cfg: Config, root: Path, force: bool = False) -> str:
    """Score the new version against the champion on the newest test windows; promote if it wins.

    ``LSTMOPS_FORCE_PROMOTION=1`` forces too: it is how the flow's ``force`` reaches this stage,
    whether it runs in the flow's process or as ``lstmops gate`` started by ``dvc repro``.
    """
    import os

    force = force or os.environ.get("LSTMOPS_FORCE_PROMOTION") == "1"
    from dataclasses import asdict

    from mlflow.tracking import MlflowClient

    from lstmops.tasks.base import TOLERANCE
    from lstmops.registry.gate import run_gate
    from lstmops.registry.register import validation_verdict
    from lstmops.tracking import configure

    data_md5 = require_validated(root)
    configure(root, cfg.mlflow.experiment)
    registered, exported = read_json(root / paths.REGISTERED), read_json(root / paths.EXPORT_SUMMARY)
    runner, metrics = task(cfg), read_json(root / paths.METRICS)
    verdict = run_gate(
        MlflowClient(), registered["name"], registered["version"],
        lambda seen: runner.gate_inputs(cfg, root, metrics, seen),
        validation_verdict(read_json(root / paths.VALIDATION)), exported["max_abs_diff"] <= TOLERANCE,
        data_md5, cfg.promote.min_improvement, force,
        cfg.promote.significance if cfg.promote.require_significance else None,
        min_unseen=cfg.promote.min_unseen, seen=runner.seen(cfg, root), backtest=backtest_evidence(cfg, root),
    )  # fmt: skip
    write_json(root / paths.GATE, asdict(verdict))
    action = "promoted to champion" if verdict.promoted else ("stays champion" if verdict.passed else "not promoted")
    return f"gate: {registered['name']} version {registered['version']} {action}: {verdict.reason}"


def backtest_evidence(cfg: Config, root: Path) -> tuple[float, str, float] | None:
    """(the LSTM's mean over the backtest's folds, the best naive baseline, its mean) in the gate's
    metric, when ``promote.beat_baseline_in_backtest`` asks for it and the backtest ran; else None.
    The folds retrain the challenger's own settings, so this judges the recipe over several
    seasons, where the gate's test span is one."""
    report = root / paths.BACKTEST
    if not cfg.promote.beat_baseline_in_backtest or not report.is_file():
        return None
    summary = read_json(report).get("summary") or {}
    metric = cfg.promote.metric
    means = {name: stats[metric]["mean"] for name, stats in summary.items() if metric in stats}
    if "lstm" not in means or len(means) < 2:
        return None  # off (no folds), or a task whose backtest has no baselines
    best = min((name for name in means if name != "lstm"), key=means.get)
    return means["lstm"], best, means[best]


RUNNERS: dict[str, Callable[[Config, Path], str]] = {
    "ingest": ingest, "validate": validate, "prepare": prepare, "train": train,
    "evaluate": evaluate, "backtest": backtest, "export": export, "register": register, "gate": gate,
}  # fmt: skip
