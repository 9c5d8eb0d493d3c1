"""Atomic outputs: all or nothing, with the permissions a plain write would give."""

import os
import stat

import pytest

from lstmops.io import atomic_dir, atomic_path


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_outputs_get_the_umask_permissions_not_private_temp_ones(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "model.ts") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "prepared") as tmp:
            (tmp / "meta.json").write_text("{}")
    finally:
        os.umask(old)
    assert mode(tmp_path / "model.ts") == 0o644
    assert mode(tmp_path / "prepared") == 0o755


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
