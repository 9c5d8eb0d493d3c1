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

Other rules are judged on the same forecasts with --rule (the shipped rule with some fields changed,
e.g. ``--rule vs_baseline=0.25,bad_days=4``, repeatable): on the never-retrain walks, which the loop
follows until its first firing, so a rule's false alarms (none or some) and its detection day are the
loop's. ``--schedules never`` walks only those (a minute or two): enough to compare rules.
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
    fired: list[pd.Timestamp] = field(default_factory=list)
    retrains: int = 0
    # per day: (origin, the champion's RMSE, the naive forecasts' RMSEs, its registration-time RMSE):
    # the table's RMSEs come from it, and other rules are judged on the same forecasts (--rule)
    evidence: list[tuple[str, float, dict[str, float], float]] = field(default_factory=list)

    def rmse(self, forecaster: str | None = None, since: pd.Timestamp | None = None) -> float:
        """Over the walked days (from ``since``), of the champion or of a naive forecaster."""
        errors = [own if forecaster is None else naive[forecaster] for origin, own, naive, _ in self.evidence
                  if since is None or pd.Timestamp(origin) >= since]  # fmt: skip
        return float(np.sqrt(np.mean(np.square(errors)))) if errors else float("nan")


class Judge:
    """The monitor's decision day by day: the days judged since the last retrain, and the
    cooldown from the last firing (monitor/decay.py, as `lstmops monitor` runs it)."""

    def __init__(self, rule) -> None:
        self.rule, self.judged, self.last_fired = rule, [], None

    def fires(self, origin: str, own: float, errors: dict[str, float], registered: float) -> bool:
        from lstmops.monitor import decay

        self.judged.append(decay.judge(origin, own, errors, registered, self.rule))
        decision = decay.decide(self.judged, self.rule, self.last_fired)
        if decision.fired:
            self.last_fired = decision.last_origin
        return decision.fired


def walk(cfg, folder: Path, data: pd.DataFrame, days: list[pd.Timestamp], schedule: str, first_model,
         train_days: int, nightly_models: dict | None = None) -> Walk:  # fmt: skip
    """One schedule over the days: predict, land, score, judge, maybe retrain."""
    from lstmops.monitor import score
    from lstmops.monitor.store import LocalStore, read_forecasts, write_forecasts
    from lstmops.tasks import for_task

    task = for_task(cfg.task)
    store = LocalStore(folder / f"store-{schedule}")
    result, model, version, judge = Walk(schedule), first_model, 1, Judge(cfg.monitor.rule)
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
        result.evidence.append((str(day), own, errors, registered[1]))
        if judge.fires(*result.evidence[-1]):
            result.fired.append(day)
            if schedule == "loop":  # the retrained champion is judged afresh
                model = retrain(cfg, folder / "fit", data, day + pd.Timedelta(days=1), train_days)
                version, result.retrains, judge = version + 1, result.retrains + 1, Judge(cfg.monitor.rule)
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


def firings(evidence, rule) -> list[pd.Timestamp]:
    """The days ``rule`` fires on a walk that never retrains (its own cooldown between firings)."""
    judge = Judge(rule)
    return [pd.Timestamp(day[0]) for day in evidence if judge.fires(*day)]


def parse_rule(text: str, shipped):
    """``vs_baseline=0.25,bad_days=4`` -> the shipped rule with those fields changed (null: off)."""
    from lstmops.config import parse_override
    from lstmops.monitor.settings import DecayRule

    changes = {".".join(key): value for key, value in map(parse_override, filter(None, text.split(",")))}
    return DecayRule(**{**shipped.model_dump(), **changes})


