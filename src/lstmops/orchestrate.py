"""What the Prefect flow needs from the package: run one stage through DVC, load the flow from
``flows/``, and summarize a finished run. Kept here so tests of ``src/`` reach all of it."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lstmops import paths
from lstmops.errors import (
    EXIT_UNAVAILABLE, LstmopsError, ServiceUnavailable, StageFailed, StageUnavailable, ValidationFailed,
    report_lines,
)  # fmt: skip
from lstmops.io import read_json

FLOW_FILE = Path("flows/retrain.py")
RUN_LOCK_SUFFIX = "-pipeline-run"  # the run lock of a pipeline: a lease named after its registered model


def reproduce(root: Path, stage: str) -> list[str]:
    """``dvc repro --single-item STAGE``: runs the stage only if its deps or params changed.

    Going through DVC means a flow run and a manual ``dvc repro`` share one cache and one
    dvc.lock, so they cannot drift apart. Returns the names of the stages that ran.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    # dvc.yaml's commands call `lstmops`: make this interpreter's scripts findable even when
    # the virtualenv is not activated.
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    # DVC's own handler already prints its progress; don't let Prefect's root handler repeat it.
    logging.getLogger("dvc").propagate = False
    logging.getLogger("dvc.repo.scm_context").setLevel(logging.WARNING)
    try:
        with Repo(str(root)) as repo:
            ran = repo.reproduce(_target(root, stage), single_item=True)
    except DvcException as exc:
        status = _exit_status(exc)
        if status == EXIT_UNAVAILABLE:
            raise StageUnavailable(
                f"stage {stage!r} failed: a server it needs was unreachable (exit {status}); later stages did not run"
            ) from None
        raise StageFailed(f"stage {stage!r} failed ({exc}); later stages did not run") from None
    return [s.addressing for s in ran]


def run_in_process(root: Path, stage: str) -> list[str]:
    """What ``reproduce`` does, without a new Python process per stage.

    DVC still decides (the stage runs only if its deps, params or outs differ from dvc.lock) and
    records (``dvc commit``: dvc.lock and the cache), exactly as ``dvc repro`` would after running
    ``lstmops STAGE``; the stage function runs here. torch, MLflow and Great Expectations are then
    imported once per flow run instead of once per stage, which is most of a small run's time.
    """
    from dvc.repo import Repo, lock_repo

    from lstmops import config, stages

    logging.getLogger("dvc").propagate = False
    with Repo(str(root)) as repo, lock_repo(repo):  # held while the stage runs, as dvc repro does
        (target,) = repo.stage.collect(_target(root, stage))
        if not target.changed():
            return []
        print(f"Running stage '{stage}':", flush=True)
        target.remove_outs(ignore_remove=False, force=False)  # as dvc repro does: no stale outputs
        # Fingerprint what the stage reads before it reads it (dvc repro hashes deps afterwards): a
        # partition that lands while ingest runs is then a change for the next run, never recorded
        # as consumed when it was not.
        target.save_deps()
        try:
            print(stages.RUNNERS[stage](config.load(root), root), flush=True)
        except ServiceUnavailable as exc:
            raise StageUnavailable(f"stage {stage!r} failed: {exc}; later stages did not run") from None
        except ValidationFailed as exc:
            print("\n".join(report_lines(exc)), file=sys.stderr, flush=True)
            raise StageFailed(f"stage {stage!r} failed: {exc.lines[0]}; later stages did not run") from None
        except LstmopsError as exc:
            raise StageFailed(f"stage {stage!r} failed: {exc}; later stages did not run") from None
        finally:
            _fresh_torch_state()
        target.save_outs()
        target.md5 = target.compute_md5()
        target.commit()  # the outputs into DVC's cache
        target.dvcfile.dump_stages([target], update_pipeline=False)  # dvc.lock, with the deps as fingerprinted
    return [stage]


