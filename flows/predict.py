"""The champion's batch forecasts as a Prefect flow: wiring only. The `predict` deployment in
prefect.yaml runs it daily, after the day's data has landed (``lstmops predict`` does the same)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.states import Completed, Failed, State

from lstmops.config import load
from lstmops.errors import LstmopsError
from lstmops.monitor.predict import predict as run


@flow(name="lstmops-predict", log_prints=True)
def predict(root: str = ".") -> State:
    """``root``: the pipeline's folder ("." or pipelines/NAME), relative to the worker's directory."""
    try:
        line = run(load(Path(root)), Path(root))
    except LstmopsError as exc:
        return Failed(message=str(exc))
    print(line)
    return Completed(message=line.splitlines()[0])


if __name__ == "__main__":
    predict()
