"""Where a registered version came from, and how to get it back: `lstmops lineage` and `lstmops checkout`.

Everything is read from the MLflow backend (version tags, the training run and its ``lineage/``
artifacts), so it works on a machine that never ran the pipeline.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lstmops.config import flatten
from lstmops.errors import LstmopsError
from lstmops.registry.trail import champion_version

LINEAGE_FILES = ("params.yaml", "dvc.lock")  # logged by the register stage under lineage/


def resolve(client, uri: str, default_name: str):
    """A model version from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``@ALIAS`` or ``VERSION``."""
    from mlflow.exceptions import MlflowException

    spec = uri.removeprefix("models:/")
    name, alias, version = default_name, None, None
    if "@" in spec:
        name, alias = spec.split("@", 1)
    elif "/" in spec:
        name, version = spec.rsplit("/", 1)
    else:
        version = spec
    name = name or default_name
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if not version.isdigit():
            raise LstmopsError(f"{uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or a version number")
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise LstmopsError(f"{uri}: no such model version in the registry ({exc.error_code})") from None


def param_diff(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """'key: theirs -> mine' for every setting that differs."""
    a, b = flatten(mine), flatten(theirs)
    return [f"{k}: {b.get(k)!r} -> {a.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def describe(client, version) -> list[str]:
    """The lineage report of one version, as lines."""
    name, tags = version.name, version.tags
    run = client.get_run(version.run_id)
    aliases = ", ".join(version.aliases) or "none"
    commit = tags.get("git_commit", "unknown")
    lines = [
        f"{name} version {version.version} (aliases: {aliases})",
        f"  git commit     {commit}" + ("  (tracked files differed from it)" if commit.endswith("-dirty") else ""),
        f"  data           md5 {tags.get('data_md5')} from {tags.get('data_source')} (validation: {tags.get('validation')})",
        f"  training run   {version.run_id} (experiment id {run.info.experiment_id})",
        "  test metrics   " + ", ".join(f"{k[5:]} {v}" for k, v in sorted(tags.items()) if k.startswith("test_")),
        f"  model file     {model_file_line(version)}",
    ]
    if "gate.passed" in tags:
        lines.append(f"  gate           {'passed' if tags['gate.passed'] == 'True' else 'failed'}: {tags['gate.reason']}")
    champion = champion_version(client, name)
    if champion is not None and champion != int(version.version):
        theirs = json.loads(client.get_model_version(name, str(champion)).tags.get("params", "{}"))
        diff = param_diff(json.loads(tags.get("params", "{}")), theirs)
        lines.append(f"  params vs the champion (version {champion}): " + ("same" if not diff else ""))
        lines.extend(f"    {line}" for line in diff)
    uri = f"models:/{name}/{version.version}"
    lines += [
        "reproduce (in the pipeline's folder):",
        f"  git checkout {commit.removesuffix('-dirty')}",
        f"  lstmops checkout {uri}   # params.yaml and dvc.lock as this version's run used them",
        "  dvc pull --allow-missing dvc.yaml  # this pipeline's data and models from the DVC remote, if set up",
        "  dvc repro evaluate        # reruns what is missing; on CPU reports/metrics.json equals the run's "
        "evaluation/metrics.json byte for byte",
    ]
    return lines


def model_file_line(version) -> str:
    """The version's file as recorded, and whether the stored file still matches it (verify.py)."""
    from lstmops.errors import ModelRefused
    from lstmops.registry.verify import fetch_verified, recorded

    try:
        rec = recorded(version)
        with tempfile.TemporaryDirectory(prefix="lstmops-lineage-") as tmp:
            fetch_verified(version, Path(tmp))
    except ModelRefused as exc:
        return f"REFUSED: {exc}"
    except LstmopsError as exc:  # the artifact store is down: say so, the rest of the report stands
        return f"not checked: {exc}"
    signed = f", signed by key {rec.key_id}" if rec.signature else ", unsigned"
    return f"sha256 {rec.sha256} ({rec.size:,} bytes{signed}) at {rec.artifact}: the stored file matches"


def checkout(client, version, root: Path) -> list[Path]:
    """Write the version's params.yaml and dvc.lock into ``root`` (each replaced atomically),
    after checking that the version's stored model file still matches what it records: the
    lineage of a version whose file was changed is not restored."""
    import mlflow

    from lstmops.io import atomic_path
    from lstmops.registry.verify import fetch_verified

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        fetch_verified(version, Path(tmp) / "model")
        try:
            local = Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="lineage", dst_path=tmp))
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise LstmopsError(f"version {version.version}: its run has no lineage/ artifacts ({exc.__class__.__name__})") from None
        missing = [f for f in LINEAGE_FILES if not (local / f).is_file()]
        if missing:
            raise LstmopsError(f"version {version.version}: lineage/{missing[0]} was not logged with its run")
        for name in LINEAGE_FILES:
            with atomic_path(root / name) as out:
                shutil.copyfile(local / name, out)
            written.append(root / name)
    return written
