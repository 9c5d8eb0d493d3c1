"""The sequence classification task (``task: classify``): a variable-length multivariate sequence
in, its class out.

Data: long-format tables, one row per sequence per step (``sequences.py``), validated per
sequence, split by sequence (stratified, seeded; a predefined train/test column honoured),
scaled with the training sequences' statistics. Training: minibatches of whole sequences, padded
to the batch's longest and packed, cross-entropy on the class. Metrics: accuracy, macro-F1, log
loss, per-class precision and recall and a confusion matrix, beside a majority-class and a
summary-statistics logistic regression baseline. Artifact: a TorchScript file taking padded
sequences and lengths and returning class probabilities (``tasks/classify/artifact.py``).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lstmops import paths
from lstmops.tasks.classify.settings import Settings
from lstmops.io import read_json, write_json
from lstmops.tasks.base import Evaluated, Exported, GateInputs

EVAL_BATCH = 512  # sequences per no-grad forward pass
BASELINES = ("majority", "summary_logreg")

# --- data stages --------------------------------------------------------------------------------


def ingest(cfg: Settings, root: Path) -> str:
    from lstmops.tasks.classify.sequences import ingest_sequences

    snap = ingest_sequences(cfg.classify, root, root / paths.SNAPSHOT)
    return f"ingested {snap.rows:,} rows, {snap.sequences:,} sequences from {cfg.classify.source} -> {paths.SNAPSHOT}"


def validate(cfg: Settings, root: Path, data: str | None = None) -> str:
    """Validate the snapshot, or with ``data`` any table source, standalone."""
    from lstmops.tasks.classify.sequences import ingest_sequences, validate_sequences

    if data is None:
        checks = validate_sequences(cfg.classify, root / paths.SNAPSHOT, root / paths.VALIDATION, cfg.classify.source)
        # The accepted profile (a DVC output of validate) records what passed; forecast drift skips it.
        counts = read_json(root / paths.VALIDATION)["counts"]
        write_json(root / paths.ACCEPTED_PROFILE, {"task": "classify", **counts})
        sequences = counts["sequences"]
        return f"validation passed: {len(checks)} checks, {sequences:,} sequences -> {paths.VALIDATION} (and .html)"
    report = paths.VALIDATION.with_name(f"validation-{Path(data).stem or 'data'}.json")
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "snapshot.parquet"
        ingest_sequences(cfg.classify.model_copy(update={"source": data}), root, snapshot)
        checks = validate_sequences(cfg.classify, snapshot, root / report, data)
    return f"validation passed: {len(checks)} checks -> {report} (and .html)"


def prepare(cfg: Settings, root: Path) -> str:
    from lstmops.tasks.classify.sequences import prepare_sequences

    p = prepare_sequences(cfg.classify, root / paths.SNAPSHOT, root / paths.PREPARED, cfg.seed)
    return (
        f"prepared {len(p.ids):,} sequences x {len(p.features)} features, {len(p.classes)} classes: "
        f"train {p.count('train')}, validation {p.count('val')}, test {p.count('test')} (test from {p.split_from}; "
        f"validation a stratified carve of train; scaler fitted on train) -> {paths.PREPARED}"
    )


# --- training: whole sequences, padded per batch and packed ----------------------------------------


def padded(sequences: list[np.ndarray], n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    from lstmops.tasks.classify.sequences import pad

    x, lengths = pad(sequences, n_features)
    return torch.from_numpy(x), torch.from_numpy(lengths)


class ClassifyTrainer:
    """The classifier's side of the training engine (``train.Trainer``). A batch's rows are
    sequence numbers; each step pads its sequences to the longest among them and packs them."""

    unit, terms_per_unit, batch_setting = "sequences", 1, "classify.batch_size"

    def __init__(self, cfg: Settings, prepared_dir: Path, device: torch.device) -> None:
        from lstmops.tasks.classify.sequences import SequencesPrepared, load_values, scaled_sequences
        from lstmops.tasks.classify.model import ClassifierSpec, LSTMClassifier

        c, self.meta = cfg.classify, SequencesPrepared.load(prepared_dir)
        if device.type == "cpu":
            # A step's matrices are tiny (a batch of short sequences): a second intra-op thread
            # costs more in synchronization than it computes. Measured on 2 busy cores: 0.19 s
            # per epoch on one thread, 0.5 to 6 s on two. (Training has a process of its own.)
            torch.set_num_threads(1)
        values = load_values(prepared_dir)
        every = scaled_sequences(self.meta, values, np.arange(len(self.meta.ids)))
        x, self.lengths = padded(every, len(self.meta.features))
        self.x = x.to(device)  # every sequence, padded once; lengths stay on the CPU for packing
        self.labels = torch.tensor(self.meta.labels, dtype=torch.int64, device=device)
        self.train_rows = torch.from_numpy(self.meta.indices("train"))
        self.val_rows = torch.from_numpy(self.meta.indices("val"))
        self.batch_size, self.augment_std = c.batch_size, c.augment_std
        self.spec = ClassifierSpec(len(self.meta.features), len(self.meta.classes), c.hidden_size, c.num_layers,
                                   c.dropout, c.bidirectional)  # fmt: skip
        self.model = LSTMClassifier(self.spec).to(device)

    def view(self) -> nn.Module:
        return self.model

    def rows_per_batch(self) -> int:
        return min(self.batch_size, len(self.train_rows))

    def epoch_batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        """The training sequences in a random order, in batches; a short last batch joins the one
        before it (every batch has at least ``rows_per_batch`` rows to split across ranks)."""
        order = self.train_rows[torch.randperm(len(self.train_rows), generator=generator)]
        batches = list(order.split(self.batch_size))
        if len(batches) > 1 and len(batches[-1]) < self.batch_size:
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def units(self, batch: torch.Tensor) -> int:
        return len(batch)

    def _batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = self.lengths[rows.cpu()]
        return self.x[rows, : int(lengths.max())], lengths, self.labels[rows]

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """A random gain and offset per sequence and feature (scaled units). Recordings of one
        source differ from session to session by such shifts (the Japanese Vowels test utterances
        were recorded apart from the training ones); drawing them keeps the model from leaning on
        one feature's exact level. Drawn from torch's generator: seeded, and saved with a resumable state."""
        if not self.augment_std:
            return x
        shape = (x.shape[0], 1, x.shape[2])
        gain = 1 + self.augment_std * torch.randn(shape).to(x.device)
        return x * gain + self.augment_std * torch.randn(shape).to(x.device)

    def errors(self, net: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        x, lengths, y = self._batch(rows)
        x = self.augment(x)  # padding gets a gain and offset too, but is never read (packed)
        return nn.functional.cross_entropy(net(x, lengths).float(), y, reduction="sum"), len(rows)

    def start_epoch(self) -> None:
        """Nothing carries over: every sequence starts from a zero state."""

    def validation_loss(self, model: nn.Module) -> float:
        """Mean cross-entropy (nats) over the validation sequences."""
        model.eval()
        total = 0.0
        with torch.no_grad():
            for rows in self.val_rows.split(EVAL_BATCH):
                x, lengths, y = self._batch(rows.to(self.x.device))
                total += float(nn.functional.cross_entropy(model(x, lengths).float(), y, reduction="sum"))
        return total / len(self.val_rows)

    def fingerprint(self) -> list:
        return [self.meta.ids, self.meta.split, self.meta.mean, self.meta.std, self.batch_size, self.augment_std]

    def summary(self) -> dict:
        return {"train_sequences": len(self.train_rows), "val_sequences": len(self.val_rows)}


def trainer(cfg: Settings, root: Path, device: torch.device) -> ClassifyTrainer:
    return ClassifyTrainer(cfg, root / paths.PREPARED, device)


def load_model(path: Path):
    """Rebuild the eager model from a checkpoint written by the engine."""
    from lstmops.tasks.classify.model import ClassifierSpec, LSTMClassifier

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = LSTMClassifier(ClassifierSpec(**ckpt["spec"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


# --- evaluation -----------------------------------------------------------------------------------


def _inputs(root: Path):
    from lstmops.tasks.classify.sequences import SequencesPrepared, load_values

    meta = SequencesPrepared.load(root / paths.PREPARED)
    model, _ = load_model(root / paths.CHECKPOINT)
    return meta, load_values(root / paths.PREPARED), model


def lstm_probabilities(model, meta, values: np.ndarray, index: np.ndarray, steps: int | None = None) -> np.ndarray:
    """The eager model's class probabilities for the chosen sequences, reading each one's first
    ``steps`` steps when given (all of them otherwise)."""
    from lstmops.tasks.classify.sequences import pad, scaled_sequences
    from lstmops.tasks.classify.artifact import eager_probabilities

    x, lengths = pad(scaled_sequences(meta, values, index), len(meta.features))
    if steps is not None:
        lengths = np.minimum(lengths, steps)
    return eager_probabilities(model, x, lengths, EVAL_BATCH)


def accuracy_by_steps(model, meta, values: np.ndarray, index: np.ndarray, labels: np.ndarray) -> list[float]:
    """Test accuracy when the model reads only the first k steps of each sequence (all of a
    shorter one), k = 1 .. the longest: how early a sequence's class is known."""
    longest = max(meta.lengths[i] for i in index)
    return [
        float(np.mean(lstm_probabilities(model, meta, values, index, k).argmax(1) == labels)) for k in range(1, longest + 1)
    ]


