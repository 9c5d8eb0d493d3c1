"""``lstmops tune``: search the forecaster's settings with Optuna, on validation loss only.

Each trial sets the settings listed in ``tune.space`` (as ``-S`` overrides would), prepares the
snapshot the pipeline already ingested into a scratch directory, and trains with the pipeline's
own engine (``train.fit``). The trial's value is its best validation loss (MSE in scaled units,
what early stopping already minimises); the test span is never looked at, so the test metrics of
a run with the tuned settings stay an honest estimate.

- TPE proposes settings; median pruning stops a trial whose validation loss, at the same epoch,
  is worse than the median of the trials before it (after ``warmup_epochs``).
- The study lives in ``tune.storage`` (a SQLite file, or an RDB URL such as PostgreSQL's): a killed
  or finished ``lstmops tune`` resumes it, and ``--trials N`` means N finished trials in the study,
  counting those already finished and those other workers finish.
- Many workers, one study (Optuna's pattern): every ``lstmops tune`` pointed at the same storage
  and study joins it. A worker starts a trial only while the finished and running trials are fewer
  than N, and otherwise waits for the running ones: a running trial whose worker dies stops its
  heartbeat, is failed after ``tune.grace_s`` and queued again with the same settings, and a
  waiting worker runs it.
- Every trial is an MLflow child run under one parent run per study. The worker that creates the
  study creates the parent and keeps its id in the study; the others wait for that id, so the
  parent is created once however many workers start together.
- The budget: ``tune.trials`` and ``tune.timeout_s`` of wall time for one invocation. A trial
  still training at the deadline is stopped and counted as pruned. One worker runs one trial at a
  time: on 2 CPU cores two concurrent trainings each run at about half speed, so nothing is gained
  on one machine; more workers pay off on more machines.
- The best trial's settings are printed as ``-S`` overrides and written to ``tune/best_params.yaml``,
  which ``lstmops run -P`` and ``lstmops set -P`` (before ``dvc repro``) read.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lstmops import paths
from lstmops.config import PARAMS_FILE, apply_overrides, as_overrides, load, read_params, read_params_file, validate
from lstmops.tasks.forecast.settings import Settings, TuneConfig
from lstmops.errors import ConfigError, DataError, LstmopsError, ServiceUnavailable

BEST_PARAMS = Path("tune/best_params.yaml")
PARENT_ATTR = "mlflow_parent_run_id"  # the study's user attribute naming its MLflow parent run
PARENT_WAIT_S = 60.0  # how long a joining worker waits for the study's creator to name the parent
POLL_S = 1.0  # how often a worker with nothing to start looks at the study again
SCHEMA_ATTEMPTS = 5  # opening a storage whose tables another worker is creating at the same moment
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # names this process in trials and child runs


@dataclass(frozen=True)
class Outcome:
    study: str
    trials: int  # in the study now
    complete: int
    pruned: int
    failed: int  # and not queued again
    retried: int  # failed because their worker died, then queued again
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


def storage(root: Path, tc: TuneConfig):
    """The study's storage, with heartbeats: a trial whose worker dies is failed and queued again."""
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, ProgrammingError

    url = storage_url(root, tc.storage)
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise ConfigError(f"tune.storage: {tc.storage!r} is neither a file nor a database URL") from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.8
    try:
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=tc.heartbeat_s, grace_period=tc.grace_s,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=tc.retries),
                )  # fmt: skip
            except (IntegrityError, ProgrammingError):
                # Workers starting together on an empty database all create Optuna's tables; all but
                # one collide (PostgreSQL: duplicate type or relation). Once it has committed, they exist.
                if attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except (ImportError, NoSuchModuleError) as exc:
        cause = exc.__cause__ or exc  # Optuna wraps the driver's ImportError in its own
        raise ConfigError(f"tune.storage {shown}: no driver for it ({cause}); for PostgreSQL use postgresql+psycopg://") from None
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise ServiceUnavailable(f"tune.storage {shown} is unreachable ({reason})") from None


