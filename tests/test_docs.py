"""The documentation cannot rot: the site builds with --strict, the README stays a front page, and every
``lstmops <command>`` in a code block of README.md or docs/ names a command the CLI has."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 250

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})")
# `lstmops WORD [WORD]` where a shell would run it: at the start of a line, after a path (.venv/bin/lstmops),
# a prompt ($ ), a shell operator (&&, ||, |, ;, $( ) or a backquote. Output tables that happen to hold the
# word "lstmops" mid-line (a benchmark's row label) are not commands and are not matched.
INVOCATION = re.compile(
    r"(?:^\s*(?:\$\s+)?|/|&&\s*|\|\|?\s*|;\s*|\$\(\s*|`)lstmops(?:\s+([a-z][a-z0-9_-]*))?(?:\s+([a-z][a-z0-9_-]*))?"
)


def documents() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line inside a fenced code block."""
    out, fence = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(2)
        elif match and match.group(2).startswith(fence) and not line.strip()[len(match.group(2)):].strip():
            fence = None
        else:
            out.append((number, line))
    return out


def cli_commands() -> dict[str, set[str] | None]:
    """Command name -> its subcommands' names for a sub-app (package, deploy), None for a plain command."""
    import click
    import typer

    from lstmops.cli import app

    group = typer.main.get_command(app)
    return {
        name: set(command.commands) if isinstance(command, click.Group) else None
        for name, command in group.commands.items()
    }


def invocations() -> list[tuple[str, int, str, str | None]]:
    """(file, line, command, subcommand word or None) for every lstmops invocation in a code block."""
    found = []
    for path in documents():
        for number, line in code_lines(path):
            for match in INVOCATION.finditer(line):
                if match.group(1):
                    found.append((str(path.relative_to(REPO)), number, match.group(1), match.group(2)))
    return found


def test_the_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_the_docs_name_only_commands_the_cli_has():
    commands = cli_commands()
    seen = invocations()
    assert len(seen) > 20, "expected the README and docs to show lstmops commands in code blocks"
    wrong = []
    for where, line, command, sub in seen:
        if command not in commands:
            wrong.append(f"{where}:{line}: lstmops {command}: no such command")
        elif commands[command] is not None and sub not in commands[command]:
            wrong.append(f"{where}:{line}: lstmops {command} {sub or ''}: {command} has {sorted(commands[command])}")
    assert not wrong, "commands in the docs that the CLI does not have:\n" + "\n".join(wrong)


def test_the_invocation_pattern():
    lines = {
        ".venv/bin/lstmops run -S seed=1": ("run", None),
        "lstmops package sagemaker --out x": ("package", "sagemaker"),
        "cd pipelines/charlm && lstmops run": ("run", None),
        "torchrun --standalone .venv/bin/lstmops train": ("train", None),
        "(a)  lstmops sequence          72,695": None,  # a benchmark's output row
        "lstmops                            642     0": None,
        "models:/lstmops-vic-elec@champion": None,
        "src/lstmops/tasks/base.py": None,
    }
    for line, expected in lines.items():
        match = next((m for m in INVOCATION.finditer(line) if m.group(1)), None)
        got = (match.group(1), match.group(2)) if match else None
        assert got == expected, line


def test_the_site_builds_strict(tmp_path):
    """Broken links, missing nav pages and unknown anchors fail the build (mkdocs --strict); offline."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"), "--config-file", str(REPO / "mkdocs.yml")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice about its successor: noise here
    )
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    assert (site / "index.html").exists()
    # README.md is not part of the site, so mkdocs does not check its links: every link into docs/ must
    # name a page that was built, and an anchor that page has.
    broken = []
    for target, anchor in re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#([^)\s]+))?\)", README.read_text(encoding="utf-8")):
        page = Path(target).relative_to("docs").with_suffix("")
        html = site / (page.parent if page.name == "index" else page) / "index.html"
        if not html.exists():
            broken.append(f"README.md: {target}: no such page")
        elif anchor and f'id="{anchor}"' not in html.read_text(encoding="utf-8"):
            broken.append(f"README.md: {target}#{anchor}: no such anchor")
    assert not broken, "\n".join(broken)
