"""MLflow set-up. Embedded default: a sqlite store (mlflow.db) and an mlruns/ folder in the
project root, shared by every pipeline of the project (one registry); ``MLFLOW_TRACKING_URI``
points the pipelines at a server instead."""

from __future__ import annotations

import os
from pathlib import Path

from lstmops.errors import ServiceUnavailable


def tracking_uri(root: Path) -> str:
    from lstmops.paths import project_root

    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root(root) / 'mlflow.db'}"


def _check_reachable(uri: str) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5).read()
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceUnavailable(f"MLflow tracking server {uri} is unreachable ({exc}); check MLFLOW_TRACKING_URI") from None


def configure(root: Path, experiment: str) -> str:
    """Point mlflow at the project's tracking store and select (or create) the experiment."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    import mlflow

    uri = tracking_uri(root)
    _check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        # A local store keeps artifacts beside it, whatever the working directory of a stage.
        from lstmops.paths import project_root

        location = None if uri.startswith("http") else (project_root(root) / "mlruns").as_uri()
        try:
            mlflow.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(experiment) is None:
                raise
            # Another process (a second tune worker) created it meanwhile: use theirs.
    mlflow.set_experiment(experiment)
    return uri
