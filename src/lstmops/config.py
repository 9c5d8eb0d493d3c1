"""One typed config, loaded from params.yaml and overridable as ``-S key=value``.

Every section forbids unknown keys, so a typo in params.yaml or on the command line
fails at load time with the dotted key in the message, before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lstmops.errors import ConfigError

PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
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


class TrainConfig(Section):
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
    adapt_threads: bool = Field(
        default=True,
        description="On CPU, use fewer intra-op threads while other processes use the cores (cpus.ThreadGovernor).",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    nproc_per_node: int = Field(
        default=1, ge=1,
        description="Processes of data-parallel training on this machine (one per GPU): above 1 the train stage "
        "launches torchrun --nproc_per_node N (DistributedDataParallel; gloo on CPU).",
    )  # fmt: skip


class TaskSection(Section):
    """What every task other than forecast has in its own section: where its data comes from, the
    registered model its versions go to, and overrides of the shared ``train`` section."""

    source: str = Field(description="Where the task's data comes from (a path, or an s3:// key or prefix).")
    model_name: str = Field(description="Registered model name of this task.")
    train: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the shared `train` section for this task (epochs, learning_rate, ...)."
    )


class MlflowConfig(Section):
    experiment: str
    model_name: str | None = Field(
        default=None, description="Registered model of the forecaster; null: lstmops-<source name> (see model_name_for)."
    )


class PromoteConfig(Section):
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
    min_unseen: int = Field(
        default=100, ge=1,
        description="Promote nothing unless at least this many test items (forecast: windows; classify, long_lag: "
        "sequences; charlm: characters) are new to both versions: neither trained nor validated on them.",
    )  # fmt: skip
    beat_baseline_in_backtest: bool = Field(
        default=True,
        description="Where the backtest ran (reports/backtest.json), the challenger's mean over the folds must also "
        "beat the best naive baseline's.",
    )


class RetrainConfig(Section):
    """How the Prefect flow treats stages that talk to servers (MLflow, S3)."""

    retries: int = Field(default=3, ge=0, description="Retries of a stage that failed because a server was unreachable.")
    retry_delay_s: float = Field(default=10.0, ge=0, description="First retry delay; it doubles on each retry.")
    in_process: bool = Field(
        default=True,
        description="Run each stage inside the flow's process (DVC still decides and records); "
        "false: `dvc repro --single-item` starts `lstmops STAGE` per stage.",
    )
    overridable: list[str] = Field(
        default_factory=lambda: ["train.epochs", "train.patience", "train.learning_rate", "train.device"],
        description="Settings a Prefect run's `overrides` parameter may change (a key, or a section for all its keys); "
        "anyone who can reach the Prefect API can start a run, so the source, the gate and the model name are not here.",
    )  # fmt: skip
    lock_wait_s: float = Field(
        default=3600, gt=0,
        description="How long a flow run waits for another run of the same pipeline (the same registered model) to end.",
    )  # fmt: skip


class Config(Section):
    """What every pipeline's params.yaml has. A task's ``Settings`` (``tasks/NAME/settings.py``)
    adds its own sections; ``load`` picks the class that the file's ``task`` names."""

    # The task's own section, whose ``source``, ``model_name`` and ``train`` overrides apply; None:
    # the task's settings are top-level sections and it defines ``source`` and ``model_name`` itself.
    SECTION: ClassVar[str | None] = None
    # Whether the task's gate yields per-window losses (promote.require_significance needs them).
    HAS_WINDOW_LOSSES: ClassVar[bool] = False
    # The sections besides ``train`` that shape the model being trained: a saved training state
    # resumes only under the same values (``train.fingerprint``).
    RESUME_SECTIONS: ClassVar[frozenset[str]] = frozenset()
    # Where ``lstmops new`` writes the source and the registered model's name (dotted, as for -S).
    SOURCE_KEY: ClassVar[str] = ""
    MODEL_NAME_KEY: ClassVar[str] = ""

    seed: int
    task: str = Field(description="Which task this pipeline trains (tasks/NAME); fixed per pipeline.")
    train: TrainConfig
    mlflow: MlflowConfig
    promote: PromoteConfig = PromoteConfig()
    retrain: RetrainConfig = RetrainConfig()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.SECTION is not None:
            cls.RESUME_SECTIONS = cls.RESUME_SECTIONS or frozenset({cls.SECTION})  # a task's own section: all of it
            cls.SOURCE_KEY = cls.SOURCE_KEY or f"{cls.SECTION}.source"
            cls.MODEL_NAME_KEY = cls.MODEL_NAME_KEY or f"{cls.SECTION}.model_name"

    @model_validator(mode="after")
    def _train_overrides_are_settings(self) -> Config:
        section = self.task_section
        if section is not None and section.train:
            unknown = sorted(set(section.train) - set(TrainConfig.model_fields))
            if unknown:
                raise ValueError(f"{self.SECTION}.train.{unknown[0]}: unknown setting")
            TrainConfig.model_validate({**self.train.model_dump(), **section.train})
        return self

    @model_validator(mode="after")
    def _significance_needs_window_losses(self) -> Config:
        # Refused at load, before any training: only a gate with per-window losses can test significance.
        if self.promote.require_significance and not self.HAS_WINDOW_LOSSES:
            raise ValueError(
                f"promote.require_significance: the Diebold-Mariano test needs per-window forecast losses; "
                f"task {self.task} has none (set it to false)"
            )
        return self

    @property
    def task_section(self) -> TaskSection | None:
        """The task's own section (None when its settings are top-level sections)."""
        return None if self.SECTION is None else getattr(self, self.SECTION)

    @property
    def task_train(self) -> TrainConfig:
        """The shared training settings with the task section's overrides applied."""
        section = self.task_section
        if section is not None and section.train:
            return TrainConfig.model_validate({**self.train.model_dump(), **section.train})
        return self.train

    @property
    def source(self) -> str:
        """Where this pipeline's data comes from."""
        section = self.task_section
        if section is None:
            raise NotImplementedError(f"{type(self).__name__} has no task section: it must define source")
        return section.source

    @property
    def model_name(self) -> str:
        """The registered model this pipeline's versions go to."""
        section = self.task_section
        if section is None:
            raise NotImplementedError(f"{type(self).__name__} has no task section: it must define model_name")
        return section.model_name


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


