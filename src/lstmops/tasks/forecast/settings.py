"""The forecaster's settings: the shared sections (``config.Config``), the series (``data``, shared
with every table source) and the forecaster's own: split, window, model, evaluate, tune.

The repository root's params.yaml is a forecast pipeline; these are the sections it has."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from lstmops.config import Config, DataConfig, Section
from lstmops.monitor.settings import MonitorConfig
from lstmops.naming import model_name_for


class SplitConfig(Section):
    val_fraction: float = Field(gt=0, lt=0.5)
    test_fraction: float = Field(gt=0, lt=0.5)


class WindowConfig(Section):
    input_steps: int = Field(ge=2, description="History length fed to the LSTM.")
    horizon: int = Field(ge=1, description="Number of future target steps forecast at once.")


class ModelConfig(Section):
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    seasonal_skip: int | None = Field(
        default=None, ge=1,
        description="The head also reads the target this many steps before each forecast step (a linear map "
        "that starts as the seasonal-naive forecast); null: off. Between window.horizon and window.input_steps.",
    )  # fmt: skip




class DiagnosticsConfig(Section):
    """The forecaster's diagnostics report (reports/diagnostics/, see diagnostics.py)."""

    enabled: bool = Field(default=True, description="Write the report (residual ACF, error by hour, sensitivity).")
    windows: int = Field(
        default=512, ge=1, description="Evenly spaced test windows the model is rerun on for perturbations and permutations."
    )
    max_lag: int = Field(default=96, ge=1, description="Lags of the residual ACF and the Ljung-Box test, in steps.")
    seed: int = Field(default=0, description="Permutation importance's shuffles.")


class EvaluateConfig(Section):
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




class TuneConfig(Section):
    """``lstmops tune``: an Optuna study over ``space`` (README: Tuning)."""

    study: str = Field(default="forecast", description="Study name in the storage; a rerun with the same name resumes it.")
    storage: str = Field(
        default="tune/study.db",
        description="SQLite file of the study (relative to the project), or an Optuna RDB URL such as "
        "postgresql+psycopg://USER@HOST/DB, which workers on many machines share.",
    )
    trials: int = Field(default=20, ge=1, description="Trials the study should have (finished ones from earlier runs count).")
    timeout_s: float = Field(default=1800, gt=0, description="Wall-clock budget of one `lstmops tune` run.")
    startup_trials: int = Field(default=5, ge=0, description="Trials before pruning starts (and TPE's random start-up).")
    warmup_epochs: int = Field(default=20, ge=0, description="Epochs of a trial before it can be pruned.")
    heartbeat_s: int = Field(default=30, ge=1, description="Seconds between a running trial's heartbeats in the storage.")
    grace_s: int = Field(
        default=120, ge=1, description="A running trial without a heartbeat for this long is failed (its worker died)."
    )
    retries: int = Field(default=2, ge=0, description="Times a trial failed by a dead worker is queued again, same settings.")
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


class Settings(Config):
    """A forecast pipeline's params.yaml."""

    HAS_WINDOW_LOSSES: ClassVar[bool] = True  # the gate can run the Diebold-Mariano test
    RESUME_SECTIONS: ClassVar[frozenset[str]] = frozenset({"window", "model"})
    SOURCE_KEY: ClassVar[str] = "data.source"
    MODEL_NAME_KEY: ClassVar[str] = "mlflow.model_name"
    task: Literal["forecast"]
    data: DataConfig
    split: SplitConfig
    window: WindowConfig
    model: ModelConfig
    evaluate: EvaluateConfig
    tune: TuneConfig = TuneConfig()
    monitor: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _periods_fit_window(self) -> Settings:
        for name, period in self.evaluate.seasonal_periods.items():
            if not 1 <= period <= self.window.input_steps:
                raise ValueError(
                    f"evaluate.seasonal_periods.{name}={period} must be within 1..window.input_steps"
                )
        return self

    @model_validator(mode="after")
    def _seasonal_skip_fits_the_window(self) -> Settings:
        period = self.model.seasonal_skip
        if period is not None and not self.window.horizon <= period <= self.window.input_steps:
            raise ValueError(
                f"model.seasonal_skip={period} must be within window.horizon..window.input_steps "
                f"({self.window.horizon}..{self.window.input_steps}): each forecast step's lag must be in the history"
            )
        return self

    @model_validator(mode="after")
    def _burn_in_covers_a_window(self) -> Settings:
        if self.train.burn_in is not None and self.train.burn_in < self.window.input_steps:
            raise ValueError(f"train.burn_in={self.train.burn_in} must be at least window.input_steps")
        return self

    @property
    def source(self) -> str:
        return self.data.source

    @property
    def model_name(self) -> str:
        return self.mlflow.model_name or model_name_for(self.data.source)

    @property
    def burn_in(self) -> int:
        return self.train.burn_in or self.window.input_steps

    @property
    def target_index(self) -> int:
        return self.data.features.index(self.data.target)