def open_study(root: Path, tc: TuneConfig, seed: int):
    """(study, whether this worker created it). Creating is atomic in the storage: of workers that
    start together, exactly one creates the study; the others load it."""
    import optuna

    pruner = optuna.pruners.MedianPruner(n_startup_trials=tc.startup_trials, n_warmup_steps=tc.warmup_epochs)
    where = storage(root, tc)
    try:
        study = optuna.create_study(study_name=tc.study, storage=where, direction="minimize", pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=tc.study, storage=where, pruner=pruner), False
    # The creator draws from the pipeline's seed. A worker joining (or resuming) the study draws
    # from its own seed: with the same one it would propose the trials the creator already ran.
    # constant_liar: TPE treats the trials running elsewhere as bad, so workers spread out.
    own_seed = seed if created else seed ^ zlib.crc32(WORKER.encode())
    study.sampler = optuna.samplers.TPESampler(seed=own_seed, n_startup_trials=tc.startup_trials, constant_liar=True)
    return study, created


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
    """Trials by state. A trial failed by a dead worker and queued again is ``retried``, not
    finished: its retry is the trial that counts."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {number for t in trials for number in Retry.retry_history(t)}
    states = [t.state for t in trials if t.number not in retried]
    complete, pruned, failed = (states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return {
        "complete": complete, "pruned": pruned, "failed": failed, "retried": len(retried),
        "finished": complete + pruned + failed, "running": states.count(TrialState.RUNNING),
    }  # fmt: skip


def parent_run(study, cfg: Settings, root: Path, created: bool, base: list[str]):
    """The study's MLflow parent run, started (or reopened) as the active run. Its creator makes
    it; every other worker reopens it by the id the creator keeps in the study."""
    import mlflow

    from lstmops.tracking import configure

    if created:
        check_resumable(study, base, cfg.tune.space)  # before the parent: joiners check against it
    else:
        run_id = await_parent(study)
        check_resumable(study, base, cfg.tune.space)
    configure(root, cfg.mlflow.experiment)
    if not created and run_id is not None:
        return mlflow.start_run(run_id=run_id)
    tags = {"lstmops.tune.study": study.study_name}
    run = mlflow.start_run(run_name=f"tune-{study.study_name}", tags=tags)
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    mlflow.log_params({f"space.{k}": str(v) for k, v in cfg.tune.space.items()})
    return run


def await_parent(study, wait_s: float = PARENT_WAIT_S) -> str | None:
    """The parent run's id, once the study's creator has stored it; None if it never does (the
    creator died in the second between creating the study and its parent: this worker makes one)."""
    deadline = time.monotonic() + wait_s
    while True:
        run_id = study.user_attrs.get(PARENT_ATTR)
        if run_id is not None or time.monotonic() > deadline:
            return run_id
        time.sleep(0.2)


def run_budget(study, objective, trials: int, deadline: float, catch: tuple[type[Exception], ...]) -> None:
    """Run trials until the study has ``trials`` finished ones or the deadline passes.

    A trial starts only while finished + running < trials, so workers that check at different
    moments never overshoot; two that check at the same moment may each start one. When the rest
    are running elsewhere this worker waits rather than leaving, because one of them may fail with
    its worker and come back as a queued retry (``fail_stale_trials`` fails it after the grace period).
    """
    import optuna

    while (left := deadline - time.perf_counter()) > 0:
        optuna.storages.fail_stale_trials(study)
        now = counts(study)
        if now["finished"] >= trials:
            return
        if now["finished"] + now["running"] < trials:
            study.optimize(objective, n_trials=1, timeout=left, catch=catch)
        else:
            time.sleep(POLL_S)


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
    study, created = open_study(root, tc, cfg.seed)
    started = time.perf_counter()
    deadline = started + timeout_s

    def objective(trial) -> float:
        values = suggest(trial, tc.space)
        trial_cfg = load(root, [*base, *as_overrides(values)])
        failed = dict(trial.user_attrs)  # a retry starts with the attributes of the attempt whose worker died
        if "mlflow_run_id" in failed:
            mlflow.tracking.MlflowClient().set_terminated(failed["mlflow_run_id"], "FAILED")
        # Started and ended by hand: the context manager would mark a pruned trial FAILED.
        child = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True)
        for key, value in {"mlflow_run_id": child.info.run_id, "worker": WORKER, "number": trial.number}.items():
            trial.set_user_attr(key, value)
        retry = {"lstmops.tune.retry_of": failed["number"]} if "number" in failed else {}
        mlflow.set_tags({"lstmops.tune.worker": WORKER} | retry)
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

    with parent_run(study, cfg, root, created, base) as parent:
        run_budget(study, objective, trials, deadline, catch=(LstmopsError,))
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
            retried=done["retried"],
            best_value=float(best.value), best_number=best.number, best=best.params, parent_run_id=parent.info.run_id,
            seconds=round(time.perf_counter() - started, 1),
        )  # fmt: skip
        path = write_best(root, outcome)
        mlflow.log_artifact(str(path))
    return outcome


def summary_lines(outcome: Outcome) -> list[str]:
    return [
        f"study {outcome.study!r}: {outcome.trials} trials ({outcome.complete} complete, {outcome.pruned} pruned, "
        f"{outcome.failed} failed{f', {outcome.retried} retried' if outcome.retried else ''}) in {outcome.seconds:.0f} s "
        f"this run; MLflow parent run {outcome.parent_run_id}",
        f"best: trial {outcome.best_number}, validation loss {outcome.best_value:.6g}",
        "  " + " ".join(f"-S {o}" for o in as_overrides(outcome.best)),
        f"written to {BEST_PARAMS}: lstmops run -P {BEST_PARAMS}  (or lstmops set -P {BEST_PARAMS} && dvc repro)",
    ]
