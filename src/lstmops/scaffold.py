"""``lstmops new``: a pipeline folder written from its task's template.

A template (``tasks/NAME/template/``) holds the pipeline's params.yaml, dvc.yaml and .gitignore (as .tmpl),
with ``{root}/`` where a path is relative to the project root (dvc.yaml's code dependencies, the
default source). Rendered at the root, ``{root}/`` is empty: the root's own pair is the forecast
template rendered there (``tests/test_layout.py`` holds them equal).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from lstmops.errors import ConfigError, LstmopsError
from lstmops.paths import PIPELINES

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# template file -> the pipeline's file (.tmpl: DVC must not read a template as a pipeline of this repository)
FILES = {"params.yaml.tmpl": "params.yaml", "dvc.yaml.tmpl": "dvc.yaml", "gitignore.tmpl": ".gitignore"}


def render(text: str, prefix: str) -> str:
    """A template file with ``{root}/`` replaced by the path from the pipeline to the project root."""
    return text.replace("{root}/", prefix)


def rendered(task: str, prefix: str) -> dict[str, str]:
    from lstmops.tasks import template_dir

    folder = template_dir(task)
    return {name: render((folder / template).read_text(), prefix) for template, name in FILES.items()}


def source_setting(given: str, pipeline: Path) -> str:
    """A source as the pipeline's params should name it: s3:// as given; a path relative to the
    pipeline's folder (where dvc.yaml and the stages resolve it), after checking it exists."""
    if given.startswith("s3://"):
        return given
    path = Path(given).resolve()
    if not path.exists():
        raise ConfigError(f"--source {given}: no such file or directory")
    return os.path.relpath(path, pipeline.resolve())


def new(project: Path, name: str, task: str, source: str | None = None) -> Path:
    """Write ``pipelines/NAME/`` for ``task``; its model is registered as ``lstmops-NAME``."""
    from lstmops import config
    from lstmops.tasks import names

    if not NAME.fullmatch(name):
        raise ConfigError(f"pipeline name {name!r}: use lowercase letters, digits, - and _ (at most 63, starting with a letter or digit)")
    if task not in names():
        raise ConfigError(f"--task {task}: not a task; expected one of {', '.join(names())}")
    dest = project / PIPELINES / name
    if dest.exists():
        raise LstmopsError(f"{dest}: already exists; choose another name or remove it")
    prefix = os.path.relpath(project.resolve(), dest.resolve()) + "/"  # "../../"
    files = rendered(task, prefix)
    scratch = dest.with_name(f".{name}.new")  # written whole, then renamed: never a half-made pipeline
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        for file, text in files.items():
            (scratch / file).write_text(text)
        schema = config.schema(config.read_params(scratch / "params.yaml"))
        settings = [f"{schema.MODEL_NAME_KEY}=lstmops-{name.replace('_', '-')}"]
        if source is not None:
            settings.append(f"{schema.SOURCE_KEY}={source_setting(source, dest)}")
        config.write_overrides(scratch, settings)
        scratch.rename(dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest
