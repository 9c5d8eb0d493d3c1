"""The task registry: which tasks exist and where each one lives.

A task is a room, ``tasks/NAME/``, with ``task.py`` (the ``Task`` interface of ``base.py``: data
stages, training batches and loss, evaluation and baselines, export, what the gate scores),
``settings.py`` (``Settings``: its pipeline's params.yaml) and ``template/`` (the params.yaml and
dvc.yaml that ``lstmops new NAME --task T`` writes). The shared parts (stages, flow, registry,
serving, training engine) reach a task only through this registry and that interface.

To add a task: make ``tasks/NAME/`` with those three, and add NAME here.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from lstmops.tasks.base import Evaluated, Exported, GateInputs, Task

if TYPE_CHECKING:
    from lstmops.config import Config

# name -> package; the first is the task of a pipeline made without --task.
TASKS = {
    "forecast": "lstmops.tasks.forecast",
    "charlm": "lstmops.tasks.charlm",
    "classify": "lstmops.tasks.classify",
    "long_lag": "lstmops.tasks.long_lag",
}
__all__ = ["Evaluated", "Exported", "GateInputs", "Task", "for_task", "names", "settings_for", "template_dir"]


def names() -> list[str]:
    return list(TASKS)


def _package(name: str) -> str:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def for_task(name: str) -> Task:
    """The module that implements a task (imported on demand: a task's heavy imports stay its own)."""
    return import_module(f"{_package(name)}.task")  # type: ignore[return-value]  # a module satisfies the Protocol


def settings_for(name: str) -> type[Config]:
    """The settings class of a task's pipelines."""
    return import_module(f"{_package(name)}.settings").Settings


def template_dir(name: str) -> Path:
    """The params.yaml and dvc.yaml that ``lstmops new`` copies for a task."""
    return Path(import_module(_package(name)).__file__).parent / "template"
