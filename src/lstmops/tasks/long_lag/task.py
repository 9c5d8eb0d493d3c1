"""The long-time-lag task (``task: long_lag``): the 1997 LSTM paper's problems through the pipeline.

Data: ``long_lag.source`` names a generator (``problems.py``), not a file. Ingest generates the
held-out sets from ``long_lag.data_seed`` (validation and test; for the embedded Reber grammar
also its fixed training set, as in the paper) into the snapshot, which DVC tracks; validate checks
every sequence against the paper's definition; prepare records the interface and the prior.
Training: the adding and temporal-order sequences are generated online, each from its own seed
drawn from the engine's seeded generator, as the paper trains on a stream of new sequences; the
Reber strings are drawn from the training set. One engine epoch is one check: ``check_every``
training sequences, then the criterion on the held-out set (``criterion_met``), so training stops
when it is met and ``sequences_to_solve`` says when. Metrics: the paper's criterion on the test
set (fraction correct, wrong sequences, worst error) and the mean absolute error from the ideal
outputs, beside the prior (the best constant output). Artifact: a TorchScript file, sequences in,
outputs after every step out (``model.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lstmops import paths
from lstmops.tasks.long_lag.settings import LongLagConfig, Settings
from lstmops.errors import DataError, LstmopsError, ValidationFailed
from lstmops.io import atomic_dir, atomic_path, read_json, save_torchscript, write_json
from lstmops.tasks.base import Evaluated, Exported, GateInputs
from lstmops.tasks.long_lag.model import LongLagArtifact, LongLagNet, LongLagSpec, script, task_outputs
from lstmops.tasks.long_lag.problems import (
    PAPER_SEQUENCES, EmbeddedReber, Encoded, Problem, problem, unique_strings,
)  # fmt: skip

SEQUENCES = "sequences.parquet"  # in data/prepared: the snapshot's sequences, checked
CHUNK = 256  # sequences per forward pass when scoring (bounds memory at T = 1000)
SPLITS = ("train", "val", "test")
CRITERIA = {
    "adding": "absolute error below 0.04 at the sequence end",
    "embedded_reber": "at every step the possible next symbols are the most active outputs",
    "temporal_order": "every output's absolute error below 0.3 at the sequence end",
}
ARROW_TYPES = {"values": ("list", "float32"), "markers": ("list", "int8"), "target": "float64",
               "string": "string", "label": "string"}  # fmt: skip


def section(cfg: Settings) -> LongLagConfig:
    if cfg.long_lag is None:
        raise LstmopsError("task long_lag needs a long_lag section in params.yaml")
    return cfg.long_lag


def problem_of(ll: LongLagConfig) -> Problem:
    return problem(ll.source, ll.problem.model_dump(include={"T", "length", "t1", "t2"}))


def longest_lag(p: Problem) -> int:
    """The lag the chrono initialisation spans: the longest sequence (0 for Reber, whose lags are
    a dozen steps and whose runs were no faster with it)."""
    if p.name == "adding":
        return p.T + p.T // 10
    if p.name == "temporal_order":
        return p.length[1]
    return 0


def identity(ll: LongLagConfig, p: Problem) -> dict[str, Any]:
    """What a snapshot was generated from; prepare refuses a snapshot made for other settings."""
    return {"source": ll.source, "settings": p.settings(), "data_seed": ll.data_seed, "sizes": split_sizes(ll)}


def split_sizes(ll: LongLagConfig) -> dict[str, int]:
    s = ll.problem
    sizes = {"val": s.val_sequences, "test": s.test_sequences}
    if ll.source == "embedded_reber":
        sizes = {"train": s.train_strings, **sizes}
    return sizes


# --- data stages --------------------------------------------------------------------------------


def generate(ll: LongLagConfig) -> dict[str, list[dict[str, Any]]]:
    """The held-out sets (and Reber's training strings), each split from its own seeded stream.
    (Training sequences are drawn from single-integer seeds, so they never replay these streams.)"""
    p, sizes = problem_of(ll), split_sizes(ll)

    def rng(split: str) -> np.random.Generator:
        return np.random.default_rng([ll.data_seed, SPLITS.index(split)])

    if isinstance(p, EmbeddedReber):
        stream = rng("train")
        train = [p.sample(stream) for _ in range(sizes["train"])]
        seen = {r["string"] for r in train}  # the paper's test strings are never training strings
        return {"train": train, **{s: unique_strings(p, rng(s), sizes[s], seen) for s in ("val", "test")}}
    return {s: sample_many(p, rng(s), n) for s, n in sizes.items()}


def sample_many(p: Problem, stream: np.random.Generator, n: int) -> list[dict[str, Any]]:
    return [p.sample(stream) for _ in range(n)]


def _arrow_type(name: str):
    import pyarrow as pa

    kind = ARROW_TYPES[name]
    return pa.list_(getattr(pa, kind[1])()) if isinstance(kind, tuple) else getattr(pa, kind)()


def write_sequences(records: dict[str, list[dict[str, Any]]], p: Problem, meta: dict[str, Any], path: Path) -> None:
    """Parquet with fixed options and the generating settings in the schema metadata: the same
    settings give the same bytes (under the pinned pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(split, r) for split in SPLITS for r in records.get(split, [])]
    arrays = [pa.array([split for split, _ in rows], pa.string())]
    arrays += [pa.array([r[c] for _, r in rows], _arrow_type(c)) for c in p.columns]
    schema = pa.schema([("split", pa.string())] + [(c, _arrow_type(c)) for c in p.columns],
                       metadata={"lstmops.long_lag": json.dumps(meta, sort_keys=True)})  # fmt: skip
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), tmp, compression="zstd", compression_level=3,
                       use_dictionary=False, write_statistics=False, row_group_size=max(1, len(rows)))  # fmt: skip


