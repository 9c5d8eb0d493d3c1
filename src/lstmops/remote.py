"""DVC remote set-up: an S3 (or S3-compatible) remote for the data snapshots and models.

The remote URL goes into .dvc/config (committed); the endpoint and any credentials go into
.dvc/config.local (``--local``, never committed), so a clone needs only its own credentials.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lstmops.data.sources import is_s3
from lstmops.errors import LstmopsError


def dvc(root: Path, *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise LstmopsError(f"dvc {' '.join(args[:2])}: {reason[-1] if reason else 'failed'}")


def configure(root: Path, url: str, endpoint: str | None = None, name: str = "storage") -> list[str]:
    """Add ``url`` as the default DVC remote; endpoint and AWS credentials from the environment
    are stored in the git-ignored local config. Returns what was written where."""
    if not is_s3(url):
        raise LstmopsError(f"remote URL {url!r}: expected s3://bucket/prefix")
    dvc(root, "remote", "add", "--default", "--force", name, url)
    written = [f".dvc/config: remote {name} -> {url} (default)"]
    local = {"endpointurl": endpoint or os.environ.get("AWS_ENDPOINT_URL")}
    local["access_key_id"] = os.environ.get("AWS_ACCESS_KEY_ID")
    local["secret_access_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY")
    for key, value in local.items():
        if value:
            dvc(root, "remote", "modify", "--local", name, key, value)
            written.append(f".dvc/config.local: {key}")
    return written
