"""What the Prefect flow needs from the package: run one stage through DVC, load the flow from
``flows/``, and summarize a finished run. Kept here so tests of ``src/`` reach all of it."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

from lstmops import paths
from lstmops.errors import EXIT_UNAVAILABLE, LstmopsError, StageFailed, StageUnavailable
from lstmops.io import read_json

FLOW_FILE = Path("flows/retrain.py")


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
            ran = repo.reproduce(stage, single_item=True)
    except DvcException as exc:
        status = _exit_status(exc)
        if status == EXIT_UNAVAILABLE:
            raise StageUnavailable(
                f"stage {stage!r} failed: a server it needs was unreachable (exit {status}); later stages did not run"
            ) from None
        raise StageFailed(f"stage {stage!r} failed ({exc}); later stages did not run") from None
    return [s.addressing for s in ran]


def _exit_status(exc: BaseException) -> int | None:
    """The exit status of the stage command behind a DVC error ("..., exited with N"), if any."""
    while exc is not None:
        _, sep, status = str(exc).rpartition("exited with ")
        if sep and status.strip().isdigit():
            return int(status.strip())
        exc = exc.__cause__
    return None


def source_changed(root: Path) -> bool:
    """True when ingest is not up to date: its source (file, directory, s3:// objects) or
    settings differ from what dvc.lock recorded, or it never ran."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.status(targets=["ingest"], with_deps=False))


def load_flow(root: Path):
    """Import ``flows/retrain.py`` from the project root and return its ``retrain`` flow."""
    path = root / FLOW_FILE
    if not path.is_file():
        raise LstmopsError(f"{path}: flow file not found (run from the project root)")
    spec = importlib.util.spec_from_file_location("lstmops_flows_retrain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.retrain


def summary(root: Path) -> str:
    """What a finished run produced: test metrics beside baselines, model version, artifact path."""
    from lstmops.stages import format_metrics

    metrics = read_json(root / paths.METRICS)
    registered = read_json(root / paths.REGISTERED)
    exported = read_json(root / paths.EXPORT_SUMMARY)
    gate = read_json(root / paths.GATE)
    skill = {k: v for k, v in metrics.items() if k.startswith("skill_vs_")}
    lines = [
        format_metrics(metrics["test"], metrics.get("target", "target")),
        *(f"{k.replace('_', ' ')}: {v:+.1%} (RMSE reduction)" for k, v in skill.items()),
        f"MLflow model: {registered['name']} version {registered['version']}",
        f"gate: {'promoted to champion' if gate['promoted'] else 'champion unchanged'} ({gate['reason']}) "
        f"-> models:/{registered['name']}@champion",
        f"TorchScript: {(root / exported['torchscript']).resolve()} "
        f"(raw windows of {exported['input_steps']}+ steps x {len(exported['features'])} features "
        f"-> {exported['horizon']} forecasts, original units)",
    ]
    return "\n".join(lines)


def run_flow(root: Path, overrides: list[str] | None = None) -> str:
    flow = load_flow(root)
    state = flow(root=str(root.resolve()), overrides=overrides or [], return_state=True)
    if not state.is_completed():
        raise StageFailed(state.message or "pipeline flow did not complete")
    return summary(root)