def read_sequences(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """(records by split, the generating settings) of a snapshot written by ``write_sequences``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise DataError(f"{path}: long_lag snapshot not found (run ingest first)")
    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"lstmops.long_lag"])
    except (OSError, KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a long_lag snapshot ({exc.__class__.__name__}: {exc})") from None
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    records: dict[str, list[dict[str, Any]]] = {}
    for i, split in enumerate(columns.pop("split")):
        records.setdefault(split, []).append({name: values[i] for name, values in columns.items()})
    return records, meta


def ingest(cfg: Settings, root: Path) -> str:
    ll = section(cfg)
    p = problem_of(ll)
    records = generate(ll)
    write_sequences(records, p, identity(ll, p), root / paths.SNAPSHOT)
    counts = ", ".join(f"{split} {len(r):,}" for split, r in records.items())
    return f"generated {p.label} sequences from long_lag.data_seed={ll.data_seed} ({counts}) -> {paths.SNAPSHOT}"


def checks(ll: LongLagConfig, records: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The snapshot against the settings and the paper's definitions, as validation reports checks."""
    p = problem_of(ll)
    want = identity(ll, p)
    found = [_check("settings", meta == want, f"generated from {meta}" + ("" if meta == want else f", params say {want}"))]
    sizes = {s: len(r) for s, r in records.items()}
    found.append(_check("sizes", sizes == want["sizes"], f"sequences per split {sizes}, expected {want['sizes']}"))
    bad = [(s, i, msg) for s, rs in records.items() for i, r in enumerate(rs) for msg in p.problems(r)]
    detail = f"every sequence follows the paper's definition of {p.label}"
    if bad:
        detail = f"{len(bad)} problem(s); first: {bad[0][0]} sequence {bad[0][1] + 1}: {bad[0][2]}"
    found.append(_check("definition", not bad, detail))
    if isinstance(p, EmbeddedReber):
        seen = {r["string"] for r in records.get("train", [])}
        leaked = sum(r["string"] in seen for s in ("val", "test") for r in records.get(s, []))
        found.append(_check("held_out_unseen", not leaked, f"{leaked} held-out string(s) also in the training set"))
    return found


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "success": bool(passed), "detail": detail}