def describe(rule) -> str:
    parts = []
    if rule.vs_baseline is not None:
        parts.append(f"> (1+{rule.vs_baseline:g}) x best naive")
    if rule.vs_registered is not None:
        parts.append(f"> (1+{rule.vs_registered:g}) x registered")
    return f"{rule.metric} {' or '.join(parts)}, {rule.bad_days} of {rule.of_days} days"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", default="2014-09-01", help="First walked day (the champion trains on the days before).")
    parser.add_argument("--shift-date", default="2014-11-01", help="Demand x --factor from this day on (shifted year).")
    parser.add_argument("--factor", type=float, default=1.2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-days", type=int, default=90, help="Each model trains on this many days before its cutoff.")
    parser.add_argument(
        "--schedules", default="loop,nightly,never",
        help="Comma-separated schedules to walk (never alone: a few minutes, enough to compare rules with --rule).",
    )  # fmt: skip
    parser.add_argument(
        "--rule", action="append", default=[], metavar="FIELD=VALUE,...",
        help="Also judge this rule (the shipped one with these monitor.rule fields changed, e.g. "
        "vs_baseline=0.25,bad_days=4) on the never-retrain walks; repeatable. The loop is the never walk "
        "until its first firing, so false alarms (none or some) and detection carry over to the loop.",
    )  # fmt: skip
    args = parser.parse_args(argv)

    import torch

    from lstmops.monitor import decay

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
        schedules = [s for s in args.schedules.split(",") if s]
        alternatives = [parse_rule(text, cfg.monitor.rule) for text in args.rule]
        if alternatives and "never" not in schedules:
            parser.error("--rule needs the never schedule")
        first = retrain(cfg, folder / "fit", base, start, args.train_days)  # trained before the shift: the same for both years
        nightly: dict = {}
        results = {}
        for year, data in (("unshifted", base), ("shifted", shifted)):
            # the shifted year's nightly models equal the unshifted year's until the shift (same data before it)
            reuse = {d: m for d, m in nightly.items() if d <= shift} if year == "shifted" else nightly
            for schedule in schedules:
                t0 = time.perf_counter()
                results[year, schedule] = walk(cfg, folder, data.copy(), days, schedule, first, args.train_days,
                                               reuse if schedule == "nightly" else None)  # fmt: skip
                print(f"  {year:<10} {schedule:<8} walked {len(days)} days in {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    rule = cfg.monitor.rule
    print(f"replay: {len(days)} days ({days[0].date()} .. {days[-1].date()}), shift x{args.factor} from {shift.date()}; "
          f"rule: {describe(rule)}, cooldown {rule.cooldown_days}; model: 96 steps, LSTM 16, "
          f"{args.epochs} epochs on {args.train_days} days")  # fmt: skip
    head = f"{'year':<10} {'schedule':<8} {'retrains':>8} {'fired':>6} {'false':>6} {'detect':>7} {'RMSE all':>9} {'naive all':>9} {'RMSE post':>9} {'naive post':>10}"
    print(head)
    for (year, schedule), r in results.items():
        best = min(r.evidence[0][2], key=r.rmse)
        false = sum(1 for d in r.fired if year == "unshifted" or d < shift)
        detected = next((d for d in r.fired if year == "shifted" and d >= shift), None)
        detect = f"{(detected - shift).days + 1}d" if detected is not None else "-"
        print(f"{year:<10} {schedule:<8} {r.retrains:>8} {len(r.fired):>6} {false:>6} {detect:>7} "
              f"{r.rmse():>9.4f} {r.rmse(best):>9.4f} {r.rmse(since=shift):>9.4f} {r.rmse(best, shift):>10.4f}")  # fmt: skip
    print(f"best naive forecast: {best}; RMSE in GW over the walked days / the days from the shift; "
          f"detect: days from the shift to the first firing (day 1 = the shift's first day); "
          f"fired/false counted for every schedule (only the loop acts on them); {time.perf_counter() - started:.0f} s")
    if alternatives:
        print("rules judged on the never-retrain walks (fired: firings with the rule's cooldown; detect: the first "
              "firing from the shift on; viol: violating days on the unshifted year / from the shift)")  # fmt: skip
        print(f"{'rule':<72} {'false':>6} {'fired':>6} {'detect':>7} {'viol unsh':>9} {'viol post':>9}")
        unshifted, shifted = results["unshifted", "never"].evidence, results["shifted", "never"].evidence
        for alt in [rule, *alternatives]:
            fired = firings(shifted, alt)
            false = firings(unshifted, alt) + [d for d in fired if d < shift]
            detected = next((d for d in fired if d >= shift), None)
            detect = f"{(detected - shift).days + 1}d" if detected is not None else "-"
            unsh = sum(decay.judge(*day, alt).violates for day in unshifted)
            post = sum(decay.judge(*day, alt).violates for day in shifted if pd.Timestamp(day[0]) >= shift)
            label = describe(alt) + (" (shipped)" if alt is rule else "")
            print(f"{label:<72} {len(false):>6} {len(fired):>6} {detect:>7} {unsh:>9} {post:>9}")


if __name__ == "__main__":
    main()
