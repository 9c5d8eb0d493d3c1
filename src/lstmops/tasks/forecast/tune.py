"""``lstmops tune``: search the forecaster's settings with Optuna, on validation loss only.

Each trial sets the settings listed in ``tune.space`` (as ``-S`` overrides would), prepares the
snapshot the pipeline already ingested into a scratch directory, and trains with the pipeline's
own engine (``train.fit``). The trial's value is its best validation loss (MSE in scaled units,
what early stopping already minimises); the test span is never looked at, so the test metrics of
a run with the tuned settings stay an honest estimate.

- TPE proposes settings; median pruning stops a trial whose validation loss, at the same epoch,
  is worse than the median of the trials before it (after ``warmup_epochs``).
- The study lives in ``tune.storage`` (SQLite): a killed or finished ``lstmops tune`` resumes it,
  and ``--trials N`` means N trials in the study, counting those already finished.
- Every trial is an MLflow child run under one parent run per study (its id is kept in the study).
- The budget: ``tune.trials`` and ``tune.timeout_s`` of wall time for one invocation. A trial
  still training at the deadline is stopped and counted as pruned. Trials run one at a time: on
  2 CPU cores two concurrent trainings each run at about half speed, so nothing is gained.
- The best trial's settings are printed as ``-S`` overrides and written to ``tune/best_params.yaml``,
  which ``lstmops run -P`` and ``lstmops set -P`` (before ``dvc repro``) read.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lstmops import paths
from lstmops.config import PARAMS_FILE, apply_overrides, as_overrides, load, read_params, read_params_file, validate
from lstmops.tasks.forecast.settings import Settings, TuneConfig
from lstmops.errors import ConfigError, DataError, LstmopsError

BEST_PARAMS = Path("tune/best_params.yaml")


@dataclass(frozen=True)
class Outcome:
    study: str
    trials: int  # in the study now
    complete: int
    pruned: int
    failed: int
    best_value: float
    best_number: int
    best: dict[str, Any]  # setting -> value
    parent_run_id: str
    seconds: float


# --- the search space ---------------------------------------------------------------------------


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    """One value per setting: a list is a categorical choice, a mapping a (log) int/float range."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            values[key] = trial.suggest_categorical(key, spec)
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not isinstance(spec.get("step"), float):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step") or 1, log=bool(spec.get("log")))
        else:
            values[key] = trial.suggest_float(key, spec["low"], spec["high"], step=spec.get("step"), log=bool(spec.get("log")))
    return values


def check_space(root: Path, base: list[str], space: dict[str, Any]) -> None:
    """Fail before any training if a setting is unknown or an end of its range is invalid."""
    if not space:
        raise ConfigError("tune.space is empty: list the settings to search in params.yaml (README: Tuning)")
    params = apply_overrides(read_params(root / PARAMS_FILE), base)  # read once, not per value
    for key, spec in space.items():
        for value in (spec if isinstance(spec, list) else [spec["low"], spec["high"]]):
            try:
                validate(apply_overrides(params, as_overrides({key: value})))
            except ConfigError as exc:
                raise ConfigError(f"tune.space.{key}: {value!r} is not a valid value ({exc})") from None


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted settings as the nested mapping params.yaml uses."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def write_best(root: Path, outcome: Outcome) -> Path:
    from lstmops.io import atomic_path

    path = root / BEST_PARAMS
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# lstmops tune: the best trial ({outcome.best_number}) of study {outcome.study!r}, validation loss "
        f"{outcome.best_value:.6g}\n# ({outcome.complete} complete, {outcome.pruned} pruned, {outcome.failed} failed). "
        "Use: lstmops run -P this-file, or lstmops set -P this-file && dvc repro\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(nested(outcome.best), sort_keys=False))
    return path


# --- one trial ------------------------------------------------------------------------------------


def run_trial(cfg: Settings, root: Path, scratch: Path, report) -> tuple[float, dict]:
    """Prepare the snapshot under ``cfg`` into ``scratch`` and train; (best val loss, fit summary).

    ``report(val_loss, epoch)`` is called after every epoch and may raise to stop the trial.
    """
    from lstmops.tasks.forecast.prepare import prepare
    from lstmops.tasks.forecast.task import ForecastTrainer
    from lstmops.train import fit

    prepared = scratch / "prepared"
    prepare(cfg, root / paths.SNAPSHOT, prepared)
    _, summary = fit(
        cfg, lambda device: ForecastTrainer(cfg, prepared, device), scratch / "checkpoint.pt",
        log_metrics=lambda row, step: report(row, step),
    )  # fmt: skip
    return float(summary["best_val_loss"]), summary


# --- the study ------------------------------------------------------------------------------------


def storage_url(root: Path, storage: str) -> str:
    if "://" in storage:
        return storage
    path = root / storage
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def open_study(root: Path, tc: TuneConfig, seed: int):
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=tc.startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=tc.startup_trials, n_warmup_steps=tc.warmup_epochs)
    return optuna.create_study(
        study_name=tc.study, storage=storage_url(root, tc.storage), direction="minimize",
        sampler=sampler, pruner=pruner, load_if_exists=True,
    )  # fmt: skip


