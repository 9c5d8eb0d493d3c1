"""One typed config, loaded from params.yaml and overridable as ``-S key=value``.

Every section forbids unknown keys, so a typo in params.yaml or on the command line
fails at load time with the dotted key in the message, before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lstmops.errors import ConfigError

PARAMS_FILE = "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    source: str = Field(description="Path of a CSV or Parquet file (relative to the project root).")
    time_column: str
    target: str
    features: list[str] = Field(min_length=1, description="Input columns; must include the target.")
    frequency: str = Field(description="Expected step between rows, a pandas offset such as '30min'.")
    series_column: str | None = Field(
        default=None, description="Long-format (panel) data: the column naming each row's series."
    )
    series_id: str | int | None = Field(default=None, description="The series to use from series_column.")
    irregular_index: Literal["fail", "resample"] = Field(
        default="fail", description="fail on gaps in the time index, or resample to `frequency` and fill gaps."
    )
    fill_limit: int = Field(default=0, ge=0, description="resample: the longest gap (in steps) filled by interpolation.")
    outlier_z: float | None = Field(
        default=None, gt=0, description="Flag values whose robust z-score (median/MAD) exceeds this."
    )
    outlier_max_share: float = Field(default=0.0, ge=0, lt=1, description="Share of outliers allowed per column.")
    warn_only: list[
        Literal["nulls", "unique", "increasing", "frequency", "bounds", "outliers", "drift_columns", "drift_dtypes", "drift_stats"]
    ] = Field(default_factory=lambda: ["drift_stats"], description="Checks that report a warning instead of stopping the run.")
    drift_threshold: float | None = Field(
        default=0.25, gt=0,
        description="Warn when a column's mean moves more than this many accepted-snapshot standard deviations, "
        "or its standard deviation changes by more than this fraction; null: no statistics drift check.",
    )  # fmt: skip
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Allowed [low, high] per feature; bounds of unused columns are ignored."
    )

    @model_validator(mode="after")
    def _target_is_a_feature(self) -> DataConfig:
        if self.target not in self.features:
            raise ValueError(f"target {self.target!r} must be listed in data.features")
        if len(set(self.features)) != len(self.features):
            raise ValueError("data.features lists a column twice")
        if (self.series_column is None) != (self.series_id is None):
            raise ValueError("data.series_column and data.series_id go together: set both or neither")
        return self


class SplitConfig(_Section):
    val_fraction: float = Field(gt=0, lt=0.5)
    test_fraction: float = Field(gt=0, lt=0.5)


class WindowConfig(_Section):
    input_steps: int = Field(ge=2, description="History length fed to the LSTM.")
    horizon: int = Field(ge=1, description="Number of future target steps forecast at once.")


class ModelConfig(_Section):
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)


class TrainConfig(_Section):
    mode: Literal["sequence", "window"] = Field(
        default="sequence",
        description="sequence: one LSTM pass per span trains a window at every position; window: one pass per window.",
    )
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="Windows per step (window mode).")
    positions: int = Field(default=84, ge=1, description="Training windows per span (sequence mode).")
    burn_in: int | None = Field(default=None, description="Steps before the first trained position; None: input_steps.")
    backprop_burn_in: bool = Field(
        default=False,
        description="Sequence mode: backpropagate through the burn-in too (False: it only sets the starting state).",
    )
    spans_per_batch: int = Field(default=16, ge=1, description="Spans per step (sequence mode).")
    warmup_steps: int = Field(default=0, ge=0, description="Linear learning-rate warm-up before the cosine decay.")
    ema_decay: float | None = Field(
        default=None, gt=0, lt=1, description="Validate and keep an exponential moving average of the weights."
    )
    checkpoint_every: int = Field(default=1, ge=1, description="Epochs between resumable training-state checkpoints.")
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    grad_clip: float = Field(gt=0)
    patience: int = Field(ge=1, description="Epochs without validation improvement before stopping.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"


class TaskSection(_Section):
    """What every task other than forecast has in its own section: where its data comes from, the
    registered model its versions go to, and overrides of the shared ``train`` section."""

    source: str = Field(description="Where the task's data comes from (a path, or an s3:// key or prefix).")
    model_name: str = Field(description="Registered model name of this task.")
    train: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the shared `train` section for this task (epochs, learning_rate, ...)."
    )


class CharLMConfig(TaskSection):
    """``task: charlm``: a character-level language model trained by stateful truncated BPTT."""

    source: str = Field(description="A .txt file, a directory of .txt files, or an s3:// key or prefix.")
    encoding: str = Field(default="utf-8", description="Text encoding of the source; bytes that do not decode fail ingest.")
    lowercase: bool = Field(default=True, description="Lowercase the text before the vocabulary is built.")
    min_chars: int = Field(default=10_000, ge=1, description="Validation: the text must have at least this many characters.")
    max_vocab: int = Field(default=256, ge=2, description="Validation: at most this many distinct characters.")
    val_fraction: float = Field(default=0.05, gt=0, lt=0.5, description="Contiguous validation span (after train).")
    test_fraction: float = Field(default=0.05, gt=0, lt=0.5, description="Contiguous test span (the end of the text).")
    embedding_size: int = Field(default=50, ge=1)
    hidden_size: int = Field(default=128, ge=1)
    num_layers: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    chunk_length: int = Field(default=100, ge=2, description="Characters per truncated-BPTT chunk.")
    streams: int = Field(default=128, ge=1, description="Parallel contiguous streams (the batch); state carries across chunks.")
    ngram_order: int = Field(default=5, ge=1, description="Order of the smoothed n-gram baseline.")
    temperatures: list[float] = Field(default_factory=lambda: [0.2, 0.5, 1.0, 1.2], min_length=1)
    sample_chars: int = Field(default=300, ge=1, description="Characters per sample in the report.")
    sample_prompt: str = Field(default="", description="Prompt of the report's samples ('' : the test text's first line).")
    model_name: str = Field(default="lstmops-charlm", description="Registered model name of this task.")


class EvaluateConfig(_Section):
    seasonal_periods: dict[str, int] = Field(
        description="Seasonal-naive baselines: name -> period in steps (must not exceed input_steps)."
    )
    plot_days: int = Field(ge=1, description="Span of the actual-vs-predicted plot, in forecasts.")


class MlflowConfig(_Section):
    experiment: str
    model_name: str


class PromoteConfig(_Section):
    """The champion/challenger gate (see registry/gate.py)."""

    metric: Literal["rmse", "mae", "mape"] = Field(
        default="rmse", description="Lower is better; scored in original units on the newest data's test windows."
    )
    min_improvement: float = Field(
        default=0.01, ge=0, lt=1,
        description="Relative margin: the challenger's metric must be at most (1 - min_improvement) x the champion's.",
    )  # fmt: skip


class RetrainConfig(_Section):
    """How the Prefect flow treats stages that talk to servers (MLflow, S3)."""

    retries: int = Field(default=3, ge=0, description="Retries of a stage that failed because a server was unreachable.")
    retry_delay_s: float = Field(default=10.0, ge=0, description="First retry delay; it doubles on each retry.")
    in_process: bool = Field(
        default=True,
        description="Run each stage inside the flow's process (DVC still decides and records); "
        "false: `dvc repro --single-item` starts `lstmops STAGE` per stage.",
    )


class Config(_Section):
    seed: int
    task: Literal["forecast", "charlm"] = Field(default="forecast", description="What the pipeline trains (see README: Tasks).")
    data: DataConfig
    split: SplitConfig
    window: WindowConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig
    promote: PromoteConfig = PromoteConfig()
    retrain: RetrainConfig = RetrainConfig()
    charlm: CharLMConfig | None = None

    @model_validator(mode="after")
    def _periods_fit_window(self) -> Config:
        for name, period in self.evaluate.seasonal_periods.items():
            if not 1 <= period <= self.window.input_steps:
                raise ValueError(
                    f"evaluate.seasonal_periods.{name}={period} must be within 1..window.input_steps"
                )
        return self

    @model_validator(mode="after")
    def _burn_in_covers_a_window(self) -> Config:
        if self.train.burn_in is not None and self.train.burn_in < self.window.input_steps:
            raise ValueError(f"train.burn_in={self.train.burn_in} must be at least window.input_steps")
        return self

    @model_validator(mode="after")
    def _task_has_its_section(self) -> Config:
        if self.task != "forecast":
            section = getattr(self, self.task)
            if section is None:
                raise ValueError(f"task {self.task} needs a {self.task} section")
            unknown = sorted(set(section.train) - set(TrainConfig.model_fields))
            if unknown:
                raise ValueError(f"{self.task}.train.{unknown[0]}: unknown setting")
            TrainConfig.model_validate({**self.train.model_dump(), **section.train})
        return self

    @property
    def task_section(self) -> TaskSection | None:
        """This task's own section (None for forecast, whose settings are the top-level ones)."""
        return None if self.task == "forecast" else getattr(self, self.task)

    @property
    def task_train(self) -> TrainConfig:
        """The shared training settings with this task's overrides applied."""
        section = self.task_section
        if section is not None and section.train:
            return TrainConfig.model_validate({**self.train.model_dump(), **section.train})
        return self.train

    @property
    def source(self) -> str:
        """Where this task's data comes from (``data.source`` or the task section's ``source``)."""
        section = self.task_section
        return section.source if section is not None else self.data.source

    @property
    def model_name(self) -> str:
        """The registered model this task's versions go to."""
        section = self.task_section
        return section.model_name if section is not None else self.mlflow.model_name

    @property
    def burn_in(self) -> int:
        return self.train.burn_in or self.window.input_steps

    @property
    def target_index(self) -> int:
        return self.data.features.index(self.data.target)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (``train.epochs``), as MLflow params and diffs show them."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], parsed value); values are read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key=value`` set; unknown keys are caught by validation."""
    import copy

    result = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path)} is not a known setting")
            node = child
        node[path[-1]] = value
    return result


