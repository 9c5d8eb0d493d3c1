"""What a task means. Each task (``params.yaml``'s ``task``) supplies its data stages, the
batches and loss the one training engine runs, its metrics and baselines, and the exported
artifact's interface; the stages, the flow, tracking, the registry and the gate are shared.

To add a task: write a module with the functions ``forecast.py`` has (ingest, validate, prepare,
trainer, load_model, evaluate, export, gate_inputs), map its name to it in ``TASKS``, add the
name to ``config.Config.task``, and give it a section in ``params.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from types import ModuleType

TASKS = {"forecast": "lstmops.tasks.forecast.task", "charlm": "lstmops.tasks.charlm.task", "classify": "lstmops.tasks.classify.task",
         "long_lag": "lstmops.tasks.long_lag.task"}  # name -> module


def for_task(name: str) -> ModuleType:
    """The module that implements a task (imported on demand: a task's heavy imports stay its own)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return import_module(TASKS[name])


# --- what a task's stages return to the shared ones (stages.py) ----------------------------------


@dataclass
class Evaluated:
    """What a task's evaluation wrote and what goes to the training run in MLflow."""

    summary: str  # printed by the stage
    files: list[Path]  # logged under evaluation/
    metrics: dict[str, float]  # logged once
    series: list[tuple[str, float, int]]  # (name, value, step): logged as one batch
    # More files under their own artifact directory (dir -> files), e.g. the forecaster's diagnostics/.
    artifacts: dict[str, list[Path]] = field(default_factory=dict)


@dataclass
class Exported:
    """The parity check of an exported file, and how MLflow should describe the model."""

    check: dict  # max_abs_diff and what was checked
    signature: object  # mlflow ModelSignature
    metadata: dict  # MLflow model metadata, also written to models/export.json
    summary: str


@dataclass
class GateInputs:
    """How the gate scores any version's TorchScript file on the newest test data."""

    metric: str  # lower is better
    baselines: dict[str, float]
    score: object  # Callable[[ScriptModule], float]
    problem: object  # Callable[[ScriptModule], str | None]: why a model cannot score this data
    # For promote.require_significance (the Diebold-Mariano test): Callable[[ScriptModule], ndarray]
    # giving one loss per test window, and the steps per window (the HAC lag is horizon - 1).
    # None: the task cannot test significance (config.py refuses the setting for it).
    losses: object = None
    horizon: int = 1
