"""The long-time-lag problems of Hochreiter & Schmidhuber (1997): training sequences until the
paper's criterion is met, per problem and seed, beside the paper's figures, with the wall time.

    .venv/bin/python benchmarks/long_lag.py [--seeds 42 1 2] [--problems adding_100 embedded_reber ...]
                                            [--budget adding_500=100000 --budget adding_1000=100000] [--jobs 1]

Each run goes through the task's own code, as `lstmops run --pipeline pipelines/long_lag` does, less MLflow:
ingest (the held-out sets generated from ``long_lag.data_seed``, here the run's seed, so every
seed is an independent trial with its own data), validate (every sequence against the paper's
definition), prepare, the training engine (``train.fit`` with the task's trainer: the criterion
checked on the held-out set every ``check_every`` training sequences; it stops when met), then
evaluate on the test set. The settings are params.yaml's defaults, except the budget of the
problems named in ``--budget`` (the learning rate's cosine decay spans the budget, so a cap
also shortens the schedule).

Printed per problem: the paper's figure, sequences to solve per seed ("-": not within the budget),
their median and the paper / median ratio, the median wall time until solved (training only:
checks included, data generation and start-up not), and the test set's fraction correct per seed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = {  # name -> overrides
    "adding_100": ["long_lag.source=adding", "long_lag.adding.T=100"],
    "adding_500": ["long_lag.source=adding", "long_lag.adding.T=500"],
    "adding_1000": ["long_lag.source=adding", "long_lag.adding.T=1000"],
    "embedded_reber": ["long_lag.source=embedded_reber"],
    "temporal_order": ["long_lag.source=temporal_order"],
}
DEFAULT_BUDGETS = {"adding_500": 100_000, "adding_1000": 100_000}  # capped: a few minutes per seed on 2 cores


def run_one(name: str, seed: int, budget: int | None, params: dict) -> dict:
    """One trial through the task's stages (no MLflow); its summary and test metrics. ``params``
    is params.yaml as read once at the start, so every run uses the same settings."""
    import io
    from contextlib import redirect_stderr

    from lstmops import config, paths
    from lstmops.io import read_json, write_json
    from lstmops.tasks.long_lag import task
    from lstmops.train import fit

    source = PROBLEMS[name][0].split("=")[1]
    overrides = [f"seed={seed}", f"long_lag.data_seed={seed}", "train.device=cpu", *PROBLEMS[name]]
    if budget is not None:
        overrides.append(f"long_lag.{source}.max_sequences={budget}")
    cfg = config.validate(config.apply_overrides(params, overrides))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        for stage in (task.ingest, task.validate, task.prepare):
            stage(cfg, root)
        data_seconds = time.perf_counter() - started
        with redirect_stderr(io.StringIO()):  # the engine's progress bars and lines
            _, summary = fit(cfg, partial(task.trainer, cfg, root), root / paths.CHECKPOINT)
        write_json(root / paths.TRAIN_SUMMARY, summary)
        task.evaluate(cfg, root)
        metrics = read_json(root / paths.METRICS)
    return {"problem": name, "seed": seed, "budget": cfg.long_lag.problem.max_sequences, "data_seconds": round(data_seconds, 1),
            "sequences_to_solve": summary["sequences_to_solve"], "seconds_to_solve": summary["seconds_to_solve"],
            "fit_seconds": summary["fit_seconds"], "sequences_per_check": summary["sequences_per_check"],
            "paper": summary["paper_sequences"], "test_correct": metrics["test"]["lstm"]["correct_fraction"],
            "test_wrong": metrics["test"]["lstm"]["wrong"], "test_sequences": metrics["test_sequences"]}  # fmt: skip


def table(results: list[dict], seeds: list[int]) -> str:
    head = f"{'problem':<16}{'paper':>9}" + "".join(f"{'seed ' + str(s):>10}" for s in seeds)
    head += f"{'median':>10}{'paper/median':>14}{'median s':>10}  test correct (per seed)"
    lines = [head]
    for name in dict.fromkeys(r["problem"] for r in results):
        rows = {r["seed"]: r for r in results if r["problem"] == name}
        counts = [rows[s]["sequences_to_solve"] for s in seeds]
        solved = [c for c in counts if c is not None]
        # Unsolved runs count as more than any solved one: the median is solved only if most are.
        ranked = sorted(counts, key=lambda c: (c is None, c or 0))
        median = ranked[len(ranked) // 2]
        seconds = sorted((rows[s]["seconds_to_solve"] if rows[s]["seconds_to_solve"] is not None else float("inf"))
                         for s in seeds)  # fmt: skip
        median_s = seconds[len(seconds) // 2]
        paper = rows[seeds[0]]["paper"]
        line = f"{name:<16}{paper:>9,}" + "".join(f"{c:>10,}" if c is not None else f"{'-':>10}" for c in counts)
        line += f"{median:>10,}" if median is not None else f"{'-':>10}"
        line += f"{paper / median:>13.1f}x" if median is not None else f"{'-':>14}"
        line += f"{median_s:>10.1f}" if median_s != float("inf") else f"{'-':>10}"
        line += "  " + " / ".join(f"{rows[s]['test_correct']:.2%}" for s in seeds)
        if len(solved) < len(counts):
            budget = rows[seeds[0]]["budget"]
            fits = [rows[s]["fit_seconds"] for s in seeds if rows[s]["sequences_to_solve"] is None]
            line += f"  (unsolved within {budget:,}: {', '.join(f'{f:.0f} s' for f in fits)})"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--budget", action="append", default=[], metavar="PROBLEM=SEQUENCES",
                        help="training budget of a problem (default: adding_500=100000, adding_1000=100000; others: params.yaml)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each trains on one thread); 1 for clean timings")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    budgets = dict(DEFAULT_BUDGETS)
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in PROBLEMS or not value.isdigit():
            parser.error(f"--budget {item!r}: expected PROBLEM=SEQUENCES with PROBLEM one of {', '.join(PROBLEMS)}")
        budgets[name] = int(value)
    from lstmops import config

    params = config.read_params(ROOT / "pipelines" / "long_lag" / config.PARAMS_FILE)
    jobs = [(name, seed, budgets.get(name), params) for name in args.problems for seed in args.seeds]
    started = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(run_one, *zip(*jobs)):
            results.append(result)
            solved = result["sequences_to_solve"]
            print(f"  {result['problem']} seed {result['seed']}: "
                  + (f"solved after {solved:,} sequences in {result['seconds_to_solve']:.1f} s" if solved is not None
                     else f"not solved within {result['budget']:,} sequences ({result['fit_seconds']:.1f} s)")
                  + f"; test {result['test_correct']:.2%} correct", flush=True)  # fmt: skip
    print()
    print(table(results, args.seeds))
    capped = {k: v for k, v in budgets.items() if k in args.problems}
    print(f"budgets capped: {', '.join(f'{k} {v:,}' for k, v in capped.items()) or 'none'}; "
          f"total {time.perf_counter() - started:.0f} s with --jobs {args.jobs}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