def validate(raw: dict[str, Any], origin: str = PARAMS_FILE) -> Config:
    """Build the typed config, turning pydantic's report into one line per bad key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            lines.append(f"{origin}: {key}: {msg}")
        raise ConfigError("; ".join(lines)) from None


def read_params(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (run from the project root)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return raw


def load(root: Path = Path("."), overrides: list[str] | None = None) -> Config:
    """Load ``params.yaml`` under ``root`` with optional ``key=value`` overrides."""
    path = root / PARAMS_FILE
    raw = apply_overrides(read_params(path), overrides or [])
    return validate(raw, origin=str(path))


def write_overrides(root: Path, overrides: list[str]) -> Config:
    """Validate overrides, then write them into params.yaml (as ``dvc exp run -S`` does).

    DVC tracks params.yaml, so the file must hold the values a run used for ``dvc.lock``
    and ``dvc repro`` to agree. Comments and key order are kept (ruamel round-trip).
    """
    cfg = load(root, overrides)  # fails before anything is written
    if not overrides:
        return cfg
    from ruamel.yaml import YAML

    from lstmops.io import atomic_path

    path = root / PARAMS_FILE
    rt = YAML()
    doc = rt.load(path.read_text())
    for text in overrides:
        keys, value = parse_override(text)
        node = doc
        for part in keys[:-1]:
            node = node[part]
        node[keys[-1]] = value
    with atomic_path(path) as tmp, tmp.open("w") as fh:
        rt.dump(doc, fh)
    return cfg
