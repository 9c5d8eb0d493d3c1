"""Register: a version in the MLflow model registry that carries everything needed to serve it
and to reproduce it.

The registered model is the TorchScript module (scaling inside), so
``mlflow models serve -m models:/NAME@champion`` serves forecasts in original units.
A new version gets the ``challenger`` alias; only the gate (``gate.py``) or a recorded manual
promotion (``trail.py``) makes it the champion. Lineage lives in version tags (git commit, data
hash and source, params, validation verdict, test metrics) and in the training run (the dataset
as an MLflow input whose digest is the DVC hash of the snapshot; ``params.yaml`` and ``dvc.lock``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from lstmops.registry.trail import CHALLENGER

MAX_TAG = 5000  # MLflow's limit on a model version tag value


def git_commit(root: Path) -> str:
    """The checked-out commit, with '-dirty' when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # dvc.lock and params.yaml are rewritten by runs themselves (`lstmops run -S` writes its
        # overrides); both are logged with the version, so they do not make the code dirty.
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!params.yaml")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def validation_verdict(report: dict[str, Any]) -> str:
    """'passed', 'passed with warnings: drift_stats, ...' (a failed validation never gets here)."""
    warned = sorted({c["check"] for c in report.get("checks", []) if not c["success"] and c.get("check")})
    if not report.get("success", False):
        return "failed"
    return "passed" + (f" with warnings: {', '.join(warned)}" if warned else "")


def lineage_tags(
    root: Path, data_md5: str, params: dict[str, Any], metrics: dict[str, Any], validation: str, source: str
) -> dict[str, str]:
    """The tags every version carries; a task adds its own (``Task.lineage_tags``)."""
    tags = {
        "git_commit": git_commit(root),
        "task": params["task"],
        "data_md5": data_md5,
        "data_source": source,
        "validation": validation,
        "params": json.dumps(params, sort_keys=True, separators=(",", ":"))[:MAX_TAG],
    }
    tags.update({f"test_{k}": str(v) for k, v in metrics.items()})
    return tags


def log_lineage(root: Path, snapshot: Path, data_md5: str, source: str, files: list[Path]) -> None:
    """In the active run: the snapshot as an MLflow dataset input, and the files that pin the run."""
    import mlflow
    import pandas as pd

    frame = pd.read_parquet(snapshot)
    # digest = the DVC hash, so the MLflow dataset and dvc.lock name the same bytes (MLflow's own
    # digest would only cover the first 10,000 rows).
    dataset = mlflow.data.from_pandas(frame, source=source, name=snapshot.name, digest=data_md5)
    mlflow.log_input(dataset, context="training")
    for path in files:
        if path.is_file():
            mlflow.log_artifact(str(path), "lineage")


def existing_version(client, name: str, run_id: str, sha256: str):
    """The version already registered from this run for this file (same sha256), if any: a
    register retried after a failure, or a re-export that produced the same bytes."""
    from mlflow.exceptions import MlflowException

    from lstmops.registry.verify import SHA256

    try:
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:
        return None  # the registered model does not exist yet
    same = [v for v in found if (v.tags or {}).get(SHA256) == sha256]
    return max(same, key=lambda v: int(v.version), default=None)


def register(model_uri: str, name: str, run_id: str, tags: dict[str, str], record) -> dict[str, Any]:
    """Create (or reuse) the version of ``name`` for this run's file ``record``; alias it ``challenger``.

    A version is one file: its sha256, size, artifact path and signature (``record``,
    ``registry/verify.py``) are tags set when the version is created and never changed. The
    same file from the same run reuses its version (idempotent: a register that died half-way is
    completed, and a re-export with identical bytes makes nothing new); a different file from
    the same run (a re-export after a change to the export code) is a new version.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    file_tags = record.tags()
    version = existing_version(client, name, run_id, record.sha256)
    if version is None:
        version = mlflow.register_model(model_uri, name, tags={**tags, **file_tags})
    for key, value in tags.items():
        if key not in file_tags and version.tags.get(key) != value:
            client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return {"name": name, "version": int(version.version), "run_id": version.run_id, "sha256": record.sha256}


def register_file(client, name: str, file: Path, run_id: str, tags: dict[str, str] | None = None, key=None):
    """Register a TorchScript file made outside the pipeline as a new version of ``name``: stored
    in run ``run_id`` under its sha256, the version recording its hash, size and (with ``key``, an
    Ed25519 private key) signature, as ``lstmops export`` + ``register`` do. Returns the version."""
    from mlflow.exceptions import MlflowException

    from lstmops.registry.signing import sign
    from lstmops.registry.verify import FILE_NAME, Recorded, artifact_path, file_digest

    sha256, size = file_digest(file)
    signed = sign(key, sha256, size) if key is not None else None
    record = Recorded(sha256, size, artifact_path(sha256), signed and signed.signature, signed and signed.key_id)
    folder = record.artifact.rsplit("/", 1)[0]
    if not client.list_artifacts(run_id, record.artifact):
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(prefix="lstmops-register-") as tmp:  # stored as model.ts, whatever its name here
            shutil.copyfile(file, Path(tmp) / FILE_NAME)
            client.log_artifact(run_id, str(Path(tmp) / FILE_NAME), folder)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    return client.create_model_version(name, f"runs:/{run_id}/{folder}", run_id=run_id, tags={**(tags or {}), **record.tags()})
