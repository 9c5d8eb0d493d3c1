"""Classification metrics from class probabilities: accuracy, error rate, macro-F1, log loss,
per-class precision and recall, and the confusion matrix. numpy only (sklearn is not a
dependency); every figure is over sequences, one vote each."""

from __future__ import annotations

import numpy as np

PROB_FLOOR = 1e-15  # log loss of a probability of 0: large and finite, as sklearn clips


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-probability (nats) of the true class."""
    return float(np.mean(-np.log(np.clip(probs[np.arange(len(labels)), labels], PROB_FLOOR, 1.0))))


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class(matrix: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class; a class never predicted has precision 0
    (as sklearn's zero_division=0), so macro-F1 punishes a model that ignores a class."""
    out = {}
    for i, name in enumerate(classes):
        tp, predicted, actual = matrix[i, i], matrix[:, i].sum(), matrix[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": round(float(precision), 6), "recall": round(float(recall), 6),
                     "f1": round(float(f1), 6), "support": int(actual)}  # fmt: skip
    return out


def scores(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float]:
    """The headline figures of one classifier (rounded: they go to JSON, tags and the gate)."""
    predicted = probs.argmax(axis=1)
    accuracy = float(np.mean(predicted == labels))
    by_class = per_class(confusion(labels, predicted, len(classes)), classes)
    present = [c for c, m in by_class.items() if m["support"]]
    return {
        "accuracy": round(accuracy, 6),
        "error_rate": round(1 - accuracy, 6),
        # Macro-F1 over the classes the test data has: a class absent from test says nothing.
        "macro_f1": round(float(np.mean([by_class[c]["f1"] for c in present])), 6),
        "log_loss": round(log_loss(labels, probs), 6),
    }
