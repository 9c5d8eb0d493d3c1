"""Where data comes from: a local CSV/Parquet file, a directory or glob of such partitions, or
``s3://bucket/key`` objects (a key, or a prefix ending in ``/``) read with boto3.

S3 credentials and endpoint come from the standard AWS environment and config files
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``~/.aws/...``), so any
S3-compatible server works.
"""

from __future__ import annotations

import glob
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lstmops.errors import DataError, LstmopsError, ServiceUnavailable

READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}  # file suffix -> reader
SUFFIXES = tuple(READERS)


def is_s3(source: str) -> bool:
    return source.startswith("s3://")


def local_files(source: str, root: Path) -> list[Path]:
    """The files a local source names: one file, every data file of a directory, or a glob."""
    path = Path(source) if Path(source).is_absolute() else root / source
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{source}: directory has no .csv or .parquet files")
        return files
    if any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path)))
        if not files:
            raise DataError(f"{source}: no files match")
        return files
    return [path]


def s3_error(source: str, exc: Exception) -> LstmopsError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return DataError(f"{source}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if isinstance(exc, EndpointConnectionError):
        return ServiceUnavailable(f"{source}: S3 endpoint unreachable ({exc})")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return DataError(f"{source}: object not found")
        if code == "NoSuchBucket":
            return DataError(f"{source}: bucket not found")
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403"):
            return DataError(f"{source}: access denied ({code}); check the AWS credentials")
        return DataError(f"{source}: S3 error {code or exc}")
    return DataError(f"{source}: {exc.__class__.__name__}: {exc}")


def s3_keys(client, source: str) -> tuple[str, list[str]]:
    """Bucket and object keys: the key itself, or every data file under a prefix ending in '/'."""
    bucket, _, key = source[len("s3://") :].partition("/")
    if key and not key.endswith("/"):
        return bucket, [key]
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    keys = sorted(o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].lower().endswith(SUFFIXES))
    if not keys:
        raise DataError(f"{source}: no .csv or .parquet objects under this prefix")
    return bucket, keys


def download_s3(source: str, into: Path) -> list[tuple[Path, str]]:
    """Download the objects ``source`` names into ``into``; returns (local file, s3:// URI) in key order."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = boto3.client("s3")
        bucket, keys = s3_keys(client, source)
        files = []
        for i, key in enumerate(keys):
            target = into / f"{i:06d}{Path(key).suffix.lower()}"
            client.download_file(bucket, key, str(target))
            files.append((target, f"s3://{bucket}/{key}"))
        return files
    except (BotoCoreError, ClientError) as exc:
        raise s3_error(source, exc) from None


def _labelled(files: list[tuple[Path, str]], source: str) -> list[tuple[Path, str]]:
    """A source of one file is named as the user wrote it; partitions by their own names."""
    return files if len(files) > 1 else [(files[0][0], source)]


@contextmanager
def source_files(source: str, root: Path) -> Iterator[list[tuple[Path, str]]]:
    """The local files of ``source`` in order, each with the name to give it in messages.
    S3 objects are downloaded into a temporary directory that lasts as long as the block."""
    if not is_s3(source):
        yield _labelled([(f, str(f)) for f in local_files(source, root)], source)
        return
    with tempfile.TemporaryDirectory(prefix="lstmops-s3-") as tmp:
        yield _labelled(download_s3(source, Path(tmp)), source)