def metric_name(text: str) -> str:
    """A class name as part of an MLflow metric key (letters, digits, _ - . / and space only)."""
    return re.sub(r"[^\w\-. /]", "_", text)


def evaluate(cfg: Settings, root: Path) -> Evaluated:
    from lstmops.tasks.classify.baselines import majority_probabilities, summary_logistic, summary_statistics
    from lstmops.tasks.classify.scoring import confusion, per_class, scores

    meta, values, model = _inputs(root)
    labels = np.asarray(meta.labels)
    train, val, test = meta.indices("train"), meta.indices("val"), meta.indices("test")
    stats = lambda index: summary_statistics(values, meta.offsets, meta.lengths, index)  # noqa: E731
    logreg = summary_logistic(stats(train), labels[train], stats(val), labels[val], len(meta.classes))
    probs = {
        "lstm": lstm_probabilities(model, meta, values, test),
        "majority": majority_probabilities(labels[train], len(meta.classes), len(test)),
        "summary_logreg": logreg.probabilities(stats(test)),
    }
    y = labels[test]
    matrix = confusion(y, probs["lstm"].argmax(1), len(meta.classes))
    test_scores = {name: scores(y, p, meta.classes) for name, p in probs.items()}
    errors = {name: s["error_rate"] for name, s in test_scores.items()}
    best = min(BASELINES, key=errors.get)
    metrics = {
        "test": test_scores, "test_sequences": len(test), "classes": meta.classes, "test_split": meta.split_from,
        "per_class": per_class(matrix, meta.classes), "confusion": matrix.tolist(),
        "summary_logreg_l2": logreg.l2, "gate_metric": cfg.classify.gate_metric,
        f"error_reduction_vs_{best}": round(1 - errors["lstm"] / max(errors[best], 1e-12), 6),
    }  # fmt: skip
    write_json(root / paths.METRICS, metrics)
    curve = accuracy_by_steps(model, meta, values, test, y)
    rows = "".join(f"lstm,{k},{v:.6g}\n" for k, v in enumerate(curve, 1))
    (root / paths.PER_STEP).write_text("forecaster,step,accuracy\n" + rows)
    plots = [
        write_confusion_plot(root / paths.PLOTS, matrix, meta.classes),
        write_steps_plot(root / paths.PLOTS, curve, {k: test_scores[k]["accuracy"] for k in BASELINES}),
    ]
    flat = {f"test_{name}_{m}": v for name, ms in test_scores.items() for m, v in ms.items()}
    for name, m in metrics["per_class"].items():
        flat[f"test_lstm_precision_{metric_name(name)}"] = m["precision"]
        flat[f"test_lstm_recall_{metric_name(name)}"] = m["recall"]
    series = [("test_lstm_accuracy_by_steps_read", v, k) for k, v in enumerate(curve, 1)]
    return Evaluated("\n".join(metrics_lines(metrics)), [root / paths.METRICS, root / paths.PER_STEP, *plots], flat, series)


