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

from lstmops.config import write_overrides
from lstmops.errors import LstmopsError, StageFailed, StageUnavailable
from lstmops.orchestrate import pipeline_stages, reproduce, run_in_process


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

    ``overrides`` are `-S` style ``key=value`` settings, written into params.yaml as
    `lstmops run -S` does; ``force`` lets the gate promote when the champion cannot read the new data.
    """
    try:
        cfg = write_overrides(Path(root), overrides or [])
    except LstmopsError as exc:
        return Failed(message=str(exc))
    if force:
        os.environ["LSTMOPS_FORCE_PROMOTION"] = "1"  # read by `lstmops gate` (DVC runs it as a subprocess)
    delays = [cfg.retrain.retry_delay_s * 2**i for i in range(cfg.retrain.retries)]
    stage_task = run_stage.with_options(retries=cfg.retrain.retries, retry_delay_seconds=delays or 0)
    for stage in pipeline_stages(Path(root)):
        state = stage_task(stage, root, cfg.retrain.in_process, return_state=True)
        if state.is_failed():
            return Failed(message=(state.message or "").split(": ", 1)[-1])
    return Completed(message="all stages up to date")


if __name__ == "__main__":
    retrain()
