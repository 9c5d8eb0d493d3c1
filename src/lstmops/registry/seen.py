"""What a registered version trained and validated on, kept as ``seen.*`` version tags.

Each task says what its data stages let the model see (``Task.seen``: time cutoffs, sequence ids,
character ranges with file hashes, data seeds) as plain strings; this module stores them on the
version at registration and reads them back for the gate, which then scores the champion and the
challenger only on data that neither saw. A value longer than MLflow's tag limit is cut into
numbered parts (``seen.KEY.1of3`` ...), so a long list of sequence ids still fits.
"""

from __future__ import annotations

import re

PREFIX = "seen."
MAX_TAG = 5000  # MLflow's limit on a model version tag value
_KEY = re.compile(r"^seen\.(?P<key>[A-Za-z0-9_]+)(?:\.(?P<part>\d+)of(?P<parts>\d+))?$")


def as_tags(seen: dict[str, str]) -> dict[str, str]:
    """The version tags of a task's ``seen`` record."""
    tags: dict[str, str] = {}
    for key, value in seen.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise ValueError(f"seen key {key!r}: letters, digits and _ only")
        if len(value) <= MAX_TAG:
            tags[f"{PREFIX}{key}"] = value
            continue
        parts = [value[i : i + MAX_TAG] for i in range(0, len(value), MAX_TAG)]
        tags.update({f"{PREFIX}{key}.{i}of{len(parts)}": part for i, part in enumerate(parts, 1)})
    return tags


def from_tags(tags: dict[str, str]) -> dict[str, str] | None:
    """The ``seen`` record in a version's tags; None when it has none (registered before versions
    recorded it) or a value has lost a part (then nothing about it can be trusted)."""
    whole: dict[str, str] = {}
    pieces: dict[str, dict[int, str]] = {}
    counts: dict[str, int] = {}
    for name, value in tags.items():
        found = _KEY.match(name)
        if found is None:
            continue
        key = found["key"]
        if found["part"] is None:
            whole[key] = value
        else:
            pieces.setdefault(key, {})[int(found["part"])] = value
            counts[key] = int(found["parts"])
    for key, parts in pieces.items():
        if sorted(parts) != list(range(1, counts[key] + 1)):
            return None
        whole[key] = "".join(parts[i] for i in sorted(parts))
    return whole or None


def of_version(client, name: str, version: int) -> dict[str, str] | None:
    """The ``seen`` record of a registered version (None: it has none)."""
    return from_tags(client.get_model_version(name, str(version)).tags)
