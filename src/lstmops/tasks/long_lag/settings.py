"""The long_lag pipeline's settings: the shared sections (``config.Config``) and ``long_lag``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from lstmops.config import Config, TaskSection, Section


class LongLagSource(Section):
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


class Settings(Config):
    """A long_lag pipeline's params.yaml."""

    SECTION: ClassVar[str] = "long_lag"
    task: Literal["long_lag"]
    long_lag: LongLagConfig
