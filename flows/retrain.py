"""The pipeline as a Prefect flow: wiring only. `lstmops run` runs it once; the `retrain`
deployment in prefect.yaml runs it on a schedule.

Each task runs one stage through DVC: DVC decides whether it must run and records it in dvc.lock
and its cache, so the flow and ``dvc repro`` cannot drift apart; a stage whose inputs did not
change is skipped, and a retrain on unchanged data and code registers nothing. By default the
stage runs inside this process (``retrain.in_process``), except training (see OWN_PROCESS);
otherwise ``dvc repro --single-item`` starts ``lstmops STAGE``. A stage whose command exits with
"server unreachable" (MLflow, S3) is retried with a doubling delay (``retrain`` in params.yaml);
any other failure (bad data, bad params) fails at once with the stage's one-line reason.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, task
from prefect.states import Completed, Failed, State

from lstmops.config import check_overridable, load, write_overrides
from lstmops.errors import LstmopsError, StageFailed, StageUnavailable
from lstmops.orchestrate import pipeline_lock, pipeline_stages, reproduce, run_in_process
from lstmops.paths import project_root
from lstmops.workspace import is_workspace, publish


# Training always gets a process of its own, as under `dvc repro` or torchrun: its thread pool and
# floating-point settings (denormal flushing is per thread) start clean, GPU memory is released
# when it ends, and its fit dwarfs the few seconds of start-up.
OWN_PROCESS = {"train"}


def _unavailable(task, task_run, state: State) -> bool:
    """Retry only outages: the stage's state says it failed because a server was unreachable."""
    return state.is_failed() and (state.message or "").startswith(StageUnavailable.__name__)


@task(task_run_name="{stage}", retry_condition_fn=_unavailable)
def run_stage(stage: str, root: str, in_process: bool = True) -> State:
    runner = run_in_process if in_process and stage not in OWN_PROCESS else reproduce
    try:
        return Completed(data=runner(Path(root), stage), message=f"{stage} done")
    except StageFailed as exc:
        return Failed(message=f"{type(exc).__name__}: {exc}")


@flow(name="lstmops-retrain", log_prints=True)
def retrain(root: str = ".", overrides: list[str] | None = None, force: bool = False) -> State:
    """ingest -> validate -> prepare -> train -> evaluate -> (backtest) -> export -> register -> gate.

    ``root`` is the pipeline's folder: "." for the project's default pipeline, ``pipelines/NAME``
    for another (relative to the worker's working directory, or absolute).

    ``overrides`` are `-S` style ``key=value`` settings for this run only, limited to the keys
    ``retrain.overridable`` allows (anyone who can reach the Prefect API can pass them); they are
    written into the run's own params.yaml (a deployment runs in a clone of its own: see
    ``lstmops.workspace``). ``force`` lets the gate promote when the champion cannot read the new data.
    The whole run holds the pipeline's run lock (``orchestrate.pipeline_lock``).
    """
    pipeline = Path(root)
    try:
        check_overridable(overrides or [], load(pipeline).retrain.overridable)
        cfg = write_overrides(pipeline, overrides or [])  # this run's params only: in a workspace, its own clone
        if force:
            os.environ["LSTMOPS_FORCE_PROMOTION"] = "1"  # read by `lstmops gate` (DVC runs it as a subprocess)
        delays = [cfg.retrain.retry_delay_s * 2**i for i in range(cfg.retrain.retries)]
        stage_task = run_stage.with_options(retries=cfg.retrain.retries, retry_delay_seconds=delays or 0)
        with pipeline_lock(pipeline, cfg):
            for stage in pipeline_stages(pipeline):
                state = stage_task(stage, root, cfg.retrain.in_process, return_state=True)
                if state.is_failed():
                    return Failed(message=(state.message or "").split(": ", 1)[-1])
            project = project_root(pipeline)
            if is_workspace(project):  # a deployment's run: leave the state for the next one, on any worker
                for line in publish(project, pipeline, f"{pipeline.resolve().relative_to(project)}: flow run {flow_run_name()}"):
                    print(line)
    except LstmopsError as exc:
        return Failed(message=str(exc))
    return Completed(message="all stages up to date")


def flow_run_name() -> str:
    from prefect.runtime import flow_run

    return flow_run.name or "local"


if __name__ == "__main__":
    retrain()