def validate(cfg: Settings, root: Path, data: str | None = None) -> str:
    if data is not None:
        raise LstmopsError("long_lag data is generated (long_lag.source names a generator): no file to validate with --data")
    ll = section(cfg)
    records, meta = read_sequences(root / paths.SNAPSHOT)
    found = checks(ll, records, meta)
    failed = [c["detail"] for c in found if not c["success"]]
    counts = {s: len(r) for s, r in records.items()}
    report = {"source": ll.source, "success": not failed, "failed": failed, "counts": counts, "checks": found}
    write_json(root / paths.VALIDATION, report)
    with atomic_path((root / paths.VALIDATION).with_suffix(".html")) as tmp:
        tmp.write_text(render_html(report))
    if failed:
        raise ValidationFailed([f"{paths.SNAPSHOT}: {line}" for line in failed])
    # The accepted profile (a DVC output of validate) records what passed; forecast drift skips it.
    write_json(root / paths.ACCEPTED_PROFILE, {"task": "long_lag", "source": ll.source, **counts})
    return f"validation passed: {len(found)} checks -> {paths.VALIDATION} (and .html)"


def render_html(report: dict[str, Any]) -> str:
    from html import escape

    verdict = "PASSED" if report["success"] else f"FAILED ({len(report['failed'])} checks)"
    rows = "".join(
        f'<tr class="{"pass" if c["success"] else "fail"}"><td>{"pass" if c["success"] else "FAIL"}</td>'
        f"<td>{escape(c['check'])}</td><td>{escape(c['detail'])}</td></tr>"
        for c in sorted(report["checks"], key=lambda c: c["success"])
    )
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>long_lag validation</title><style>'
            "body{font-family:sans-serif;margin:2em}td{border:1px solid #ccc;padding:4px 8px}"
            "tr.fail{background:#fdd}tr.pass{background:#efe}</style></head><body>"
            f"<h1>Generated sequences ({escape(report['source'])}): {verdict}</h1>"
            f"<p>Sequences per split: {escape(str(report['counts']))}</p><table>{rows}</table></body></html>\n")  # fmt: skip


def prior(p: Problem, records: dict[str, list[dict[str, Any]]]) -> list[float]:
    """The best constant output, fitted without the test set: the mean ideal output over the
    training strings (Reber) or the validation sequences (the others have no fixed training set)."""
    fit_on = records.get("train") or records["val"]
    enc = p.encode(fit_on)
    return [round(float(v), 6) for v in enc.ideal[enc.scored].mean(axis=0)]


def prepare(cfg: Settings, root: Path) -> str:
    ll = section(cfg)
    p = problem_of(ll)
    records, meta = read_sequences(root / paths.SNAPSHOT)
    if meta != identity(ll, p):
        raise DataError(f"{paths.SNAPSHOT} was generated from {meta}, not from the params ({identity(ll, p)}): run ingest")
    info = {
        "source": ll.source, "problem": p.label, "settings": p.settings(), "inputs": p.inputs, "outputs": p.outputs,
        "kind": p.kind, "criterion": CRITERIA[ll.source], "counts": {s: len(r) for s, r in records.items()},
        "prior": prior(p, records), "lag": longest_lag(p), "paper_sequences": PAPER_SEQUENCES.get(p.paper_key),
    }  # fmt: skip
    with atomic_dir(root / paths.PREPARED) as tmp:
        shutil.copyfile(root / paths.SNAPSHOT, tmp / SEQUENCES)
        write_json(tmp / "meta.json", info)
    return f"prepared {p.label}: {info['counts']} sequences; prior output {info['prior']} -> {paths.PREPARED}"


