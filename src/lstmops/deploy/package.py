"""``model.tar.gz`` for SageMaker: ``model.pt`` (the TorchScript forecaster) at the top level and
``code/inference.py`` (the handlers of AWS's PyTorch inference container). The lstmops image
serves the same tarball from ``/opt/ml/model/model.pt`` and ignores ``code/``.

No ``code/requirements.txt``: the handlers need only torch and numpy, which AWS's container
has, and an endpoint with network isolation could not install anything anyway.

The tarball is reproducible (sorted entries, fixed times and owners, no gzip timestamp), so one
model always gives the same bytes and the same hash, which names its SageMaker model.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lstmops.errors import LstmopsError
from lstmops.io import atomic_path

HANDLERS = Path(__file__).with_name("inference.py")
MODEL_ENTRY = "model.pt"
CODE_ENTRY = "code/inference.py"
EPOCH = 946684800  # 2000-01-01: any fixed time; 0 upsets some unpackers


@dataclass(frozen=True)
class Packaged:
    path: Path
    sha256: str
    source: str  # where the model came from: a file's name and hash, or NAME/VERSION
    features: list[str]
    input_steps: int
    horizon: int
    model_sha256: str = ""  # of model.pt: the deploy sets it as LSTMOPS_MODEL_SHA256 for the handlers to check

    def summary(self) -> str:
        return (
            f"wrote {self.path} (model.pt from {self.source}, {CODE_ENTRY}; sha256 {self.sha256[:12]}; "
            f"{self.input_steps}+ steps x {len(self.features)} features -> {self.horizon} forecasts)"
        )


def package_sagemaker(out: Path, model: Path | None = None, model_uri: str | None = None, cwd: Path | None = None) -> Packaged:
    """Fetch the TorchScript (a file, or a registered version's own file, checked against the
    sha256 and signature it records: ``registry/verify.py``), check that it loads and forecasts,
    and write the tarball atomically."""
    from lstmops.serve.loader import ModelLoadError

    cwd = cwd or Path.cwd()
    if model is not None and model_uri is not None:
        raise LstmopsError("give either --model or --model-uri, not both")
    try:
        with tempfile.TemporaryDirectory(prefix="lstmops-package-") as tmp:
            path, source = fetch_model(model, model_uri, cwd, Path(tmp))
            loaded = check_model(path, source)
            model_sha256 = file_sha256(path)
            with atomic_path(out) as partial:
                write_tarball(partial, path.read_bytes(), HANDLERS.read_bytes())
    except ModelLoadError as exc:
        raise LstmopsError(str(exc)) from None
    return Packaged(out, file_sha256(out), source, loaded.features, loaded.input_steps, loaded.horizon, model_sha256)


def fetch_model(model: Path | None, model_uri: str | None, cwd: Path, tmp: Path) -> tuple[Path, str]:
    from lstmops.serve.loader import RegistrySource, file_version
    from lstmops.serve.server import registry_tracking_uri

    if model_uri is not None:
        source = RegistrySource(model_uri, registry_tracking_uri(cwd, os.environ))
        version = source.resolve()  # NAME/VERSION: an alias is read once, here
        return source.download(version.rsplit("/", 1)[1], tmp), version
    path = model if model is not None else cwd / "models" / "model.ts"
    if not path.is_file():
        hint = "" if model is not None else " (run `lstmops export`, or give --model FILE or --model-uri)"
        raise LstmopsError(f"{path}: model file not found{hint}")
    return path, file_version(path)


def check_model(path: Path, source: str):
    """The server's own load and self-check: a model that would not serve is not packaged."""
    from lstmops.serve.loader import load_torchscript

    return load_torchscript(path, source)


def write_tarball(path: Path, model: bytes, handlers: bytes) -> None:
    entries = {"code/": None, CODE_ENTRY: handlers, MODEL_ENTRY: model}
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name in sorted(entries):
                tar.addfile(*entry(name, entries[name]))


def entry(name: str, data: bytes | None) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
    """World-readable entries owned by root: the server may run as any user (the image's is 10001)."""
    info = tarfile.TarInfo(name.rstrip("/"))
    info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "root", "root"
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        return info, None
    info.size, info.mode = len(data), 0o644
    return info, io.BytesIO(data)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
