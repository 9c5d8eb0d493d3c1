"""One typed config, loaded from params.yaml and overridable as ``-S key=value``.

Every section forbids unknown keys, so a typo in params.yaml or on the command line
fails at load time with the dotted key in the message, before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lstmops.errors import ConfigError
from lstmops.naming import model_name_for

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
    # Cleaning policies (data/clean.py). The defaults are strict: nothing is changed, validation refuses.
    duplicates: Literal["fail", "first", "last", "mean"] = Field(
        default="fail", description="Rows sharing a timestamp: fail, keep the first / last row, or average the features."
    )
    na_values: list[str] = Field(
        default_factory=list, description="Placeholder strings read as missing in the feature columns (e.g. nil, '-')."
    )
    snap_tolerance: str | float | None = Field(
        default=None,
        description="Move a timestamp onto the frequency grid when it is at most this far off: a duration ('90s') "
        "or a fraction of data.frequency (0.3); null: no snapping.",
    )  # fmt: skip
    gaps: Literal["fail", "segment"] = Field(
        default="fail", description="Gaps longer than fill_limit: fail, or split the series into segments there."
    )

    @field_validator("na_values", mode="before")
    @classmethod
    def _placeholders_are_text(cls, value: Any) -> Any:
        # YAML reads `-999` as a number; the placeholder is the text as written in the file.
        if not isinstance(value, list):
            return value  # pydantic names the key: not a list
        return [str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in value]

    @property
    def snap(self) -> Any:
        """``snap_tolerance`` as a pandas Timedelta (None: no snapping)."""
        import pandas as pd

        if self.snap_tolerance is None:
            return None
        if isinstance(self.snap_tolerance, str):
            return pd.Timedelta(self.snap_tolerance)
        return self.snap_tolerance * pd.Timedelta(self.frequency)

    @model_validator(mode="after")
    def _snap_tolerance_is_below_half_a_step(self) -> DataConfig:
        if self.snap_tolerance is None:
            return self
        import pandas as pd

        try:
            step, tolerance = pd.Timedelta(self.frequency), self.snap
        except ValueError:
            raise ValueError(
                f"data.snap_tolerance={self.snap_tolerance!r}: not a duration ('90s') or a fraction, "
                f"or data.frequency={self.frequency!r} is not a fixed step"
            ) from None
        # Half a step or more could snap a row to either of two grid points.
        if not pd.Timedelta(0) < tolerance < step / 2:
            raise ValueError(
                f"data.snap_tolerance={self.snap_tolerance!r} must be above 0 and below half of data.frequency ({self.frequency})"
            )
        return self

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
    seasonal_skip: int | None = Field(
        default=None, ge=1,
        description="The head also reads the target this many steps before each forecast step (a linear map "
        "that starts as the seasonal-naive forecast); null: off. Between window.horizon and window.input_steps.",
    )  # fmt: skip


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
    hidden_size: int = Field(default=256, ge=1)
    num_layers: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    chunk_length: int = Field(default=100, ge=2, description="Characters per truncated-BPTT chunk.")
    streams: int = Field(default=128, ge=1, description="Parallel contiguous streams (the batch); state carries across chunks.")
    ngram_order: int = Field(default=5, ge=1, description="Order of the smoothed n-gram baseline.")
    temperatures: list[float] = Field(default_factory=lambda: [0.2, 0.5, 1.0, 1.2], min_length=1)
    sample_chars: int = Field(default=300, ge=1, description="Characters per sample in the report.")
    sample_prompt: str = Field(default="", description="Prompt of the report's samples ('' : the test text's first line).")
    model_name: str = Field(default="lstmops-charlm", description="Registered model name of this task.")


class ClassifyConfig(TaskSection):
    """``task: classify``: one label per variable-length multivariate sequence, from long-format
    data (a row per sequence per step)."""

    source: str = Field(description="A CSV or Parquet file, a directory or glob of them, or an s3:// key or prefix.")
    sequence_column: str = Field(description="The column naming each row's sequence.")
    step_column: str = Field(description="The column ordering a sequence's rows (numbers or timestamps).")
    features: list[str] = Field(min_length=1, description="Numeric input columns, in the model's order.")
    label_column: str = Field(description="The column holding each sequence's class (one value per sequence).")
    split_column: str | None = Field(
        default=None, description="A column naming a predefined split (train/test) to honour; null: a stratified test carve."
    )
    min_length: int = Field(default=1, ge=1, description="Validation: every sequence has at least this many steps.")
    max_length: int = Field(default=1000, ge=1, description="Validation: every sequence has at most this many steps.")
    val_fraction: float = Field(default=0.2, gt=0, lt=0.5, description="Validation carve of the training sequences, per class.")
    test_fraction: float = Field(default=0.3, gt=0, lt=0.5, description="Test carve per class (only without split_column).")
    hidden_size: int = Field(default=32, ge=1, description="LSTM units per direction.")
    num_layers: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Between LSTM layers and before the head.")
    bidirectional: bool = Field(default=True, description="Read each sequence both ways (packed: padding is never read).")
    batch_size: int = Field(default=32, ge=1, description="Sequences per optimizer step.")
    augment_std: float = Field(
        default=0.5, ge=0, lt=1,
        description="Training only: each sequence's scaled features get a random gain 1 + N(0, s) and offset N(0, s) per "
        "feature, as a recording session shifts them; 0: off.",
    )  # fmt: skip
    gate_metric: Literal["error_rate", "log_loss"] = Field(
        default="error_rate", description="What the gate compares (lower is better): 1 - test accuracy, or test log loss (nats)."
    )
    model_name: str = Field(default="lstmops-classify", description="Registered model name of this task.")

    @model_validator(mode="after")
    def _columns_are_distinct(self) -> ClassifyConfig:
        named = [self.sequence_column, self.step_column, self.label_column, *self.features]
        named += [self.split_column] if self.split_column is not None else []
        twice = sorted({c for c in named if named.count(c) > 1})
        if twice:
            raise ValueError(f"column {twice[0]!r} is named twice among the sequence, step, label, split and feature columns")
        if self.min_length > self.max_length:
            raise ValueError(f"min_length={self.min_length} exceeds max_length={self.max_length}")
        return self


class LongLagSource(_Section):
    """What every long-lag problem has: its batches, how often the criterion is checked, the
    held-out sets and the training budget (in training sequences)."""

    batch_size: int = Field(default=16, ge=1, description="Training sequences per optimizer step.")
    check_every: int = Field(
        default=500, ge=1, description="Training sequences between checks of the criterion (rounded up to whole batches)."
    )
    val_sequences: int = Field(default=2000, ge=1, description="Held-out sequences the criterion is checked on while training.")
    test_sequences: int = Field(default=2560, ge=1, description="Test sequences (evaluation and the gate); 2560 in the paper.")
    max_sequences: int = Field(
        default=300_000, ge=1, description="Training budget: training stops here if the criterion was not met."
    )

    @property
    def sequences_per_check(self) -> int:
        return -(-self.check_every // self.batch_size) * self.batch_size


class AddingConfig(LongLagSource):
    """Experiment 4: the adding problem."""

    T: int = Field(default=100, ge=22, description="Minimal sequence length (lengths T..T + T/10); 100, 500, 1000 in the paper.")


class EmbeddedReberConfig(LongLagSource):
    """Experiment 1: the embedded Reber grammar, with a fixed training set as in the paper."""

    train_strings: int = Field(default=256, ge=1, description="Training strings, drawn from at random (256 in the paper).")
    batch_size: int = Field(default=8, ge=1)
    check_every: int = Field(default=64, ge=1)
    val_sequences: int = Field(
        default=256, ge=1,
        description="Held-out strings, none a training string; the criterion is checked on them and the training strings.",
    )  # fmt: skip
    test_sequences: int = Field(default=256, ge=1, description="Test strings, none a training string (256 in the paper).")
    max_sequences: int = Field(default=50_000, ge=1)


class TemporalOrderConfig(LongLagSource):
    """Experiment 6a: temporal order, two relevant and widely separated symbols."""

    length: tuple[int, int] = Field(default=(100, 110), description="Sequence lengths, both ends included.")
    t1: tuple[int, int] = Field(default=(10, 20), description="Position of the first X/Y, counted from 1 (the E).")
    t2: tuple[int, int] = Field(default=(50, 60), description="Position of the second X/Y.")

    @model_validator(mode="after")
    def _positions_fit(self) -> TemporalOrderConfig:
        if not 2 <= self.t1[0] <= self.t1[1] < self.t2[0] <= self.t2[1] < self.length[0] <= self.length[1]:
            raise ValueError("needs 2 <= t1 low <= t1 high < t2 low <= t2 high < length low <= length high")
        return self


class LongLagConfig(TaskSection):
    """``task: long_lag``: the long-time-lag problems of Hochreiter & Schmidhuber (1997). One epoch
    of the training engine is one check of the criterion, so ``train.epochs`` follows from the
    source's budget (``max_sequences``) and is not set here."""

    source: Literal["adding", "embedded_reber", "temporal_order"] = Field(
        default="adding", description="Which problem: a generator, not a file."
    )
    data_seed: int = Field(
        default=0, description="Seed of the held-out and test sets (and Reber's training strings); training sequences come from `seed`."
    )
    hidden_size: int = Field(default=32, ge=1)
    num_layers: int = Field(default=1, ge=1)
    chrono_init: bool = Field(
        default=True, description="Gate biases from the problem's longest lag (Tallec & Ollivier 2018); false: forget-gate bias 1."
    )
    quick_check: int = Field(
        default=256, ge=1, description="Held-out sequences scored first at a check; the rest only once all of these are correct."
    )
    threads: int | None = Field(
        default=1, ge=1, description="torch threads while training on CPU (these small steps run fastest on one); null: torch's default."
    )
    adding: AddingConfig = AddingConfig()
    embedded_reber: EmbeddedReberConfig = EmbeddedReberConfig()
    temporal_order: TemporalOrderConfig = TemporalOrderConfig()
    model_name: str = Field(default="lstmops-long-lag", description="Registered model name of this task.")

    @model_validator(mode="before")
    @classmethod
    def _budget_sets_epochs(cls, data: Any) -> Any:
        """One engine epoch is one check: epochs = budget / sequences per check; patience too,
        unless set (a long-lag run can plateau for a long time before it solves)."""
        if not isinstance(data, dict):
            return data
        sources = {"adding": AddingConfig, "embedded_reber": EmbeddedReberConfig, "temporal_order": TemporalOrderConfig}
        source = data.get("source", "adding")
        try:
            train = dict(data.get("train") or {})
            section = sources[source].model_validate(data.get(source) or {})
        except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
            return data  # field validation reports it, naming the key
        checks = -(-section.max_sequences // section.sequences_per_check)
        if train.get("epochs", checks) != checks:  # (a dumped config round-trips: its epochs agree)
            raise ValueError("long_lag.train.epochs follows from the budget: set long_lag.<source>.max_sequences instead")
        train["epochs"] = checks
        train.setdefault("patience", checks)
        return {**data, "train": train}

    @property
    def problem(self) -> LongLagSource:
        """The chosen source's section."""
        return getattr(self, self.source)


class DiagnosticsConfig(_Section):
    """The forecaster's diagnostics report (reports/diagnostics/, see diagnostics.py)."""

    enabled: bool = Field(default=True, description="Write the report (residual ACF, error by hour, sensitivity).")
    windows: int = Field(
        default=512, ge=1, description="Evenly spaced test windows the model is rerun on for perturbations and permutations."
    )
    max_lag: int = Field(default=96, ge=1, description="Lags of the residual ACF and the Ljung-Box test, in steps.")
    seed: int = Field(default=0, description="Permutation importance's shuffles.")


class EvaluateConfig(_Section):
    seasonal_periods: dict[str, int] = Field(
        description="Seasonal-naive baselines: name -> period in steps (must not exceed input_steps)."
    )
    plot_days: int = Field(ge=1, description="Span of the actual-vs-predicted plot, in forecasts.")
    mase_period: int | None = Field(
        default=None, ge=1,
        description="MASE's scale: the in-sample MAE of the seasonal naive forecast with this period on the training "
        "span; null: the first of seasonal_periods (1, persistence, if none).",
    )  # fmt: skip
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    backtest_folds: int = Field(
        default=0, ge=0, le=20,
        description="Rolling-origin backtest (`lstmops backtest`): expanding-window folds, each retrained; 0: off.",
    )  # fmt: skip


class MlflowConfig(_Section):
    experiment: str
    model_name: str | None = Field(
        default=None, description="Registered model of the forecaster; null: lstmops-<source name> (see model_name_for)."
    )


class PromoteConfig(_Section):
    """The champion/challenger gate (see registry/gate.py)."""

    metric: Literal["rmse", "mae", "mape"] = Field(
        default="rmse", description="Lower is better; scored in original units on the newest data's test windows."
    )
    min_improvement: float = Field(
        default=0.01, ge=0, lt=1,
        description="Relative margin: the challenger's metric must be at most (1 - min_improvement) x the champion's.",
    )  # fmt: skip
    require_significance: bool = Field(
        default=False,
        description="Also require a one-sided Diebold-Mariano test (challenger better than champion) on the per-window "
        "losses of the test windows, p < significance (task forecast only).",
    )
    significance: float = Field(default=0.05, gt=0, lt=1, description="The DM test's level under require_significance.")


class RetrainConfig(_Section):
    """How the Prefect flow treats stages that talk to servers (MLflow, S3)."""

    retries: int = Field(default=3, ge=0, description="Retries of a stage that failed because a server was unreachable.")
    retry_delay_s: float = Field(default=10.0, ge=0, description="First retry delay; it doubles on each retry.")
    in_process: bool = Field(
        default=True,
        description="Run each stage inside the flow's process (DVC still decides and records); "
        "false: `dvc repro --single-item` starts `lstmops STAGE` per stage.",
    )


class TuneConfig(_Section):
    """``lstmops tune``: an Optuna study over ``space`` (README: Tuning)."""

    study: str = Field(default="forecast", description="Study name in the storage; a rerun with the same name resumes it.")
    storage: str = Field(
        default="tune/study.db", description="SQLite file of the study (relative to the project), or an Optuna RDB URL."
    )
    trials: int = Field(default=20, ge=1, description="Trials the study should have (finished ones from earlier runs count).")
    timeout_s: float = Field(default=1800, gt=0, description="Wall-clock budget of one `lstmops tune` run.")
    startup_trials: int = Field(default=5, ge=0, description="Trials before pruning starts (and TPE's random start-up).")
    warmup_epochs: int = Field(default=20, ge=0, description="Epochs of a trial before it can be pruned.")
    space: dict[str, list[Any] | dict[str, Any]] = Field(
        default_factory=dict,
        description="Setting (dotted, as for -S) -> a list of choices, or {low, high} with optional log and step.",
    )

    @field_validator("space")
    @classmethod
    def _ranges_are_well_formed(cls, space: dict[str, Any]) -> dict[str, Any]:
        for key, spec in space.items():
            if isinstance(spec, list):
                if not spec:
                    raise ValueError(f"{key}: an empty list of choices")
                continue
            unknown = sorted(set(spec) - {"low", "high", "log", "step"})
            if unknown or not {"low", "high"} <= set(spec):
                raise ValueError(f"{key}: a range needs low and high (and optionally log, step), got {sorted(spec)}")
            if not spec["low"] < spec["high"]:
                raise ValueError(f"{key}: low {spec['low']} must be below high {spec['high']}")
            if spec.get("log") and spec["low"] <= 0:
                raise ValueError(f"{key}: a log range needs low > 0")
        return space


class Config(_Section):
    seed: int
    task: Literal["forecast", "charlm", "classify", "long_lag"] = Field(default="forecast", description="What the pipeline trains (see README: Tasks).")
    data: DataConfig
    split: SplitConfig
    window: WindowConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig
    promote: PromoteConfig = PromoteConfig()
    retrain: RetrainConfig = RetrainConfig()
    tune: TuneConfig = TuneConfig()
    charlm: CharLMConfig | None = None
    classify: ClassifyConfig | None = None
    long_lag: LongLagConfig | None = None

    @model_validator(mode="after")
    def _periods_fit_window(self) -> Config:
        for name, period in self.evaluate.seasonal_periods.items():
            if not 1 <= period <= self.window.input_steps:
                raise ValueError(
                    f"evaluate.seasonal_periods.{name}={period} must be within 1..window.input_steps"
                )
        return self

    @model_validator(mode="after")
    def _seasonal_skip_fits_the_window(self) -> Config:
        period = self.model.seasonal_skip
        if period is not None and not self.window.horizon <= period <= self.window.input_steps:
            raise ValueError(
                f"model.seasonal_skip={period} must be within window.horizon..window.input_steps "
                f"({self.window.horizon}..{self.window.input_steps}): each forecast step's lag must be in the history"
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

    @model_validator(mode="after")
    def _significance_needs_window_losses(self) -> Config:
        # Refused at load, before any training: only the forecaster's gate has per-window losses.
        if self.promote.require_significance and self.task != "forecast":
            raise ValueError(
                f"promote.require_significance: the Diebold-Mariano test needs per-window forecast losses; "
                f"task {self.task} has none (set it to false)"
            )
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
        if section is not None:
            return section.model_name
        return self.mlflow.model_name or model_name_for(self.data.source)

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