def load_prepared(prepared_dir: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    meta_path = prepared_dir / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: prepared long_lag data not found (run prepare first)")
    records, _ = read_sequences(prepared_dir / SEQUENCES)
    return read_json(meta_path), records


# --- scoring: outputs, losses, the criterion ------------------------------------------------------------


def chunks(p: Problem, records: list[dict[str, Any]], size: int = CHUNK) -> list[Encoded]:
    return [p.encode(records[i : i + size]) for i in range(0, len(records), size)]


def sequence_losses(raw: torch.Tensor, target: torch.Tensor, scored: torch.Tensor, kind: str) -> torch.Tensor:
    """Per sequence, the summed loss of its scored steps: squared error, or cross-entropy."""
    if kind == "regression":
        per_step = (raw[..., 0] - target[..., 0]) ** 2
    else:
        per_step = nn.functional.cross_entropy(raw.transpose(1, 2), target.argmax(dim=-1), reduction="none")
    return (per_step * scored).sum(dim=1)


def forward(model: nn.Module, enc: Encoded, device: torch.device) -> torch.Tensor:
    return model(torch.from_numpy(enc.x).to(device)).float()


def scores(p: Problem, outputs: list[np.ndarray], encs: list[Encoded]) -> dict[str, float]:
    """The criterion and the distance from the ideal outputs over sequences scored in chunks:
    ``correct_fraction``, ``wrong`` (sequences), ``max_error`` and ``mae`` (|output - ideal| over
    the scored steps and the output units)."""
    correct = np.concatenate([p.correct(o, e) for o, e in zip(outputs, encs, strict=True)])
    errors = [np.abs(o - e.ideal)[e.scored] for o, e in zip(outputs, encs, strict=True)]
    flat = np.concatenate([e.ravel() for e in errors])
    return {"correct_fraction": round(float(correct.mean()), 6), "wrong": int((~correct).sum()),
            "max_error": round(float(flat.max()), 6), "mae": round(float(flat.mean()), 6)}  # fmt: skip


# --- training: what the engine (train.py) runs ------------------------------------------------------


class LongLagTrainer:
    """The long-lag problems' side of the training engine (``train.Trainer``). A batch's rows are
    sequence seeds (generated online) or indices into the Reber training strings; every row is a
    whole sequence, trainable on its own (DDP splits rows)."""

    unit, terms_per_unit = "sequences", 1

    def __init__(self, cfg: Settings, prepared_dir: Path, device: torch.device) -> None:
        ll = section(cfg)
        self.ll, self.device, self.problem = ll, device, problem_of(ll)
        self.meta, records = load_prepared(prepared_dir)
        self.train_records = records.get("train", [])
        # The criterion is checked on the held-out sequences, and for Reber on the training strings
        # too (the paper's criterion covers both); the held-out ones come first: the quick check.
        held_out = records["val"] + self.train_records
        self.quick = chunks(self.problem, held_out[: ll.quick_check])
        self.rest = chunks(self.problem, held_out[ll.quick_check :])
        self.batch_setting = f"long_lag.{ll.source}.batch_size"
        self.spec = LongLagSpec(len(self.problem.inputs), ll.hidden_size, ll.num_layers, len(self.problem.outputs),
                                self.meta["lag"] if ll.chrono_init else 0)  # fmt: skip
        self.model = LongLagNet(self.spec).to(device)
        self._cached: tuple[Any, list[np.ndarray], list[torch.Tensor]] | None = None

    def view(self) -> nn.Module:
        return self.model

    def rows_per_batch(self) -> int:
        return self.ll.problem.batch_size

    def epoch_batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        """One check's worth of batches: sequence seeds, or training-string indices drawn with
        replacement (the paper picks training strings at random)."""
        size = self.ll.problem.batch_size
        count = self.ll.problem.sequences_per_check // size
        high = len(self.train_records) if self.train_records else 2**62
        return list(torch.randint(0, high, (count, size), generator=generator, dtype=torch.int64))

    def units(self, batch: torch.Tensor) -> int:
        return len(batch)

    def records(self, rows: torch.Tensor) -> list[dict[str, Any]]:
        ids = rows.tolist()
        return [self.train_records[i] for i in ids] if self.train_records else self.problem.from_seeds(ids)

    def errors(self, net: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        enc = self.problem.encode(self.records(rows.cpu()))
        target, scored = (torch.from_numpy(a).to(self.device) for a in (enc.target, enc.scored))
        raw = forward(net, enc, self.device)
        return sequence_losses(raw, target, scored, self.problem.kind).sum(), len(rows)

    def start_epoch(self) -> None:
        """Nothing carries over: every sequence starts from a zero state."""

    def _outputs(self, model: nn.Module, encs: list[Encoded]) -> tuple[list[np.ndarray], list[torch.Tensor]]:
        """(task outputs, raw outputs) per chunk. validation_loss and criterion_met score the same
        weights one after the other; the quick chunks' outputs are kept for the second call."""
        key = (id(model), tuple(t._version for t in model.parameters()))
        if encs is self.quick and self._cached is not None and self._cached[0] == key:
            return self._cached[1], self._cached[2]
        model.eval()
        with torch.no_grad():
            raw = [forward(model, e, self.device) for e in encs]
        outputs = [task_outputs(r, self.problem.kind).cpu().numpy() for r in raw]
        if encs is self.quick:
            self._cached = (key, outputs, raw)
        return outputs, raw

    def validation_loss(self, model: nn.Module) -> float:
        """Mean loss per sequence over the quick-check sequences (cheap: they are scored anyway)."""
        _, raw = self._outputs(model, self.quick)
        total = sum(
            float(sequence_losses(r, torch.from_numpy(e.target).to(self.device), torch.from_numpy(e.scored).to(self.device),
                                  self.problem.kind).sum())
            for r, e in zip(raw, self.quick, strict=True)
        )  # fmt: skip
        return total / sum(len(e.x) for e in self.quick)

    def criterion_met(self, model: nn.Module) -> tuple[bool, dict[str, float]]:
        """The paper's criterion on every held-out sequence; the rest are scored only once the
        quick ones are all correct (before that, a failure among them already answers no)."""
        outputs, _ = self._outputs(model, self.quick)
        encs = list(self.quick)
        if all(self.problem.correct(o, e).all() for o, e in zip(outputs, encs, strict=True)) and self.rest:
            outputs = outputs + self._outputs(model, self.rest)[0]
            encs += self.rest
        s = scores(self.problem, outputs, encs)
        figures = {"check_correct_fraction": s["correct_fraction"], "check_sequences": float(sum(len(e.x) for e in encs)),
                   "check_max_error": s["max_error"]}  # fmt: skip
        return s["wrong"] == 0, figures

    def fingerprint(self) -> list:
        return [self.ll.model_dump(mode="json", exclude={"train", "threads"}), self.meta]

    def summary(self) -> dict:
        s = self.ll.problem
        return {"source": self.ll.source, "problem": self.problem.label, "batch_size": s.batch_size,
                "sequences_per_check": s.sequences_per_check, "budget_sequences": s.max_sequences,
                "paper_sequences": self.meta["paper_sequences"]}  # fmt: skip


def trainer(cfg: Settings, root: Path, device: torch.device) -> LongLagTrainer:
    threads = section(cfg).threads
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)  # training runs in a process of its own (see stages.train)
    return LongLagTrainer(cfg, root / paths.PREPARED, device)


def load_model(path: Path) -> tuple[LongLagNet, dict]:
    """Rebuild the eager model from a checkpoint written by the engine."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = LongLagNet(LongLagSpec(**ckpt["spec"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


# --- evaluation, export and the gate's scoring ----------------------------------------------------------


def task_outputs_of(model: nn.Module, p: Problem, encs: list[Encoded]) -> list[np.ndarray]:
    with torch.no_grad():
        return [task_outputs(forward(model, e, torch.device("cpu")), p.kind).numpy() for e in encs]


def by_position(p: Problem, outputs: list[np.ndarray], encs: list[Encoded]) -> list[tuple[int, int, float, float]]:
    """(step, sequences, mae, correct fraction) of the scored outputs at each step position
    (counted from 1): by sequence length where only the end is scored, by position for Reber."""
    rows: dict[int, list] = {}
    for o, e in zip(outputs, encs, strict=True):
        ok, err = p.correct_steps(o, e), np.abs(o - e.ideal).mean(axis=-1)
        for i, k in zip(*np.nonzero(e.scored), strict=True):
            rows.setdefault(int(k) + 1, []).append((err[i, k], ok[i, k]))
    return [(k, len(v), float(np.mean([a for a, _ in v])), float(np.mean([b for _, b in v])))
            for k, v in sorted(rows.items())]  # fmt: skip


def write_error_plot(path: Path, errors: np.ndarray, threshold: float | None, label: str) -> Path:
    import matplotlib

    from lstmops.plots import save_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(errors, bins=50)
    if threshold is not None:
        ax.axvline(threshold, color="red", linestyle="--", label=f"criterion: below {threshold}")
        ax.legend()
    ax.set(xlabel="worst |output - ideal| of a test sequence", ylabel="sequences", title=f"{label}: test errors")
    return save_png(fig, path)


THRESHOLDS = {"adding": 0.04, "temporal_order": 0.3}


def evaluate(cfg: Settings, root: Path) -> Evaluated:
    meta, records = load_prepared(root / paths.PREPARED)
    p = problem(meta["source"], meta["settings"])  # what was prepared (stages read declared inputs only)
    model, _ = load_model(root / paths.CHECKPOINT)
    trained = read_json(root / paths.TRAIN_SUMMARY)
    encs = chunks(p, records["test"])
    outputs = task_outputs_of(model, p, encs)
    constant = np.asarray(meta["prior"], dtype=np.float32)
    prior_outputs = [np.broadcast_to(constant, e.ideal.shape).copy() for e in encs]
    test = {"lstm": scores(p, outputs, encs), "prior": scores(p, prior_outputs, encs)}
    solved = trained.get("sequences_to_solve")
    metrics = {
        "source": meta["source"], "problem": meta["problem"], "settings": meta["settings"], "criterion": meta["criterion"],
        "test": test, "test_sequences": len(records["test"]), "solved": solved is not None, "sequences_to_solve": solved,
        "seconds_to_solve": trained.get("seconds_to_solve"), "fit_seconds": trained.get("fit_seconds"),
        "sequences_per_check": trained.get("sequences_per_check"), "budget_sequences": trained.get("budget_sequences"),
        "paper_sequences": meta["paper_sequences"],
    }  # fmt: skip
    write_json(root / paths.METRICS, metrics)
    rows = by_position(p, outputs, encs)
    (root / paths.PER_STEP).write_text(
        "forecaster,step,sequences,mae,correct_fraction\n"
        + "".join(f"lstm,{k},{n},{a:.6g},{c:.6g}\n" for k, n, a, c in rows)
    )
    worst = np.concatenate([np.where(e.scored[..., None], np.abs(o - e.ideal), 0).max(axis=(1, 2))
                            for o, e in zip(outputs, encs, strict=True)])  # fmt: skip
    plot = write_error_plot(root / paths.PLOTS / "test_errors.png", worst, THRESHOLDS.get(meta["source"]), meta["problem"])
    flat = {f"test_{name}_{k}": float(v) for name, s in test.items() for k, v in s.items()}
    flat |= {"solved": float(solved is not None), "fit_seconds": float(trained.get("fit_seconds") or 0.0)}
    if solved is not None:
        flat |= {"sequences_to_solve": float(solved), "seconds_to_solve": float(trained["seconds_to_solve"])}
    return Evaluated("\n".join(metrics_lines(metrics)), [root / paths.METRICS, root / paths.PER_STEP, plot], flat, [])


def metrics_lines(metrics: dict) -> list[str]:
    """The criterion, when it was met beside the paper's figure, and the test scores beside the prior."""
    paper = metrics.get("paper_sequences")
    paper_note = f" (paper: {paper:,})" if paper else ""
    if metrics["sequences_to_solve"] is not None:
        outcome = (f"solved after {metrics['sequences_to_solve']:,} training sequences{paper_note} "
                   f"in {metrics['seconds_to_solve']:.1f} s (checked every {metrics['sequences_per_check']:,})")  # fmt: skip
    else:
        budget = metrics["budget_sequences"]
        outcome = f"not solved within {budget:,} training sequences{paper_note} ({metrics['fit_seconds']:.1f} s)"
    lines = [f"{metrics['problem']}; criterion: {metrics['criterion']}", outcome,
             f"  test ({metrics['test_sequences']:,} sequences)  correct    wrong       MAE  max error"]  # fmt: skip
    for name, s in metrics["test"].items():
        lines.append(f"  {name:<26}{s['correct_fraction']:>8.2%}{s['wrong']:>9,}{s['mae']:>10.4f}{s['max_error']:>11.4f}")
    return lines


def artifact_line(root: Path, exported: dict) -> str:
    return (
        f"TorchScript: {(root / exported['torchscript']).resolve()} ({exported['problem']}: sequences x steps x "
        f"{len(exported['inputs'])} inputs ({', '.join(exported['inputs'])}) -> outputs after every step "
        f"({', '.join(exported['outputs'])}); .final(x, lengths) for the outputs at each sequence's end)"
    )


def _signature(n_inputs: int, n_outputs: int):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, n_inputs))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, n_outputs))]),
    )


