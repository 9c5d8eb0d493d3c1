"""Start the retrain deployment only when the pipeline's source changed: wiring only.

The check is DVC's own (``dvc status ingest``: the source's checksum against dvc.lock, for files,
directories and s3:// prefixes alike), so it costs a second, not a pipeline run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.deployments import run_deployment

from lstmops.orchestrate import source_changed


@flow(name="lstmops-watch-source", log_prints=True)
def watch_source(root: str = ".", deployment: str = "lstmops-retrain/retrain") -> str:
    if not source_changed(Path(root)):
        print("source unchanged: nothing to do")
        return "source unchanged: nothing to do"
    # the same pipeline: retrain runs in the worker's working directory, as this flow does
    run = run_deployment(deployment, parameters={"root": root}, timeout=0)  # don't wait: retrain has its own concurrency limit
    print(f"source changed: started {deployment} ({run.name})")
    return f"started {run.name}"


if __name__ == "__main__":
    watch_source()
