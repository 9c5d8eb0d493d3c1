"""The report of a task's own data checks (text, sequences): ``reports/validation.json`` with the
checks and counts, an HTML page beside it, and one ValidationFailed line per failed check. The
table validation (``validate.py``) reports through Great Expectations' results instead."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from lstmops.errors import ValidationFailed
from lstmops.io import atomic_path, write_json


def publish(report: Path, label: str, checks: list[dict], counts: dict, render: Callable[[dict], str]) -> list[dict]:
    """Write the JSON and HTML reports (pass or fail), then raise on a failed check."""
    failed = [c["detail"] for c in checks if not c["success"]]
    summary = {"source": label, "success": not failed, "failed": failed, "counts": counts, "checks": checks}
    write_json(report, summary)
    with atomic_path(report.with_suffix(".html")) as tmp:
        tmp.write_text(render(summary))
    if failed:
        raise ValidationFailed([f"{label}: {line}" for line in failed])
    return checks


def verdict(summary: dict[str, Any]) -> str:
    return "PASSED" if summary["success"] else f"FAILED ({len(summary['failed'])} checks)"


def check_rows(checks: list[dict]) -> str:
    """The checks as HTML table rows, failed first."""
    return "".join(
        f'<tr class="{"pass" if c["success"] else "fail"}"><td>{"pass" if c["success"] else "FAIL"}</td>'
        f"<td>{escape(c['check'])}</td><td>{escape(c['detail'])}</td></tr>"
        for c in sorted(checks, key=lambda c: c["success"])
    )
