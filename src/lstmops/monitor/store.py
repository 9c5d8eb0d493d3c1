"""The forecasts store: Parquet files under a local directory or an ``s3://bucket/prefix``.

One file per (model, version, origin), ``forecasts/model=NAME/version=V/origin=YYYYmmddTHHMMSS.parquet``,
written once: a forecast issued from an origin is never rewritten, so rows are never duplicated
for a (version, origin) however often ``predict`` runs, and what was forecast stays what was
forecast. The server's sampled traffic goes under ``served/date=YYYY-mm-dd/`` (``served.py``).
Local files are written to a temporary name and renamed; an S3 object appears whole or not at all.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote

import pandas as pd

from lstmops.errors import DataError

FORECASTS = "forecasts"
SERVED = "served"
ORIGIN_FORMAT = "%Y%m%dT%H%M%S"
KEY = re.compile(r"^forecasts/model=(?P<model>[^/]+)/version=(?P<version>\d+)/origin=(?P<origin>\d{8}T\d{6})\.parquet$")
COLUMNS = ["model", "version", "origin", "step", "target_time", "prediction", "issued_at"]


class Store(Protocol):
    location: str

    def exists(self, key: str) -> bool: ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def keys(self, prefix: str) -> list[str]: ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root, self.location = root, str(root)

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def put(self, key: str, data: bytes) -> None:
        from lstmops.io import atomic_path

        with atomic_path(self.root / key) as tmp:
            tmp.write_bytes(data)

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*.parquet") if not p.name.startswith("."))


class S3Store:
    def __init__(self, url: str) -> None:
        self.location = url.rstrip("/")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise DataError(f"monitor.store={url!r}: expected s3://bucket/prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._client = None

    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def call(self, what: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        from lstmops.data.sources import s3_error

        try:
            return fn(*args, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise s3_error(f"{self.location} ({what})", exc) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        from lstmops.data.sources import s3_error

        try:
            self.client().head_object(Bucket=self.bucket, Key=self.full(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise s3_error(f"{self.location} (head)", exc) from None
        except BotoCoreError as exc:
            raise s3_error(f"{self.location} (head)", exc) from None

    def put(self, key: str, data: bytes) -> None:
        self.call(key, self.client().put_object, Bucket=self.bucket, Key=self.full(key), Body=data)

    def get(self, key: str) -> bytes:
        return self.call(key, lambda: self.client().get_object(Bucket=self.bucket, Key=self.full(key))["Body"].read())

    def keys(self, prefix: str) -> list[str]:
        def listing() -> list[str]:
            pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.full(prefix) + "/")
            strip = len(self.prefix) + 1 if self.prefix else 0
            return sorted(o["Key"][strip:] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".parquet"))

        return self.call("list", listing)


def open_store(location: str, pipeline: Path) -> Store:
    """A store from ``monitor.store``: s3://bucket/prefix, or a directory relative to the pipeline."""
    if location.startswith("s3://"):
        return S3Store(location)
    path = Path(location)
    return LocalStore(path if path.is_absolute() else pipeline / path)


def forecast_key(model: str, version: int, origin: pd.Timestamp) -> str:
    return f"{FORECASTS}/model={quote(model, safe='')}/version={version}/origin={origin.strftime(ORIGIN_FORMAT)}.parquet"


def parse_key(key: str) -> tuple[str, int, pd.Timestamp] | None:
    m = KEY.match(key)
    if m is None:
        return None
    return unquote(m["model"]), int(m["version"]), pd.Timestamp(pd.to_datetime(m["origin"], format=ORIGIN_FORMAT))


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class Written:
    origins: list[pd.Timestamp]  # written now
    kept: list[pd.Timestamp]  # already in the store: left as they were
    rows: int


def write_forecasts(store: Store, model: str, version: int, rows: pd.DataFrame, issued_at: pd.Timestamp) -> Written:
    """One file per origin of ``rows`` (origin, step, target_time, forecast), unless that
    (version, origin) is already stored."""
    written, kept, count = [], [], 0
    for origin, part in rows.groupby("origin", sort=True):
        key = forecast_key(model, version, pd.Timestamp(origin))
        if store.exists(key):
            kept.append(pd.Timestamp(origin))
            continue
        frame = part.assign(model=model, version=version, issued_at=issued_at)[COLUMNS].reset_index(drop=True)
        store.put(key, to_parquet(frame))
        written.append(pd.Timestamp(origin))
        count += len(frame)
    return Written(written, kept, count)


def stored(store: Store, model: str) -> list[tuple[int, pd.Timestamp, str]]:
    """(version, origin, key) of every forecast file of ``model``."""
    found = []
    for key in store.keys(f"{FORECASTS}/model={quote(model, safe='')}"):
        parsed = parse_key(key)
        if parsed is not None and parsed[0] == model:
            found.append((parsed[1], parsed[2], key))
    return found


def last_origin(store: Store, model: str, version: int) -> pd.Timestamp | None:
    origins = [origin for v, origin, _ in stored(store, model) if v == version]
    return max(origins, default=None)


def read_forecasts(store: Store, model: str, since: pd.Timestamp | None = None, limit: int = 5000) -> pd.DataFrame:
    """Every stored forecast of ``model`` from origins at or after ``since`` (at most ``limit``
    files, the newest: the work of a monitor run is bounded however long the store grows)."""
    chosen = sorted((k for k in stored(store, model) if since is None or k[1] >= since), key=lambda k: (k[1], k[0]))
    frames = [pd.read_parquet(io.BytesIO(store.get(key))) for _, _, key in chosen[-limit:]]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(COLUMNS, ["object", "int64", "datetime64[ns]", "int64",
                             "datetime64[ns]", "float64", "datetime64[ns, UTC]"], strict=True)})  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def sql_url(setting: str) -> str:
    """``monitor.sql``: a SQLAlchemy URL, or ``$VAR``, read from the environment (keeps a password out of params)."""
    from lstmops.errors import ConfigError

    if setting.startswith("$"):
        value = os.environ.get(setting[1:])
        if not value:
            raise ConfigError(f"monitor.sql={setting}: the environment variable {setting[1:]} is not set")
        return value
    return setting
