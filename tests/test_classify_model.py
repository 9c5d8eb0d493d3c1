"""The classify model and artifact: packing makes a sequence's answer independent of the padding
around it; the TorchScript file scales, refuses bad input in one message and matches the eager
model; the metrics and both baselines on small known cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstmops.tasks.classify.artifact import ClassifierArtifact, eager_probabilities, script
from lstmops.tasks.classify.baselines import fit_logistic, majority_probabilities, summary_statistics
from lstmops.tasks.classify.model import ClassifierSpec, LSTMClassifier
from lstmops.tasks.classify.scoring import confusion, log_loss, per_class, scores

FEATURES = ["a", "b", "c"]
CLASSES = ["low", "mid", "high"]


def model(bidirectional: bool, layers: int = 2) -> LSTMClassifier:
    torch.manual_seed(0)
    return LSTMClassifier(ClassifierSpec(3, 3, 8, layers, 0.0, bidirectional)).eval()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packing_gives_a_sequence_the_same_output_alone_and_padded_in_a_batch(bidirectional):
    net = model(bidirectional)
    alone = torch.randn(1, 5, 3)
    batch = torch.randn(3, 9, 3) * 10  # longer neighbours and large padding values
    batch[1, :5] = alone[0]
    lengths = torch.tensor([9, 5, 7])
    with torch.no_grad():
        single = net(alone, torch.tensor([5]))
        padded = net(batch, lengths)
        batch[1, 5:] = float("nan")  # whatever sits in the padding is never read
        nan_padded = net(batch, lengths)
    torch.testing.assert_close(padded[1], single[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(nan_padded, padded, atol=0, rtol=0)


def artifact(bidirectional: bool = True) -> torch.jit.ScriptModule:
    return script(model(bidirectional), [1.0, -2.0, 0.5], [2.0, 1.0, 4.0], FEATURES, CLASSES, min_length=2, max_length=12)


def test_the_artifact_scales_inside_returns_probabilities_and_matches_the_eager_model():
    scripted = artifact()
    raw = torch.randn(4, 10, 3) * 3
    lengths = torch.tensor([10, 2, 7, 4])
    mean, std = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 1.0, 4.0])
    probs = scripted(raw, lengths)
    assert probs.shape == (4, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4))
    scaled = ((raw - mean) / std).numpy()
    eager = eager_probabilities(model(True), scaled, lengths.numpy())
    np.testing.assert_allclose(probs.detach().numpy(), eager, atol=1e-6)
    assert list(scripted.classes) == CLASSES and list(scripted.features) == FEATURES and scripted.task == "classify"
    # a sequence alone gives what it gives in the batch, and NaN padding is harmless
    raw[1, 2:] = float("nan")
    torch.testing.assert_close(scripted(raw[1:2, :2], lengths[1:2])[0], scripted(raw, lengths)[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("x", "lengths", "message"),
    [
        (torch.zeros(5, 3), torch.tensor([5]), "expected a 3-d input (sequences x steps x features), got 2 dimension(s) of shape [5, 3]"),
        (torch.zeros(1, 5, 3, dtype=torch.int64), torch.tensor([5]), "expected float values (float32), got an integer or boolean tensor"),
        (torch.zeros(1, 5, 2), torch.tensor([5]), "expected 3 features (a, b, c), got 2"),
        (torch.zeros(0, 5, 3), torch.zeros(0, dtype=torch.int64), "expected at least one sequence, got 0"),
        (torch.zeros(2, 5, 3), torch.tensor([5]), "expected one length per sequence (2), got lengths of shape [1]"),
        (torch.zeros(1, 5, 3), torch.tensor([5.0]), "lengths must be integers"),
        (torch.zeros(2, 5, 3), torch.tensor([5, 6]), "sequence 1 has length 6, more than the 5 steps sent"),
        (torch.zeros(2, 5, 3), torch.tensor([5, 1]), "sequence 1 has 1 step(s), fewer than the 2 the model was trained on"),
        (torch.zeros(1, 14, 3), torch.tensor([13]), "sequence 0 has 13 steps, more than the 12 the model was trained on"),
        (torch.tensor([[[0.0, 0, 0], [0, float("inf"), 0]]]).repeat(2, 1, 1), torch.tensor([1, 2]), None),
    ],
)
def test_the_artifact_refuses_input_it_was_not_trained_for_naming_what_is_wrong(x, lengths, message):
    scripted = artifact()
    if message is None:  # lengths [1, 2]: sequence 0's only step is fine, sequence 1 reaches the infinity
        message = "sequence 0 has 1 step(s), fewer than the 2 the model was trained on"
    with pytest.raises(torch.jit.Error) as err:
        scripted(x, lengths)
    assert str(err.value).strip().splitlines()[-1].endswith(message)


def test_non_finite_values_are_refused_only_within_a_sequences_length():
    scripted = artifact()
    x = torch.zeros(2, 4, 3)
    x[1, 3, 0] = float("inf")
    scripted(x, torch.tensor([4, 3]))  # the infinity is padding
    with pytest.raises(torch.jit.Error, match="input contains NaN or infinite values in sequence 1"):
        scripted(x, torch.tensor([4, 4]))


def test_names_must_match_the_model():
    with pytest.raises(ValueError, match="do not match"):
        ClassifierArtifact(model(False), [0.0] * 3, [1.0] * 3, FEATURES, ["only", "two"], 1, 10)


# --- metrics and baselines ---------------------------------------------------------------------


def test_scores_on_a_known_case():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0, 1, 0], [0, 0.4, 0.6], [0.5, 0, 0.5]])
    matrix = confusion(labels, probs.argmax(1), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    by_class = per_class(matrix, CLASSES)
    assert by_class["low"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert by_class["mid"]["precision"] == pytest.approx(2 / 3) and by_class["mid"]["recall"] == 1.0
    assert by_class["high"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3, abs=1e-6), "support": 2}
    s = scores(labels, probs, CLASSES)
    assert s["accuracy"] == pytest.approx(4 / 6, abs=1e-6) and s["error_rate"] == pytest.approx(2 / 6, abs=1e-6)
    assert s["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]), abs=1e-6)
    assert s["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.9, 1, 0.6, 0.5])), abs=1e-6)
    assert log_loss(np.array([1]), np.array([[1.0, 0.0]])) == pytest.approx(-np.log(1e-15))  # clipped, finite


def test_the_majority_baseline_predicts_the_most_frequent_training_class_with_its_frequencies():
    probs = majority_probabilities(np.array([2, 2, 1, 0, 2]), 3, 4)
    assert probs.shape == (4, 3) and (probs.argmax(1) == 2).all()
    np.testing.assert_allclose(probs[0], [0.2, 0.2, 0.6])


def test_summary_statistics_and_the_logistic_regression_separate_what_the_statistics_separate():
    rng = np.random.default_rng(0)
    # class 0: flat sequences; class 1: the same mean but a larger spread (only std tells them apart)
    sequences = [rng.normal(0, 0.05 if c == 0 else 1.0, size=(int(rng.integers(10, 20)), 2)) for c in (0, 1) * 30]
    values = np.concatenate(sequences)
    lengths = [len(s) for s in sequences]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
    labels = np.array([0, 1] * 30)
    stats = summary_statistics(values, offsets, lengths, np.arange(60))
    assert stats.shape == (60, 8)
    np.testing.assert_allclose(stats[0], np.concatenate([sequences[0].mean(0), sequences[0].std(0), sequences[0][0], sequences[0][-1]]))
    fit = fit_logistic(stats[:40], labels[:40], 2, l2=1e-3)
    assert (fit.probabilities(stats[40:]).argmax(1) == labels[40:]).mean() >= 0.95  # the majority gets 0.5
    again = fit_logistic(stats[:40], labels[:40], 2, l2=1e-3)
    np.testing.assert_array_equal(again.probabilities(stats[40:]), fit.probabilities(stats[40:]))  # deterministic
