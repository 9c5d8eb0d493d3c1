"""The baselines an LSTM classifier must beat, both fitted on the training sequences only:

- majority: the most frequent training class for every sequence, with the training class
  frequencies as its probabilities (a one-hot answer would have an infinite log loss);
- summary logistic regression: a non-recurrent model on per-sequence summary statistics (each
  feature's mean, standard deviation, first and last value), multinomial, L2-regularized, fitted
  in torch (float64, full-batch L-BFGS: deterministic); the L2 strength is chosen on the
  validation sequences, as the LSTM's epoch is, so both get the same help.

A recurrent model is only worth its cost if it beats what order-free statistics of the same
sequences already tell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # chosen on validation log loss
LBFGS_STEPS = 200


def summary_statistics(values: np.ndarray, offsets: list[int], lengths: list[int], index: np.ndarray) -> np.ndarray:
    """(sequences, 4 x features): each feature's mean, std, first and last value per sequence."""
    rows = []
    for i in index:
        seq = values[offsets[i] : offsets[i] + lengths[i]].astype(np.float64)
        rows.append(np.concatenate([seq.mean(axis=0), seq.std(axis=0), seq[0], seq[-1]]))
    return np.stack(rows)


def majority_probabilities(train_labels: np.ndarray, n_classes: int, n: int) -> np.ndarray:
    """The training class frequencies for each of ``n`` sequences; argmax = the majority class
    (ties go to the first class in the class order)."""
    prior = np.bincount(train_labels, minlength=n_classes) / len(train_labels)
    return np.tile(prior, (n, 1))


@dataclass
class LogisticRegression:
    """A fitted multinomial logistic regression on standardized inputs."""

    mean: np.ndarray
    std: np.ndarray
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = torch.from_numpy((x - self.mean) / self.std)
        with torch.no_grad():
            return torch.softmax(z @ self.weight + self.bias, dim=1).numpy()


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float) -> LogisticRegression:
    """Minimize mean cross-entropy + l2/2 ||W||^2 (bias not penalized) with L-BFGS."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z, target = torch.from_numpy((x - mean) / std), torch.from_numpy(y.astype(np.int64))
    weight = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight + bias, target) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LogisticRegression(mean, std, weight.detach(), bias.detach(), l2)


def summary_logistic(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, n_classes: int
) -> LogisticRegression:
    """The logistic regression whose L2 strength gives the lowest validation log loss."""
    from lstmops.tasks.classify.scoring import log_loss

    fits = [fit_logistic(train_x, train_y, n_classes, l2) for l2 in L2_GRID]
    return min(fits, key=lambda fit: log_loss(val_y, fit.probabilities(val_x)))
