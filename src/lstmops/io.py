"""Small file helpers: every output is written to a temporary path and renamed into place,
so a crash or a failed check never leaves a half-written file behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only read by setting, which
    would briefly make files created by other threads world-writable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)  # not Linux: fall back to set-and-restore
    os.umask(umask)
    return umask


def default_mode(directory: bool) -> int:
    """The permissions a plain ``open``/``mkdir`` would give under the current umask.
    (mkstemp/mkdtemp create private 0600/0700 files, which a serving user could not read.)"""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(default_mode(directory=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` as a whole if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(default_mode(directory=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON with sorted keys and a trailing newline, so equal payloads give equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def md5_file(path: Path) -> str:
    """MD5 of a file, the hash DVC records in dvc.lock, so lineage tags can be matched to it."""
    digest = hashlib.md5()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_torchscript(module, path: Path) -> None:
    """``torch.jit.save`` whose bytes do not depend on the file's name: saved to a named file, the
    archive's inner folder takes the name (a random temp name under ``atomic_path``); saved to a
    buffer it is always ``archive``. (Across processes the bytes still differ: TorchScript writes a
    random serialization id and some constants in hash order. A re-export in a new process is
    therefore a new registered version of the same model: see docs/registry.md.)"""
    import io as _io

    import torch

    buffer = _io.BytesIO()
    torch.jit.save(module, buffer)
    Path(path).write_bytes(buffer.getvalue())
