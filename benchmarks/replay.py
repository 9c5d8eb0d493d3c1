"""The monitoring loop replayed on the embedded year, day by day, against two schedules in one run.

Each day the day's data lands; the champion's forecast for the next day is made from it (the
forecaster's ``predict``, as ``lstmops predict``, into a forecasts store); the day whose actuals
have arrived is scored beside the naive forecasts on the same origin (the monitor's scoring) and
judged by the decay rule of params.yaml (``monitor.rule``, as shipped); when the rule fires, the
loop retrains and the new model is the champion from the next origin. Three schedules on the
same days:

  loop      retrain when the rule fires (the monitor's decision)
  nightly   retrain every night (the retrain deployment's cron)
  never     keep the first champion

Two years: the data as it is, and with demand planted 1.2x higher from --shift-date (in the second
half). Printed: days from the shift to the first detection, false alarms (firings before the
shift, or on the unshifted year), retrains, and each schedule's realized RMSE over the walked
days and over the days after the shift, beside the best naive forecast's on the same origins.

Affordable on 2 cores: a small forecaster (96 steps of history, one LSTM layer of 16, the day
ahead) trained on the newest --train-days days with few epochs; nightly retrains of the unshifted
year are reused for the shifted one up to the shift (same data, same seed: same models).

    .venv/bin/python benchmarks/replay.py [--start 2014-09-01] [--shift-date 2014-11-01] [--epochs 6]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "source" / "vic_elec_2014.csv"
SMALL = [
    "window.input_steps=96", "window.horizon=48", "model.hidden_size=16", "model.num_layers=1",
    "model.seasonal_skip=48", "evaluate.seasonal_periods={seasonal_naive_day: 48}", "evaluate.backtest_folds=0",
    "train.positions=48", "train.spans_per_batch=16", "train.warmup_steps=0", "train.device=cpu",
    "data.source=source.parquet",
]  # fmt: skip


def settings(folder: Path, epochs: int):
    from lstmops import config

    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    return config.load(folder, [*SMALL, f"train.epochs={epochs}", f"train.patience={max(2, epochs // 2)}"])


def retrain(cfg, folder: Path, data: pd.DataFrame, until: pd.Timestamp, train_days: int):
    """A model trained on the ``train_days`` days before ``until``: prepare, the one training engine,
    export to TorchScript, loaded as the server loads it."""
    from lstmops import paths
    from lstmops.serve.loader import load_torchscript
    from lstmops.tasks import for_task
    from lstmops.train import fit

    task = for_task(cfg.task)
    span = data[(data.timestamp < until) & (data.timestamp >= until - pd.Timedelta(days=train_days))]
    (folder / paths.SNAPSHOT).parent.mkdir(parents=True, exist_ok=True)
    span.to_parquet(folder / paths.SNAPSHOT, index=False)
    task.prepare(cfg, folder)
    with contextlib.redirect_stdout(sys.stderr):  # the engine's epoch lines: progress, not the table
        fit(cfg, partial(task.trainer, cfg, folder), folder / paths.CHECKPOINT)
    task.export(cfg, folder)
    return load_torchscript(folder / paths.TORCHSCRIPT, f"trained-until-{until.date()}")


@dataclass
class Walk:
    name: str
    days: list[pd.Timestamp] = field(default_factory=list)
    sq_errors: list[float] = field(default_factory=list)  # the champion's mean squared error per day
    naive: dict[str, list[float]] = field(default_factory=dict)  # per baseline, per day
    fired: list[pd.Timestamp] = field(default_factory=list)
    retrains: int = 0


def walk(cfg, folder: Path, data: pd.DataFrame, days: list[pd.Timestamp], schedule: str, first_model,
         train_days: int, nightly_models: dict | None = None) -> Walk:  # fmt: skip
    """One schedule over the days: predict, land, score, judge, maybe retrain."""
    from lstmops.monitor import decay, score
    from lstmops.monitor.store import LocalStore, read_forecasts, write_forecasts
    from lstmops.tasks import for_task

    task = for_task(cfg.task)
    rule = cfg.monitor.rule
    store = LocalStore(folder / f"store-{schedule}")
    result, model, version, judged, last_fired = Walk(schedule), first_model, 1, [], None
    registered = None
    for day in days:
        if schedule == "nightly" and day != days[0]:
            model = nightly_models[day] if nightly_models is not None and day in nightly_models else retrain(cfg, folder / "fit", data, day, train_days)
            if nightly_models is not None:
                nightly_models[day] = model
            version, result.retrains = version + 1, result.retrains + 1
        if registered is None or registered[0] != version:
            registered = (version, holdout_rmse(cfg, folder, data, day, model))
        # The data up to this midnight has landed: the champion forecasts the day ahead.
        data[data.timestamp < day].to_parquet(folder / "source.parquet", index=False)
        rows = task.predict(cfg, folder, model, None, 1)
        write_forecasts(store, "replay", version, rows, pd.Timestamp("2026-01-01", tz="UTC"))
        # The next midnight: the day's actuals have arrived; score it as the monitor does.
        data[data.timestamp < day + pd.Timedelta(days=1)].to_parquet(folder / "source.parquet", index=False)
        observed = task.observe(cfg, folder)
        scored = score.realized(read_forecasts(store, "replay", since=day), observed.actuals)
        scored = scored[(scored.version == version) & (scored.origin == day)]
        frame = score.long_form(scored, observed.baselines(pd.DatetimeIndex([day]), 48))
        daily = score.by_day(frame)
        errors = dict(zip(daily.forecaster, daily.rmse, strict=True))
        own = errors.pop(score.MODEL)
        result.days.append(day)
        result.sq_errors.append(own**2)
        for name, value in errors.items():
            result.naive.setdefault(name, []).append(value**2)
        judged.append(decay.judge(str(day), own, errors, registered[1], rule))
        decision = decay.decide(judged, rule, last_fired)
        if decision.fired:
            result.fired.append(day)
            last_fired = decision.last_origin
            if schedule == "loop":
                model = retrain(cfg, folder / "fit", data, day + pd.Timedelta(days=1), train_days)
                version, result.retrains, judged, last_fired = version + 1, result.retrains + 1, [], None
    return result


def holdout_rmse(cfg, folder: Path, data: pd.DataFrame, until: pd.Timestamp, model) -> float:
    """The model's RMSE on the day-ahead forecasts from each midnight of the week before ``until``:
    its error at registration, as the rule's vs_registered reads it."""
    import torch

    frame = data[data.timestamp < until].set_index("timestamp")
    values = frame[model.features].to_numpy(np.float32)
    target = frame[cfg.data.target].to_numpy(np.float64)
    ends = [len(frame) - 48 * k for k in range(2, 9)]
    x = torch.from_numpy(np.stack([values[e - model.input_steps : e] for e in ends]))
    out = model.predict(x).numpy()
    actual = np.stack([target[e : e + 48] for e in ends])
    return float(np.sqrt(np.mean((out - actual) ** 2)))