def artifact_of(model: LongLagNet, meta: dict[str, Any]) -> LongLagArtifact:
    return LongLagArtifact(model, meta["source"], meta["problem"], meta["inputs"], meta["outputs"], meta["kind"],
                           meta["criterion"])  # fmt: skip


def parity(scripted, model: LongLagNet, p: Problem, encs: list[Encoded]) -> float:
    """The largest |TorchScript - eager| over every real step (padding excluded) and at each end."""
    worst = 0.0
    eager = task_outputs_of(model, p, encs)
    with torch.no_grad():
        for e, want in zip(encs, eager, strict=True):
            x = torch.from_numpy(e.x)
            got = scripted(x).numpy()
            real = np.arange(e.x.shape[1])[None, :] < e.lengths[:, None]
            ends = scripted.final(x, torch.from_numpy(e.lengths)).numpy()
            worst = max(worst, float(np.abs(got - want)[real].max()),
                        float(np.abs(ends - want[np.arange(len(e.x)), e.lengths - 1]).max()))  # fmt: skip
    return worst


def export(cfg: Settings, root: Path) -> Exported:
    from lstmops.tasks.base import TOLERANCE

    meta, records = load_prepared(root / paths.PREPARED)
    p = problem(meta["source"], meta["settings"])  # what was prepared (stages read declared inputs only)
    model, _ = load_model(root / paths.CHECKPOINT)
    encs = chunks(p, records["test"])
    with atomic_path(root / paths.TORCHSCRIPT) as tmp:
        save_torchscript(script(artifact_of(model, meta)), tmp)
        diff = parity(torch.jit.load(str(tmp)), model, p, encs)
        if not diff <= TOLERANCE:
            raise LstmopsError(f"export: TorchScript differs from the eager model by {diff:.3g} > {TOLERANCE}")
    check = {"max_abs_diff": diff, "checked_sequences": len(records["test"])}
    metadata = {"source": meta["source"], "problem": meta["problem"], "inputs": meta["inputs"], "outputs": meta["outputs"],
                "kind": meta["kind"], "criterion": meta["criterion"], "settings": meta["settings"]}  # fmt: skip
    checked = len(records["test"])
    summary = f"exported {paths.TORCHSCRIPT} (max |TorchScript - eager| = {diff:.2e} on {checked:,} test sequences)"
    return Exported(check, _signature(len(meta["inputs"]), len(meta["outputs"])), metadata, summary)


