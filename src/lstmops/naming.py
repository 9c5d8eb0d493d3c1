"""The default registered-model name of a source. Its own module because `lstmops serve` needs it
and the server image carries neither pandas nor ruamel (which ``config`` reaches)."""

from __future__ import annotations

import re


def model_name_for(source: str) -> str:
    """``lstmops-<name of the source>``: the file's stem, or the directory's or S3 prefix's name, in
    lowercase with runs of other characters as '-'. A trailing year or date (``_2014``,
    ``-2024-05``) is dropped, so next year's file continues the same registered model (the
    embedded ``vic_elec_2014.csv`` gives ``lstmops-vic-elec``)."""
    for part in reversed(re.split(r"[/\\]", source.removeprefix("s3://"))):  # a glob's `*.csv` names nothing
        stem = re.sub(r"\.(csv|parquet|txt)$", "", re.sub(r"[*?\[\]]", "", part.lower()))
        stem = re.sub(r"[-_ .]?(19|20)\d\d([-_]?\d\d){0,2}$", "", stem)
        slug = re.sub(r"[^a-z0-9]+", "-", stem).strip("-")
        if slug:
            return f"lstmops-{slug}"
    return "lstmops-series"
