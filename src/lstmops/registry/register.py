"""Register: a version in the MLflow model registry that carries everything needed to serve it.

The registered model is the TorchScript module (scaling inside), so
``mlflow models serve -m models:/NAME@champion`` serves forecasts in original units.
Lineage lives in version tags: git commit, data snapshot hash (as in dvc.lock), params.
Releases are aliases (``champion``), never the deprecated stages.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

CHAMPION = "champion"
MAX_TAG = 5000  # MLflow's limit on a model version tag value


def git_commit(root: Path) -> str:
    """The checked-out commit, with '-dirty' when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # dvc.lock is rewritten by the run itself; it does not make the code dirty.
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def lineage_tags(root: Path, data_md5: str, params: dict[str, Any], metrics: dict[str, Any]) -> dict[str, str]:
    tags = {
        "git_commit": git_commit(root),
        "data_md5": data_md5,
        "params": json.dumps(params, sort_keys=True, separators=(",", ":"))[:MAX_TAG],
    }
    tags.update({f"test_{k}": str(v) for k, v in metrics.items()})
    return tags


def register(model_uri: str, name: str, tags: dict[str, str]) -> dict[str, Any]:
    """Create a version of ``name`` from ``model_uri``; the first version becomes the champion."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    version = mlflow.register_model(model_uri, name, tags=tags)
    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        champion = version.version
    return {"name": name, "version": int(version.version), "champion_version": int(champion), "run_id": version.run_id}
