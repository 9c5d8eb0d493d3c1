"""`lstmops compare A B`: two forecasters scored on the same hold-out, with a Diebold–Mariano test.

A and B are TorchScript files, registry versions (``3``, ``@champion``, ``models:/NAME/3``,
``models:/NAME@alias``) or MLflow run ids (the run's ``torchscript/<sha256>/model.ts``). A version's
file is checked against the sha256 (and signature) it records before it is loaded. As in the gate,
each file forecasts the project's test windows from the raw snapshot in original units, each
with its own history length; a file that cannot (other features, target or horizon, too little
history, not a forecaster) is refused with one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lstmops import paths
from lstmops.errors import DataError, LstmopsError
from lstmops.stats import DieboldMariano, Loss, diebold_mariano, verdict, window_losses

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
VERSION = re.compile(r"^(models:/.+|@.+|\d+)$")


@dataclass(frozen=True)
class Located:
    """Where one argument's TorchScript file is, and what to call it."""

    argument: str
    kind: str  # file | version | run
    description: str
    path: Path


def locate(argument: str, into: Path, registry: Callable[[], tuple[object, str]]) -> Located:
    """A file path, a registry version or a run id -> the local TorchScript file (downloaded
    under ``into``). ``registry()`` gives (MlflowClient, default model name), asked only when needed."""
    path = Path(argument)
    if path.is_file():
        return Located(argument, "file", str(path), path)
    if VERSION.match(argument):
        from lstmops.registry.lineage import resolve
        from lstmops.registry.verify import fetch_verified

        client, default = registry()
        mv = resolve(client, argument, default)
        uri = f"models:/{mv.name}/{mv.version}"
        # the version's own file, checked against its recorded sha256 (and signature) before loading
        file = fetch_verified(mv, into / f"v{mv.version}")
        return Located(argument, "version", uri if uri == argument else f"{uri} ({argument})", file)
    if RUN_ID.match(argument):
        from lstmops.registry.verify import verified_run_file

        registry()  # points mlflow at the project's tracking store
        into.mkdir(parents=True, exist_ok=True)
        return Located(argument, "run", f"run {argument}", verified_run_file(argument, into / argument))
    raise LstmopsError(
        f"{argument}: no such file, and not a registry version (3, @champion, models:/NAME/3) or an MLflow run id"
    )


def load_forecaster(located: Located, label: str):
    """The TorchScript module, refused in one line if it cannot be loaded or is not a forecaster."""
    import torch

    from lstmops.serve.loader import jit_message

    try:
        model = torch.jit.load(str(located.path), map_location="cpu").eval()
    except Exception as exc:  # torch raises many kinds for a file that is not TorchScript
        raise LstmopsError(f"{label} ({located.description}): cannot load as TorchScript ({jit_message(exc)})") from None
    task = getattr(model, "task", "forecast")
    if task != "forecast":
        raise LstmopsError(f"{label} ({located.description}): a {task} model; lstmops compare scores forecasters only")
    return model


@dataclass(frozen=True)
class Scored:
    label: str
    located: Located
    history: int
    metrics: dict[str, float]
    losses: np.ndarray  # per window


@dataclass(frozen=True)
class Comparison:
    target: str
    windows: int
    horizon: int
    loss: Loss
    level: float
    a: Scored
    b: Scored
    baseline: tuple[str, dict[str, float]] | None  # the best naive baseline of reports/metrics.json
    dm: DieboldMariano
    verdict: str


