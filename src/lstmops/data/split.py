"""The chronological split every sequence-in-time task uses: train, then validation, then test."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """Row boundaries: train is [0, train_end), validation [train_end, val_end), test [val_end, length)."""

    train_end: int
    val_end: int
    length: int


def chronological_split(length: int, val_fraction: float, test_fraction: float) -> Split:
    """Split by time: nothing from a later span is ever used to fit an earlier one."""
    val_end = length - round(length * test_fraction)
    train_end = val_end - round(length * val_fraction)
    return Split(train_end=train_end, val_end=val_end, length=length)
