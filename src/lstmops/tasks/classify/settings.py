"""The classify pipeline's settings: the shared sections (``config.Config``) and ``classify``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from lstmops.config import Config, TaskSection, Section


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


class Settings(Config):
    """A classify pipeline's params.yaml."""

    SECTION: ClassVar[str] = "classify"
    task: Literal["classify"]
    classify: ClassifyConfig