def string_hash(string: str) -> str:
    """A Reber string as a seen record names it (12 hex digits of its sha256)."""
    import hashlib

    return hashlib.sha256(string.encode("utf-8")).hexdigest()[:12]


def seen(cfg: Settings, root: Path) -> dict[str, str]:
    """The generated sets the model trained and validated on: each a seeded stream, named
    ``data_seed/split`` with the problem's settings (training sequences drawn online come from
    single-integer seeds, never one of these streams). The embedded Reber grammar repeats strings
    across streams, so its training and validation strings are recorded too, by hash."""
    meta, records = load_prepared(root / paths.PREPARED)
    _, generated = read_sequences(root / paths.PREPARED / SEQUENCES)
    fitted = [split for split in ("train", "val") if records.get(split)]
    out = {"problem": json.dumps({"source": meta["source"], "settings": meta["settings"]}, sort_keys=True),
           "streams": " ".join(f"{generated['data_seed']}/{split}" for split in fitted)}  # fmt: skip
    if meta["source"] == "embedded_reber":
        out["strings"] = " ".join(sorted({string_hash(r["string"]) for split in fitted for r in records[split]}))
    return out


def unseen_test(meta: dict[str, Any], data_seed: int, test: list[dict[str, Any]], records: list[dict[str, str]]) -> list[bool]:
    """Per test sequence: whether no record saw it (its stream, or for Reber its string)."""
    problem_id = json.dumps({"source": meta["source"], "settings": meta["settings"]}, sort_keys=True)
    stream = f"{data_seed}/test"
    if any(r.get("problem") == problem_id and stream in r.get("streams", "").split() for r in records):
        return [False] * len(test)
    strings = {h for r in records for h in r.get("strings", "").split()}
    return [not (strings and "string" in t and string_hash(t["string"]) in strings) for t in test]


