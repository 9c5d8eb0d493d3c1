"""The contract between a task and the shared parts of lstmops.

A task's ``task.py`` module implements ``Task``: the stages call it and never ask which task it
is. What only some tasks can do is a capability of its own (``Backtests``, ``Tunes``, ``Compares``,
``Generates``): the shared part checks ``isinstance(task, Capability)``, not the task's name.
A module satisfies a Protocol by having the functions, so a task stays a module of plain
functions (``tests/test_layout.py`` checks every registered task against these).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from lstmops.config import Config


# The most an exported TorchScript file may differ from its eager model on the test data (in the
# units of what it outputs); float32 scripting and eager modules agree to ~1e-6. Every export checks
# it and refuses the file, and the gate checks the recorded difference again.
TOLERANCE = 1e-4


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
    """How the gate scores any version's TorchScript file on the newest test data that no version
    it compares trained or validated on (``Task.gate_inputs``'s ``seen``)."""

    metric: str  # lower is better
    baselines: dict[str, float]  # scored on the same unseen items as the models
    score: Callable[[Any], float]  # ScriptModule -> the metric over the unseen items
    problem: Callable[[Any], str | None]  # why a model cannot score this data (None: it can)
    unit: str  # what the task scores: windows, sequences, characters
    held_out: int  # the test items of the pipeline's data
    unseen: int  # of them, those that none of the ``seen`` records covers: what ``score`` scores
    scored_on: str  # one line: which items were scored, and why any were left out
    # For promote.require_significance (the Diebold-Mariano test): ScriptModule -> one loss per
    # test window, and the steps per window (the HAC lag is horizon - 1). None: the task cannot
    # test significance (its Settings has HAS_WINDOW_LOSSES false, so config refuses the setting).
    losses: Callable[[Any], Any] | None = None
    horizon: int = 1


# --- the interface every task implements ---------------------------------------------------------


@runtime_checkable
class Task(Protocol):
    """One task: its data stages, training, evaluation, export and what the gate scores.

    Every function takes the pipeline's settings (the task's ``Settings``) and the pipeline's
    folder, and reads and writes the paths of ``paths.py`` under it.
    """

    def ingest(self, cfg: Config, root: Path) -> str:
        """Read the source into ``data/raw/snapshot.parquet``; return the stage's line."""

    def validate(self, cfg: Config, root: Path, data: str | None = None) -> str:
        """Check the snapshot (or ``data``); write ``reports/validation.json``; raise ValidationFailed."""

    def prepare(self, cfg: Config, root: Path) -> str:
        """Split (and scale, fitted on the training part only) into ``data/prepared``."""

    def trainer(self, cfg: Config, root: Path, device: torch.device) -> Any:
        """The batches, loss and validation the one training engine (``train.fit``) runs."""

    def load_model(self, path: Path) -> tuple[Any, dict]:
        """The eager model of a checkpoint, and its spec."""

    def evaluate(self, cfg: Config, root: Path) -> Evaluated:
        """Test metrics against the task's baselines, plots and reports."""

    def export(self, cfg: Config, root: Path) -> Exported:
        """Write ``models/model.ts`` (self-contained TorchScript) and check it against the eager model."""

    def seen(self, cfg: Config, root: Path) -> dict[str, str]:
        """What the pipeline's model trained and validated on, as a registered version's tags
        (``registry/seen.py`` adds the ``seen.`` prefix): time cutoffs, sequence ids, character
        ranges with file hashes, data seeds. The gate reads them back for ``gate_inputs``."""

    def gate_inputs(self, cfg: Config, root: Path, metrics: dict, seen: list[dict[str, str]]) -> GateInputs:
        """How the gate scores a challenger and the champion on the newest test data, leaving out
        whatever any of ``seen`` (``seen`` records of the versions compared) trained or validated on."""

    def lineage_tags(self, cfg: Config) -> dict[str, str]:
        """Extra tags of a registered version that say what its artifact reads (may be empty)."""

    def metrics_lines(self, metrics: dict) -> list[str]:
        """The run summary's metric lines (``lstmops run``)."""

    def artifact_line(self, root: Path, exported: dict) -> str:
        """The run summary's line about the exported artifact."""


# --- what only some tasks can do ------------------------------------------------------------------


@runtime_checkable
class Backtests(Protocol):
    def backtest(self, cfg: Config, root: Path) -> dict | None:
        """The rolling-origin report (None: switched off in the settings)."""

    def backtest_lines(self, report: dict) -> list[str]:
        """What ``lstmops backtest`` prints."""


@runtime_checkable
class Tunes(Protocol):
    def tune(self, root: Path, overrides: list[str], trials: int | None, timeout_s: float | None) -> list[str]:
        """Search the settings' tuning space; return what ``lstmops tune`` prints."""


@runtime_checkable
class Compares(Protocol):
    def compare(
        self, cfg: Config, root: Path, a: str, b: str, loss: str, level: float, registry: Callable[[], tuple[Any, str]]
    ) -> tuple[dict, list[str]]:
        """Score two models (files, versions or runs) on the pipeline's test data: (JSON, table lines)."""


@runtime_checkable
class Generates(Protocol):
    def sample_text(self, model: Path | None, version: Callable[[], tuple[Any, Any]] | None, prompt: str, chars: int,
                 temperature: float, seed: int) -> str:  # fmt: skip
        """Sample from a file, or from a registry version (``version()``: client and resolved version)."""


@dataclass
class Observed:
    """The pipeline's newest data as the monitor reads it (a task that ``Monitors``)."""

    actuals: Any  # pandas Series: the target in original units, indexed by time
    features: Any  # pandas DataFrame: the model's input columns, indexed by time
    # origins (DatetimeIndex) and horizon -> DataFrame (origin, step, forecaster, forecast): every naive
    # forecast on those origins that the data before each origin allows
    baselines: Callable[[Any, int], Any]
    # rows the champion was trained on (None: unknown) -> its training span's features (drift's reference)
    reference: Callable[[int | None], Any]
    frequency: str = ""  # the step between rows (a pandas offset)


@runtime_checkable
class Predicts(Protocol):
    def predict(self, cfg: Config, root: Path, model: Any, after: Any, limit: int) -> Any:
        """Forecasts of a loaded model (``serve.loader.Loaded``) from the pipeline's newest data: a
        DataFrame (origin, step, target_time, forecast), from every origin of ``monitor.every`` later
        than ``after`` (a Timestamp, or None), at most ``limit`` of the newest; raise DataError, in
        one line, for data the model cannot read."""


@runtime_checkable
class Monitors(Protocol):
    def observe(self, cfg: Config, root: Path) -> Observed:
        """The actuals, the features, the naive forecasts and the training span, from the newest data."""
