"""Verified loading: the one way any part of lstmops gets a registered version's model file.

A version's TorchScript file is stored once, content-addressed, in its training run
(``torchscript/<sha256>/model.ts``), and the version records at registration, as tags, the
file's ``model.sha256``, ``model.size``, ``model.artifact`` (that path) and, when export signed
it, ``model.signature`` and ``model.signing_key`` (``signing.py``). ``fetch_verified`` downloads
the version's own file into a temporary folder, checks size and sha256 against the tags and the
signature against the trusted keys, and only then returns its path for ``torch.jit.load``. A
file that fails is refused in one line naming the version and both hashes (``ModelRefused``);
a version that records no hash (registered before lstmops recorded one, or by hand) is refused too.

Used by the server (``serve/loader.py``), the gate, ``lstmops compare``, ``generate``,
``package sagemaker``, ``lineage`` and ``checkout``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from lstmops.errors import ModelRefused, ServiceUnavailable
from lstmops.registry.signing import check as check_signature
from lstmops.registry.signing import verify_keys

SHA256, SIZE, ARTIFACT = "model.sha256", "model.size", "model.artifact"
SIGNATURE, SIGNING_KEY = "model.signature", "model.signing_key"
FILE_NAME = "model.ts"
CONTENT_ADDRESSED = re.compile(r"^torchscript/(?P<sha256>[0-9a-f]{64})/model\.ts$")


class ArtifactUnavailable(ServiceUnavailable):
    """The version's file could not be downloaded; ``error_code`` is MLflow's, when it gave one."""

    def __init__(self, message: str, error_code: str | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


def artifact_path(sha256: str) -> str:
    """Where in its run a file with this hash is stored: once, never rewritten."""
    return f"torchscript/{sha256}/{FILE_NAME}"


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file."""
    digest, size = hashlib.sha256(), 0
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class Recorded:
    """What a version records about its file."""

    sha256: str
    size: int
    artifact: str
    signature: str | None = None
    key_id: str | None = None

    def tags(self) -> dict[str, str]:
        tags = {SHA256: self.sha256, SIZE: str(self.size), ARTIFACT: self.artifact}
        if self.signature:
            tags |= {SIGNATURE: self.signature, SIGNING_KEY: self.key_id or ""}
        return tags


def label(mv) -> str:
    return f"{mv.name} version {mv.version}"


def recorded(mv) -> Recorded:
    """The file record of a model version (``mlflow.entities.model_registry.ModelVersion``)."""
    tags = mv.tags or {}
    sha, size, artifact = tags.get(SHA256, ""), tags.get(SIZE, ""), tags.get(ARTIFACT, "")
    if not (re.fullmatch(r"[0-9a-f]{64}", sha) and size.isdigit() and artifact):
        raise ModelRefused(
            f"{label(mv)}: refused: it records no sha256 of its model file (registered before lstmops recorded "
            "one, or by hand); register it again with lstmops export + lstmops register"
        )
    return Recorded(sha, int(size), artifact, tags.get(SIGNATURE) or None, tags.get(SIGNING_KEY) or None)


def check_file(path: Path, expected: Recorded, what: str, keys: list | None = None) -> str | None:
    """Raise ModelRefused unless ``path`` has the expected size and sha256 and (with trusted keys)
    a valid signature; the id of the key that signed it, or None when no key is configured."""
    sha, size = file_digest(path)
    if sha != expected.sha256 or size != expected.size:
        raise ModelRefused(
            f"{what}: refused: its model file has sha256 {sha} ({size} bytes), "
            f"the version records sha256 {expected.sha256} ({expected.size} bytes)"
        )
    return check_signature(verify_keys() if keys is None else keys, sha, size, expected.signature, what)


def fetch_verified(mv, into: Path, tracking_uri: str | None = None, keys: list | None = None) -> Path:
    """Download version ``mv``'s own model file under ``into``, check it, return its path.

    Raises ModelRefused (hash, size or signature wrong, or nothing recorded) or
    ArtifactUnavailable (the download failed; ``error_code`` says whether the server answered).
    """
    import mlflow.artifacts

    expected = recorded(mv)
    keys = verify_keys() if keys is None else keys  # a bad key setting fails before any download
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    try:
        path = Path(mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=expected.artifact, dst_path=str(into), tracking_uri=tracking_uri,
        ))  # fmt: skip
    except Exception as exc:  # MLflow raises many kinds for a missing file or a server that is down
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactUnavailable(
            f"{label(mv)}: cannot download {expected.artifact} from run {mv.run_id} ({text})",
            getattr(exc, "error_code", None),
        ) from None
    check_file(path, expected, label(mv), keys)
    return path


def verified_run_file(run_id: str, into: Path, tracking_uri: str | None = None, keys: list | None = None) -> Path:
    """The model file of an MLflow run (``lstmops compare RUN_ID``): a run holds each exported file
    under its own hash, which is checked; a run with several files is ambiguous and refused."""
    from mlflow import MlflowClient
    import mlflow.artifacts

    try:
        listed = [f.path for f in MlflowClient(tracking_uri).list_artifacts(run_id, "torchscript") if f.is_dir]
    except Exception as exc:
        raise ArtifactUnavailable(f"run {run_id}: cannot list its artifacts ({type(exc).__name__})",
                                  getattr(exc, "error_code", None)) from None  # fmt: skip
    files = [artifact_path(Path(d).name) for d in listed if re.fullmatch(r"[0-9a-f]{64}", Path(d).name)]
    if len(files) != 1:
        found = "no exported model file" if not files else f"{len(files)} exported model files"
        raise ModelRefused(f"run {run_id}: {found} under torchscript/; name a registry version instead")
    sha = CONTENT_ADDRESSED.match(files[0])["sha256"]
    try:
        path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=files[0], dst_path=str(into),
                                                        tracking_uri=tracking_uri))  # fmt: skip
    except Exception as exc:
        raise ArtifactUnavailable(f"run {run_id}: cannot download {files[0]} ({type(exc).__name__})",
                                  getattr(exc, "error_code", None)) from None  # fmt: skip
    actual, size = file_digest(path)
    if actual != sha:
        raise ModelRefused(f"run {run_id}: refused: its model file has sha256 {actual}, its path records sha256 {sha}")
    # a run's file carries no signature: with trusted keys configured it is refused (name a version)
    check_signature(verify_keys() if keys is None else keys, actual, size, None, f"run {run_id}")
    return path
