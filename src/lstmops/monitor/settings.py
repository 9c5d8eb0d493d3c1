"""The ``monitor`` section of a pipeline that forecasts: where forecasts are kept, which origins
``lstmops predict`` forecasts from, and when ``lstmops monitor`` calls the champion decayed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lstmops.config import Section


class DecayRule(Section):
    """In the spirit of Databricks mlops-stacks' monitoring: a day (one origin's scored forecast)
    violates when the champion's error exceeds a threshold; the champion has decayed when at least
    ``bad_days`` of the last ``of_days`` scored days violate."""

    metric: Literal["rmse", "mae"] = Field(default="rmse", description="The day's error that the rule reads.")
    vs_baseline: float | None = Field(
        default=None, ge=0,
        description="A day violates when the champion's error exceeds (1 + this) x the best naive forecast's that "
        "day; null (the default: one day's ratio to the naive forecasts is too noisy to judge by, see the replay "
        "in docs/monitor.md): not this comparison.",
    )  # fmt: skip
    vs_registered: float | None = Field(
        default=0.5, ge=0,
        description="A day violates when the champion's error exceeds (1 + this) x its test error at "
        "registration (the version's test_<metric> tag); null: not this comparison.",
    )  # fmt: skip
    bad_days: int = Field(default=3, ge=1, description="N: violating days among the last of_days that fire the rule.")
    of_days: int = Field(default=5, ge=1, description="M: the scored days the rule looks at.")
    cooldown_days: int = Field(
        default=3, ge=0, description="After firing, scored days of the same version before the rule may fire again."
    )

    @model_validator(mode="after")
    def _n_within_m(self) -> DecayRule:
        if self.bad_days > self.of_days:
            raise ValueError(f"monitor.rule.bad_days={self.bad_days} must be at most monitor.rule.of_days={self.of_days}")
        if self.vs_baseline is None and self.vs_registered is None:
            raise ValueError("monitor.rule: set vs_baseline or vs_registered (both null: the rule can never fire)")
        return self


class DriftSettings(Section):
    test: Literal["psi", "ks"] = Field(
        default="psi", description="psi: population stability index over the training span's deciles; ks: two-sample KS."
    )
    days: int = Field(default=7, ge=1, description="The newest days of data compared with the training span.")
    bins: int = Field(default=10, ge=2, le=100, description="PSI: quantile bins of the training span.")
    threshold: float = Field(
        default=0.2, gt=0, description="A feature drifts when PSI exceeds this (ks: when the KS statistic does)."
    )


class MonitorConfig(Section):
    store: str = Field(
        default="data/forecasts",
        description="The forecasts store: a directory (relative to the pipeline) or an s3://bucket/prefix.",
    )
    sql: str | None = Field(
        default=None,
        description="Also write forecasts to a SQL table: a SQLAlchemy URL, or $VAR to read it from the environment.",
    )
    sql_table: str = Field(default="lstmops_forecasts", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    every: str = Field(default="1D", description="Origins: times of day that are multiples of this (1D: midnight).")
    max_origins: int = Field(
        default=31, ge=1, le=1000, description="Most origins one predict run forecasts (the newest ones since the last run)."
    )
    days: int = Field(default=28, ge=1, le=366, description="Scored days (origins) the monitor's report covers.")
    on_decay: Literal["event", "run_deployment", "none"] = Field(
        default="event",
        description="When the rule fires: emit the Prefect event lstmops.monitor.decay (the retrain deployment's "
        "trigger), start the deployment directly, or only report.",
    )
    deployment: str = Field(default="lstmops-retrain/retrain", description="What on_decay: run_deployment starts.")
    rule: DecayRule = DecayRule()
    drift: DriftSettings = DriftSettings()

    @field_validator("every")
    @classmethod
    def _every_divides_a_day(cls, every: str) -> str:
        import pandas as pd

        try:
            step = pd.Timedelta(every)
        except ValueError:
            raise ValueError(f"{every!r} is not a duration such as '1D' or '12h'") from None
        if step <= pd.Timedelta(0) or pd.Timedelta("1D") % step != pd.Timedelta(0):
            raise ValueError(f"{every!r} must divide a day (e.g. 1D, 12h, 6h)")
        return every