def check_resumable(study, base: list[str], space: dict[str, Any]) -> None:
    """A study's trials are comparable only under the same fixed settings and search space."""
    setup = {"overrides": [o for o in base if not o.startswith("tune.")], "space": space}
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", setup)
    elif stored != setup:
        what = "another search space" if stored["space"] != space else f"other fixed settings ({' '.join(stored['overrides']) or 'none'})"
        raise ConfigError(
            f"study {study.study_name!r} in tune.storage was run with "
            f"{what}; set tune.study to a new name, or delete the storage to start over"
        )


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "finished": sum(s.is_finished() for s in states),
    }


def parent_run(study, cfg: Settings, root: Path):
    """The study's MLflow parent run: reopened on resume (its id is a study attribute)."""
    import mlflow

    from lstmops.tracking import configure

    configure(root, cfg.mlflow.experiment)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id is not None:
        return mlflow.start_run(run_id=run_id)
    run = mlflow.start_run(run_name=f"tune-{study.study_name}", tags={"lstmops.tune.study": study.study_name})
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    mlflow.log_params({f"space.{k}": str(v) for k, v in cfg.tune.space.items()})
    return run


def tune(root: Path, base: list[str], trials: int | None = None, timeout_s: float | None = None) -> Outcome:
    """Run the study until it has ``trials`` finished trials or ``timeout_s`` passes."""
    import mlflow
    import optuna

    cfg = load(root, base)
    if not (root / paths.SNAPSHOT).is_file():
        raise DataError(f"{paths.SNAPSHOT} not found: run `lstmops ingest` and `lstmops validate` (or `lstmops run`) first")
    tc = cfg.tune
    check_space(root, base, tc.space)
    trials, timeout_s = trials or tc.trials, timeout_s or tc.timeout_s
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(root, tc, cfg.seed)
    check_resumable(study, base, tc.space)
    started = time.perf_counter()
    deadline = started + timeout_s

    def objective(trial) -> float:
        values = suggest(trial, tc.space)
        trial_cfg = load(root, [*base, *as_overrides(values)])
        # Started and ended by hand: the context manager would mark a pruned trial FAILED.
        child = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True)
        trial.set_user_attr("mlflow_run_id", child.info.run_id)
        try:
            value = train_trial(trial, values, trial_cfg)
        except optuna.TrialPruned:
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run()
        return value

    def train_trial(trial, values: dict[str, Any], trial_cfg: Settings) -> float:
        with tempfile.TemporaryDirectory(prefix="lstmops-tune-") as scratch:
            mlflow.log_params({**values, "optuna.trial": trial.number})

            def report(row: dict, epoch: int) -> None:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                if "val_loss" not in row:  # a progress estimate within an epoch
                    return
                trial.report(row["val_loss"], epoch)
                if time.perf_counter() > deadline:
                    mlflow.set_tag("trial.state", "stopped at the budget")
                    raise optuna.TrialPruned("wall-clock budget spent")
                if trial.should_prune():
                    mlflow.set_tag("trial.state", "pruned")
                    raise optuna.TrialPruned(f"epoch {epoch}: worse than the median")

            value, summary = run_trial(trial_cfg, root, Path(scratch), report)
            mlflow.log_metrics({"best_val_loss": value, "fit_seconds": summary["fit_seconds"], "best_epoch": summary["best_epoch"]})
            mlflow.set_tag("trial.state", "complete")
            return value

    with parent_run(study, cfg, root) as parent:
        remaining = trials - counts(study)["finished"]
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, timeout=timeout_s, catch=(LstmopsError,))
        done = counts(study)
        mlflow.log_metrics({"trials_complete": done["complete"], "trials_pruned": done["pruned"]})
        try:
            best = study.best_trial
        except ValueError:
            raise DataError(f"study {tc.study!r}: no trial completed ({done['pruned']} pruned, {done['failed']} failed)") from None
        mlflow.log_metric("best_val_loss", best.value)
        # Tags, not params: params cannot change when a resumed study finds a better trial.
        mlflow.set_tags({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
        outcome = Outcome(
            study=tc.study, trials=done["finished"], complete=done["complete"], pruned=done["pruned"], failed=done["failed"],
            best_value=float(best.value), best_number=best.number, best=best.params, parent_run_id=parent.info.run_id,
            seconds=round(time.perf_counter() - started, 1),
        )  # fmt: skip
        path = write_best(root, outcome)
        mlflow.log_artifact(str(path))
    return outcome


def summary_lines(outcome: Outcome) -> list[str]:
    return [
        f"study {outcome.study!r}: {outcome.trials} trials ({outcome.complete} complete, {outcome.pruned} pruned, "
        f"{outcome.failed} failed) in {outcome.seconds:.0f} s this run; MLflow parent run {outcome.parent_run_id}",
        f"best: trial {outcome.best_number}, validation loss {outcome.best_value:.6g}",
        "  " + " ".join(f"-S {o}" for o in as_overrides(outcome.best)),
        f"written to {BEST_PARAMS}: lstmops run -P {BEST_PARAMS}  (or lstmops set -P {BEST_PARAMS} && dvc repro)",
    ]