def gate_inputs(cfg: Settings, root: Path, metrics: dict, seen: list[dict[str, str]]) -> GateInputs:
    """Mean absolute error from the ideal outputs on the newest test sequences that no version in
    ``seen`` trained or validated on, through each version's own TorchScript file (the prior on the
    same sequences); a version trained on another problem cannot be scored."""
    meta, records = load_prepared(root / paths.PREPARED)
    _, generated = read_sequences(root / paths.PREPARED / SEQUENCES)
    p = problem(meta["source"], meta["settings"])  # what was prepared (stages read declared inputs only)
    keep = unseen_test(meta, generated["data_seed"], records["test"], seen)
    test = [r for r, k in zip(records["test"], keep, strict=True) if k]
    encs = chunks(p, test)

    def score(model) -> float:
        with torch.no_grad():
            outputs = [model(torch.from_numpy(e.x)).numpy() for e in encs]
        return scores(p, outputs, encs)["mae"]

    def problem_with(model) -> str | None:
        kind = getattr(model, "task", "forecast")
        if kind != "long_lag":
            return f"it is a {kind} model, not a long_lag one"
        theirs = getattr(model, "problem", "")
        return None if theirs == meta["problem"] else f"it was trained on {theirs}, the data is {meta['problem']}"

    baselines = {"prior": metrics["test"]["prior"]["mae"]}
    if test and len(test) < len(keep):  # some left out: the prior on the sequences the models are scored on
        constant = np.asarray(meta["prior"], dtype=np.float32)
        baselines = {"prior": scores(p, [np.broadcast_to(constant, e.ideal.shape).copy() for e in encs], encs)["mae"]}
    left_out = f"; {len(keep) - len(test)} left out: a compared version trained or validated on them" if len(test) < len(keep) else ""
    scored = f"{len(test)} of {len(keep)} test sequences (data_seed {generated['data_seed']}){left_out}"
    return GateInputs("mae", baselines, score, problem_with, "sequences", len(keep), len(test), scored)


def lineage_tags(cfg: Settings) -> dict[str, str]:
    return {}  # the artifact carries its own interface (vocabulary, classes, problem)