def rmse(values: list[float]) -> float:
    return float(np.sqrt(np.mean(values))) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", default="2014-09-01", help="First walked day (the champion trains on the days before).")
    parser.add_argument("--shift-date", default="2014-11-01", help="Demand x --factor from this day on (shifted year).")
    parser.add_argument("--factor", type=float, default=1.2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-days", type=int, default=90, help="Each model trains on this many days before its cutoff.")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # one core per run: the other is the machine's, as on a shared CI box
    started = time.perf_counter()
    base = pd.read_csv(SOURCE, parse_dates=["timestamp"])
    start, shift = pd.Timestamp(args.start), pd.Timestamp(args.shift_date)
    last = base.timestamp.iloc[-1].normalize()
    days = list(pd.date_range(start, last - pd.Timedelta(days=1), freq="1D"))
    shifted = base.copy()
    shifted.loc[shifted.timestamp >= shift, "demand_gw"] *= args.factor
    with tempfile.TemporaryDirectory(prefix="lstmops-replay-") as tmp:
        folder = Path(tmp)
        cfg = settings(folder, args.epochs)
        first = retrain(cfg, folder / "fit", base, start, args.train_days)  # trained before the shift: the same for both years
        nightly: dict = {}
        results = {}
        for year, data in (("unshifted", base), ("shifted", shifted)):
            # the shifted year's nightly models equal the unshifted year's until the shift (same data before it)
            reuse = {d: m for d, m in nightly.items() if d <= shift} if year == "shifted" else nightly
            for schedule in ("loop", "nightly", "never"):
                t0 = time.perf_counter()
                results[year, schedule] = walk(cfg, folder, data.copy(), days, schedule, first, args.train_days,
                                               reuse if schedule == "nightly" else None)  # fmt: skip
                print(f"  {year:<10} {schedule:<8} walked {len(days)} days in {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    rule = cfg.monitor.rule
    print(f"replay: {len(days)} days ({days[0].date()} .. {days[-1].date()}), shift x{args.factor} from {shift.date()}; "
          f"rule: {rule.metric} > (1+{rule.vs_baseline}) x best naive or > (1+{rule.vs_registered}) x registered, "
          f"{rule.bad_days} of {rule.of_days} days, cooldown {rule.cooldown_days}; model: 96 steps, LSTM 16, "
          f"{args.epochs} epochs on {args.train_days} days")  # fmt: skip
    head = f"{'year':<10} {'schedule':<8} {'retrains':>8} {'fired':>6} {'false':>6} {'detect':>7} {'RMSE all':>9} {'naive all':>9} {'RMSE post':>9} {'naive post':>10}"
    print(head)
    for (year, schedule), r in results.items():
        post = [i for i, d in enumerate(r.days) if d >= shift]
        best = min(r.naive, key=lambda n: rmse(r.naive[n]))
        false = sum(1 for d in r.fired if year == "unshifted" or d < shift)
        detected = next((d for d in r.fired if year == "shifted" and d >= shift), None)
        detect = f"{(detected - shift).days + 1}d" if detected is not None else "-"
        print(f"{year:<10} {schedule:<8} {r.retrains:>8} {len(r.fired):>6} {false:>6} {detect:>7} "
              f"{rmse(r.sq_errors):>9.4f} {rmse(r.naive[best]):>9.4f} "
              f"{rmse([r.sq_errors[i] for i in post]):>9.4f} {rmse([r.naive[best][i] for i in post]):>10.4f}")  # fmt: skip
    print(f"best naive forecast: {best}; RMSE in GW over the walked days / the days from the shift; "
          f"detect: days from the shift to the first firing (day 1 = the shift's first day); "
          f"fired/false counted for every schedule (only the loop acts on them); {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