def _fresh_torch_state() -> None:
    """Undo the process-wide switches training sets, so each stage computes as in its own process
    (and a flow run's metrics equal `dvc repro`'s byte for byte)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_flush_denormal(False)
        torch.use_deterministic_algorithms(False)


def _target(root: Path, stage: str) -> str:
    """A stage address that does not depend on the working directory (DVC resolves bare names
    against it)."""
    return f"{(Path(root) / 'dvc.yaml').resolve()}:{stage}"


def _exit_status(exc: BaseException) -> int | None:
    """The exit status of the stage command behind a DVC error ("..., exited with N"), if any."""
    while exc is not None:
        _, sep, status = str(exc).rpartition("exited with ")
        if sep and status.strip().isdigit():
            return int(status.strip())
        exc = exc.__cause__
    return None


def source_changed(root: Path) -> bool:
    """True when ingest's source (file, directory, s3:// objects) or settings differ from what
    dvc.lock recorded, or ingest never ran. Only the dependencies count: a workspace that pulled
    dvc.lock without the outputs (``lstmops pull --no-outputs``) has no snapshot, and that is not news."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        status = repo.status(targets=[_target(root, "ingest")], with_deps=False)
    entries = [entry for found in status.values() for entry in found]
    return any(not isinstance(entry, dict) or set(entry) - {"changed outs"} for entry in entries)


def pipeline_stages(root: Path) -> list[str]:
    """The stages of the pipeline in ``root``, in the pipeline's order: those of ``stages.STAGES``
    that its dvc.yaml declares (a task without a backtest has no backtest stage)."""
    import yaml

    from lstmops.stages import STAGES

    path = root / paths.DVC_FILE
    if not path.is_file():
        raise LstmopsError(f"{path}: no dvc.yaml (a pipeline is a folder with params.yaml and dvc.yaml)")
    declared = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    return [stage for stage in STAGES if stage in declared]


def load_flow(root: Path):
    """Import ``flows/retrain.py`` from the project root and return its ``retrain`` flow."""
    path = paths.project_root(root) / FLOW_FILE
    if not path.is_file():
        raise LstmopsError(f"{path}: flow file not found (run from the project root)")
    spec = importlib.util.spec_from_file_location("lstmops_flows_retrain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.retrain


def summary(root: Path) -> str:
    """What a finished run produced: test metrics beside baselines, model version, artifact path."""
    from lstmops import config
    from lstmops.tasks import for_task

    task = for_task(config.load(root).task)
    registered = read_json(root / paths.REGISTERED)
    gate = read_json(root / paths.GATE)
    lines = [
        *task.metrics_lines(read_json(root / paths.METRICS)),
        f"MLflow model: {registered['name']} version {registered['version']}",
        f"gate, version {gate['challenger_version']}: {'promoted to champion' if gate['promoted'] else 'not promoted'} "
        f"({gate['reason']}) -> models:/{registered['name']}@champion",
        task.artifact_line(root, read_json(root / paths.EXPORT_SUMMARY)),
    ]
    return "\n".join(lines)


@contextmanager
def pipeline_lock(root: Path, cfg) -> Iterator[None]:
    """Hold the pipeline's run lock while the block runs: a lease in the MLflow backend that every
    run of this pipeline takes (a flow run on any worker, `lstmops run`), so two runs never train,
    register and promote the same model at once, whoever started them. An unreachable tracking
    server is retried with the flow's delays (``retrain.retries``), like a stage."""
    from mlflow.tracking import MlflowClient

    from lstmops.registry.trail import Lease
    from lstmops.tracking import configure

    delays = [cfg.retrain.retry_delay_s * 2**i for i in range(cfg.retrain.retries)]
    for delay in [*delays, None]:
        try:
            configure(root, cfg.mlflow.experiment)
            lease = Lease(MlflowClient(), f"{cfg.model_name}{RUN_LOCK_SUFFIX}", wait_s=cfg.retrain.lock_wait_s)
            lease.acquire()
            break
        except ServiceUnavailable as exc:
            if delay is None:
                raise StageUnavailable(f"the pipeline's run lock: {exc}; no stage ran") from None
            print(f"the pipeline's run lock: {exc}; retrying in {delay:g} s", file=sys.stderr, flush=True)
            time.sleep(delay)
    try:
        yield
    finally:
        lease.release()


def run_flow(root: Path, overrides: list[str] | None = None) -> str:
    """`lstmops run`: the user's own settings go into params.yaml first (as `dvc exp run -S` does);
    the flow's ``overrides`` parameter is for Prefect runs and holds only what params allow."""
    from lstmops.config import write_overrides

    write_overrides(root, overrides or [])
    flow = load_flow(root)
    state = flow(root=str(root.resolve()), overrides=[], return_state=True)
    if not state.is_completed():
        raise StageFailed(state.message or "pipeline flow did not complete")
    return summary(root)
