"""Monitoring as a Prefect flow: wiring only. The `monitor` deployment in prefect.yaml runs it after
`predict`; when the decay rule fires it emits the event that the `retrain` deployment's trigger
waits for (``lstmops monitor`` does the same)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import Completed, Failed, State

from lstmops.config import load
from lstmops.errors import LstmopsError
from lstmops.monitor.run import monitor as run


@flow(name="lstmops-monitor", log_prints=True)
def monitor(root: str = ".") -> State:
    """``root``: the pipeline's folder ("." or pipelines/NAME), relative to the worker's directory."""
    try:
        report = run(load(Path(root)), Path(root))
    except LstmopsError as exc:
        return Failed(message=str(exc))
    print(report)
    return Completed(message=report.splitlines()[0])


if __name__ == "__main__":
    monitor()