def write_confusion_plot(directory: Path, matrix: np.ndarray, classes: list[str]) -> Path:
    import matplotlib

    from lstmops.plots import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90 if max(map(len, classes)) > 3 else 0)
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=f"LSTM on the test sequences ({int(matrix.sum())})")
    return save_png(fig, directory / "confusion_matrix.png")


def write_steps_plot(directory: Path, curve: list[float], baselines: dict[str, float]) -> Path:
    import matplotlib

    from lstmops.plots import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(np.arange(1, len(curve) + 1), curve, marker=".", label="LSTM reading the first k steps")
    for name, value in baselines.items():
        ax.axhline(value, linestyle="--", linewidth=1, label=f"{name} (whole sequences)")
    ax.set(xlabel="steps read (k)", ylabel="test accuracy", ylim=(0, 1.02), title="How early the class is known")
    ax.legend()
    return save_png(fig, directory / "accuracy_by_steps.png")


def metrics_lines(metrics: dict) -> list[str]:
    """Test figures of the LSTM beside both baselines."""
    n, classes = metrics["test_sequences"], len(metrics["classes"])
    lines = [f"test metrics ({n} sequences, {classes} classes; test from {metrics['test_split']})",
             f"  {'classifier':<18}{'accuracy':>10}{'macro-F1':>10}{'log loss':>10}"]  # fmt: skip
    for name, m in metrics["test"].items():
        lines.append(f"  {name:<18}{m['accuracy']:>10.4f}{m['macro_f1']:>10.4f}{m['log_loss']:>10.4f}")
    for key, value in metrics.items():
        if key.startswith("error_reduction_vs_"):
            lines.append(f"{key.replace('_', ' ')}: {value:+.1%} (fewer errors)")
    return lines