def schema(raw: dict[str, Any], origin: str = PARAMS_FILE) -> type[Config]:
    """The settings class of the task that ``raw``'s ``task`` names (``tasks/NAME/settings.py``)."""
    from lstmops.tasks import names, settings_for  # the task registry: looked up, not imported at load

    name = raw.get("task")
    if not isinstance(name, str) or name not in names():
        raise ConfigError(f"{origin}: task: {name!r} is not a task; expected one of {', '.join(names())}")
    return settings_for(name)


def validate(raw: dict[str, Any], origin: str = PARAMS_FILE) -> Config:
    """Build the typed config of the pipeline's task, turning pydantic's report into one line per bad key."""
    try:
        return schema(raw, origin).model_validate(raw)
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
        raise ConfigError(f"{path}: params file not found (run in a pipeline's folder, or give --pipeline DIR)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return raw


def load(root: Path = Path("."), overrides: list[str] | None = None) -> Config:
    """Load ``params.yaml`` under ``root`` with optional ``key=value`` overrides."""
    path = root / PARAMS_FILE
    for text in overrides or []:
        if parse_override(text)[0] == ["task"]:
            # A pipeline trains one task; another task is another pipeline (its own params, outputs, model).
            raise ConfigError(f"override {text!r}: task is fixed by {path}; use --pipeline DIR, or `lstmops new NAME --task T`")
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
    rt.preserve_quotes, rt.width = True, 4096  # quotes and line lengths as the user wrote them
    # null stays `null` (ruamel would write an empty value), so a written file reads as it was
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
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


def check_overridable(overrides: list[str], allowed: list[str], origin: str = "retrain.overridable") -> None:
    """Refuse, in one line, an override whose key is not in ``allowed`` (a key, or a section)."""
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if not any(key == a or key.startswith(a + ".") for a in allowed):
            raise ConfigError(f"override {text!r}: {key} may not be set by a run's parameters (allowed by {origin}: {', '.join(allowed) or 'none'})")


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``key=value`` strings whose values read back as the same YAML (null, floats, lists)."""
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in values.items()]  # fmt: skip


def as_section_overrides(cfg: Config) -> list[str]:
    """Every setting of ``cfg`` as one override per section (``train={...}``), ``task`` aside:
    another process that loads them over the same params.yaml gets ``cfg`` back exactly."""
    return as_overrides({key: value for key, value in cfg.model_dump(mode="json").items() if key != "task"})


def read_params_file(path: Path) -> list[str]:
    """A params file (``tune/best_params.yaml`` or any partial params.yaml) as ``-S`` overrides."""
    return as_overrides(flatten(read_params(path)))
