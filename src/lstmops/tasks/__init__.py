"""What a task means. Each task (``params.yaml``'s ``task``) supplies its data stages, the
batches and loss the one training engine runs, its metrics and baselines, and the exported
artifact's interface; the stages, the flow, tracking, the registry and the gate are shared.

To add a task: write a module with the functions ``forecast.py`` has (ingest, validate, prepare,
trainer, load_model, evaluate, export, gate_inputs), map its name to it in ``TASKS``, add the
name to ``config.Config.task``, and give it a section in ``params.yaml``.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

TASKS = {"forecast": "lstmops.tasks.forecast", "charlm": "lstmops.tasks.charlm.task"}  # name -> module


def for_task(name: str) -> ModuleType:
    """The module that implements a task (imported on demand: a task's heavy imports stay its own)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return import_module(TASKS[name])