def artifact_line(root: Path, exported: dict) -> str:
    return (
        f"TorchScript: {(root / exported['torchscript']).resolve()} (padded sequences [batch, steps, "
        f"{len(exported['features'])} features] + lengths [batch] -> probabilities of {len(exported['classes'])} classes, "
        f"names in model.classes)"
    )


# --- export and the gate's scoring ---------------------------------------------------------------------


def _signature(n_features: int, n_classes: int):
    """Two named tensors in (padded sequences, lengths), class probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, n_features), "x"),
                       TensorSpec(np.dtype(np.int64), (-1,), "lengths")]),  # fmt: skip
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes), "probabilities")]),
    )


def export(cfg: Settings, root: Path) -> Exported:
    from lstmops.tasks.classify.sequences import pad, raw_sequences
    from lstmops.tasks.classify.artifact import export as run
    from lstmops.tasks.classify.artifact import script

    c = cfg.classify
    meta, values, model = _inputs(root)
    test = meta.indices("test")
    scripted = script(model, meta.mean, meta.std, meta.features, meta.classes, c.min_length, c.max_length)
    raw_x, lengths = pad(raw_sequences(root / paths.SNAPSHOT, c, [meta.ids[i] for i in test]), len(meta.features))
    check = run(scripted, lstm_probabilities(model, meta, values, test), raw_x, lengths, root / paths.TORCHSCRIPT)
    metadata = {"features": meta.features, "classes": meta.classes, "min_length": c.min_length, "max_length": c.max_length,
                "inputs": "x: float32 [batch, steps, features] zero-padded, original units; lengths: int64 [batch]",
                "output": "float32 [batch, classes] probabilities, columns in the order of classes"}  # fmt: skip
    summary = (
        f"exported {paths.TORCHSCRIPT} (max |TorchScript - eager| probability = {check['max_abs_diff']:.2e} "
        f"on {check['checked_sequences']} test sequences)"
    )
    return Exported(check, _signature(len(meta.features), len(meta.classes)), metadata, summary)


def gate_inputs(cfg: Settings, root: Path, metrics: dict, seen: list[dict[str, str]]) -> GateInputs:
    """Each version's own file scores the newest test sequences that no version in ``seen`` trained
    or validated on, raw, through its own scaling and class names (the true class is looked up by
    name in the model's ``classes``), so versions with another class order compare fairly.

    The metric is ``classify.gate_metric``, the error rate (1 - accuracy) by default: a wrong
    class is what a user of the classifier meets, and accuracy is what the task is judged by. It
    moves in steps of one test sequence, so a challenger must make strictly fewer mistakes than
    the champion (with the 1% relative margin), and versions that tie are not swapped. Log loss
    (``gate_metric: log_loss``) judges the whole probability vector instead (a confident mistake
    costs more than a hesitant one); on the default data the summary-statistics logistic
    regression is about as well calibrated as the LSTM, so under log loss the LSTM is often
    refused although it makes fewer mistakes (README: Tasks)."""
    from lstmops.tasks.classify.sequences import SequencesPrepared, load_values, pad, raw_sequences
    from lstmops.tasks.classify.scoring import log_loss

    c, metric = cfg.classify, cfg.classify.gate_metric
    meta = SequencesPrepared.load(root / paths.PREPARED)
    held = meta.indices("test")
    known = {h for record in seen for h in record.get("sequences", "").split()}
    test = np.asarray([i for i in held if sequence_hash(meta.ids[i]) not in known], dtype=np.int64)
    if not len(test):  # every test sequence was seen: nothing to score (the gate says so and stops)
        return GateInputs(metric, {k: v[metric] for k, v in metrics["test"].items() if k != "lstm"}, lambda _: float("nan"),
                          lambda _: None, "sequences", len(held), 0, f"none of {len(held)} test sequences: "
                          "a compared version trained or validated on every one")  # fmt: skip
    raw_x, lengths = pad(raw_sequences(root / paths.SNAPSHOT, c, [meta.ids[i] for i in test]), len(meta.features))
    names = [meta.classes[meta.labels[i]] for i in test]

    def probabilities(model) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(lengths), EVAL_BATCH):
                part = slice(start, start + EVAL_BATCH)
                longest = int(lengths[part].max())
                out.append(model(torch.from_numpy(raw_x[part, :longest]), torch.from_numpy(lengths[part])).numpy())
        return np.concatenate(out).astype(np.float64)

    def score(model) -> float:
        labels = np.array([list(model.classes).index(n) for n in names])
        probs = probabilities(model)
        return log_loss(labels, probs) if metric == "log_loss" else float(np.mean(probs.argmax(1) != labels))

    def problem(model) -> str | None:
        kind = getattr(model, "task", "forecast")
        if kind != "classify":
            return f"it is a {kind} model, not a sequence classifier"
        if list(model.features) != meta.features:
            return f"it reads features {list(model.features)}, the data has {meta.features}"
        unknown = sorted(set(names) - set(model.classes))
        if unknown:
            return f"it does not know the test class(es) {unknown}"
        if int(lengths.min()) < model.min_length or int(lengths.max()) > model.max_length:
            have = f"{int(lengths.min())}..{int(lengths.max())}"
            return f"it takes {model.min_length}..{model.max_length} steps, the test sequences have {have}"
        return None

    baselines = {k: v[metric] for k, v in metrics["test"].items() if k != "lstm"}
    if 0 < len(test) < len(held):  # some left out: the baselines score the same sequences as the models
        baselines = baseline_scores(meta, load_values(root / paths.PREPARED), test, metric)
    left_out = f"; {len(held) - len(test)} left out: a compared version trained or validated on them" if len(test) < len(held) else ""
    scored = f"{len(test)} of {len(held)} test sequences{left_out}"
    return GateInputs(metric, baselines, score, problem, "sequences", len(held), len(test), scored)


def sequence_hash(sequence_id: str) -> str:
    """A sequence as a seen record names it: 12 hex digits of its id's sha256 (short, so the ids of
    thousands of sequences fit in a few tags; a collision only leaves one more sequence out)."""
    import hashlib

    return hashlib.sha256(sequence_id.encode("utf-8")).hexdigest()[:12]


def seen(cfg: Settings, root: Path) -> dict[str, str]:
    """The training and validation sequences, by the hashes of their ids: a version's test
    sequences are redrawn when rows arrive or the seed changes, so the split itself says nothing."""
    from lstmops.tasks.classify.sequences import SequencesPrepared

    meta = SequencesPrepared.load(root / paths.PREPARED)
    fitted = np.concatenate([meta.indices("train"), meta.indices("val")])
    return {"sequences": " ".join(sorted(sequence_hash(meta.ids[i]) for i in fitted))}


def baseline_scores(meta, values: np.ndarray, index: np.ndarray, metric: str) -> dict[str, float]:
    """Both baselines, fitted as evaluate fits them, scored on the sequences ``index``."""
    from lstmops.tasks.classify.baselines import majority_probabilities, summary_logistic, summary_statistics
    from lstmops.tasks.classify.scoring import scores

    labels = np.asarray(meta.labels)
    train, val = meta.indices("train"), meta.indices("val")
    stats = lambda rows: summary_statistics(values, meta.offsets, meta.lengths, rows)  # noqa: E731
    logreg = summary_logistic(stats(train), labels[train], stats(val), labels[val], len(meta.classes))
    probs = {"majority": majority_probabilities(labels[train], len(meta.classes), len(index)),
             "summary_logreg": logreg.probabilities(stats(index))}  # fmt: skip
    return {name: float(scores(labels[index], p, meta.classes)[metric]) for name, p in probs.items()}


def lineage_tags(cfg: Settings) -> dict[str, str]:
    return {}  # the artifact carries its own interface (vocabulary, classes, problem)
