"""The training pipeline as a Prefect flow: wiring only.

Each task runs one stage through DVC (``dvc repro --single-item``), so the flow and
``dvc repro`` share one cache and one dvc.lock; a stage whose inputs did not change is skipped.
A failing stage fails its task and the flow with the stage's one-line reason (no traceback);
later stages do not run.

Run it with ``lstmops run`` (or ``python flows/pipeline.py``) from the project root.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.states import Completed, Failed, State

from lstmops.errors import StageFailed
from lstmops.orchestrate import reproduce
from lstmops.stages import STAGES


@task(task_run_name="{stage}")
def run_stage(stage: str, root: str) -> State:
    try:
        return Completed(data=reproduce(Path(root), stage), message=f"{stage} done")
    except StageFailed as exc:
        return Failed(message=str(exc))


@flow(name="lstmops-pipeline", log_prints=True)
def pipeline(root: str = ".") -> State:
    """ingest -> validate -> prepare -> train -> evaluate -> export -> register."""
    for stage in STAGES:
        state = run_stage(stage, root, return_state=True)
        if state.is_failed():
            return Failed(message=state.message)
    return Completed(message="all stages up to date")


if __name__ == "__main__":
    pipeline()