def compare(cfg, root: Path, a: Located, b: Located, loss: Loss = "mse", level: float = 0.05) -> Comparison:
    """Score both files on the project's test windows; the DM test on their per-window losses."""
    from lstmops.tasks.forecast.evaluate import error_metrics, mase_scale, round_floats
    from lstmops.io import read_json
    from lstmops.registry.gate import champion_problem, forecast
    from lstmops.serve.loader import jit_message
    from lstmops.tasks.forecast.task import holdout, mase_period

    if not ((root / paths.PREPARED_META).is_file() and (root / paths.SNAPSHOT).is_file()):
        raise LstmopsError(
            f"no test windows: {paths.SNAPSHOT} or {paths.PREPARED_META} is missing (run lstmops ingest and prepare, or dvc repro prepare)"
        )
    h = holdout(root)
    meta = h.meta
    try:
        scale = mase_scale(h.raw[:, meta.target_index].astype(np.float64), meta, mase_period(cfg))
    except DataError:
        scale = None  # no MASE rather than no comparison
    scored = []
    for label, located in (("A", a), ("B", b)):
        model = load_forecaster(located, label)
        problem = champion_problem(model, meta.features, meta.horizon, h.history_left, other="the test windows")
        target = getattr(model, "target", meta.target)
        if problem is None and target != meta.target:
            problem = f"it forecasts {target}, the test windows {meta.target}"
        if problem is not None:
            raise LstmopsError(f"{label} ({located.description}) cannot score this project's test windows: {problem}")
        history = int(getattr(model, "input_steps", meta.input_steps))
        try:
            out = forecast(model, h.raw, h.test_origins, history)
        except Exception as exc:  # the file's own refusal (torch.jit.Error), e.g. NaN in a window
            raise LstmopsError(f"{label} ({located.description}): forecasting failed ({jit_message(exc)})") from None
        metrics = round_floats(error_metrics(h.actual, out, scale=scale))
        scored.append(Scored(label, located, history, metrics, window_losses(h.actual, out, loss)))
    try:
        dm = diebold_mariano(scored[0].losses, scored[1].losses, meta.horizon)
    except ValueError as exc:
        raise LstmopsError(f"the Diebold-Mariano test cannot run: {exc}") from None
    return Comparison(meta.target, len(h.test_origins), meta.horizon, loss, level, scored[0], scored[1],
                      best_baseline(root / paths.METRICS, read_json), dm, verdict(dm, level))  # fmt: skip


def best_baseline(path: Path, read_json) -> tuple[str, dict[str, float]] | None:
    """The best naive baseline recorded by the evaluate stage, for context (None: no metrics.json)."""
    if not path.is_file():
        return None
    metrics = read_json(path)
    test = metrics.get("test", {})
    best = metrics.get("best_baseline") or min((k for k in test if k != "lstm"), key=lambda k: test[k]["rmse"], default=None)
    return None if best is None else (best, test[best])


def render(c: Comparison) -> list[str]:
    """The side-by-side table, the test's numbers and the verdict line (last)."""
    from lstmops.tasks.forecast.task import format_metrics

    rows = {"A": c.a.metrics, "B": c.b.metrics}
    if c.baseline is not None:
        rows[c.baseline[0]] = c.baseline[1]
    table = format_metrics(rows, c.target).splitlines()
    table[0] = f"{c.windows} test windows of {c.target}, horizon {c.horizon}, original units"
    lines = [f"{s.label}: {s.located.description} (history {s.history} steps)" for s in (c.a, c.b)] + table
    if c.baseline is not None:
        lines.append(f"  ({c.baseline[0]}: the best naive baseline, from {paths.METRICS})")
    else:
        lines.append(f"  (no {paths.METRICS}: run lstmops evaluate for the naive baselines)")
    dm = c.dm
    lines += [
        f"Diebold-Mariano test, loss {c.loss} per window: mean A {dm.mean_loss_a:.4g}, B {dm.mean_loss_b:.4g}, "
        f"A - B {dm.mean_difference:+.4g}",
        f"  DM {dm.statistic:.3f} (HLN-corrected, Newey-West lag {dm.lag}, t with {dm.df} df): "
        f"p two-sided {dm.p_two_sided:.2g}, p one-sided (B better than A) {dm.p_b_better:.2g}",
        c.verdict,
    ]
    return lines


def as_json(c: Comparison) -> dict:
    def side(s: Scored) -> dict:
        return {"argument": s.located.argument, "kind": s.located.kind, "model": s.located.description,
                "history": s.history, "metrics": s.metrics}  # fmt: skip

    return {
        "target": c.target, "windows": c.windows, "horizon": c.horizon, "a": side(c.a), "b": side(c.b),
        "best_baseline": None if c.baseline is None else {"name": c.baseline[0], "metrics": c.baseline[1],
                                                          "source": str(paths.METRICS)},
        "diebold_mariano": {"loss": c.loss, "level": c.level, **c.dm.as_dict()},
        "verdict": c.verdict,
        "significant": c.dm.p_b_better < c.level or (c.dm.p_two_sided < c.level and c.dm.mean_difference < 0),
    }  # fmt: skip

