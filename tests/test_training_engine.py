"""Sequence training: spans cover every training window once per epoch and train the same
forecasts as windows; a killed training run resumes and ends bit-identical on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from functools import partial

import pandas as pd
import pytest
import torch

from lstmops import config, stages
from lstmops.tasks.forecast import task as forecast
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec
from lstmops.tasks.forecast.windows import gather, gather_spans, span_chunks
from lstmops.train import ProgressBars, fit

from .conftest import SMALL, SMALL_ROWS, SOURCE_CSV, make_project

CLI = Path(sys.executable).parent / "lstmops"


@pytest.mark.parametrize("n, positions, phase", [(100, 32, 0), (100, 32, 7), (781, 336, 335), (5, 8, 3)])
def test_span_chunks_cover_every_origin_exactly_once(n, positions, phase):
    chunks = span_chunks(n, positions, phase)
    covered = [i for first, length in chunks for i in range(first, first + length)]
    assert covered == list(range(n))
    assert all(0 < length <= positions for _, length in chunks)


def test_a_span_trains_the_same_forecasts_as_windows():
    torch.manual_seed(0)
    series = torch.randn(300, 3)
    burn_in, positions, horizon = 40, 16, 5
    model = LSTMForecaster(ModelSpec(3, 8, 2, 0.0, horizon)).eval()
    starts, lengths = torch.tensor([50, 120]), torch.tensor([16, 9])
    x, y, mask = gather_spans(series, starts, lengths, positions, burn_in, horizon, target_index=0)
    assert x.shape == (2, burn_in + positions - 1, 3) and y.shape == (2, positions, horizon)
    assert mask.sum() == 25 and not mask[1, 9:].any()
    all_forecasts = model.forward_all(x)[:, burn_in - 1 :]
    for k in (0, 8):  # position k forecasts origin start + k from the same targets as window mode
        origin = starts + k
        wx, wy = gather(series, origin, burn_in, horizon, 0)
        torch.testing.assert_close(y[:, k], wy)
    # at the first position the span's history is exactly the window: identical forecast
    wx, _ = gather(series, starts, burn_in, horizon, 0)
    torch.testing.assert_close(all_forecasts[:, 0], model(wx), rtol=0, atol=1e-6)


def train_cmd(*extra: str) -> list[str]:
    overrides = SMALL + ["train.mode=window", "train.batch_size=8", "train.epochs=25", "train.patience=25",
                         "train.device=cpu", *extra]  # fmt: skip
    return [str(CLI), "train", *[a for o in overrides for a in ("-S", o)]]


@pytest.mark.slow
def test_killed_training_resumes_and_ends_bit_identical(project):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    for stage in ("ingest", "validate", "prepare"):
        subprocess.run([str(CLI), stage, *[a for o in SMALL for a in ("-S", o)]], cwd=project, check=True, env=env)
    state, checkpoint = project / "models/train_state.pt", project / "models/checkpoint.pt"

    subprocess.run(train_cmd(), cwd=project, check=True, env=env, capture_output=True)
    uninterrupted = torch.load(checkpoint, weights_only=True)
    checkpoint.unlink()
    assert not state.exists()  # a finished run leaves no state behind

    proc = subprocess.Popen(train_cmd(), cwd=project, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    saved_epoch = None
    while time.monotonic() < deadline:  # let a few epochs pass, then kill in the middle of one
        try:
            saved_epoch = torch.load(state, weights_only=False)["progress"]["epoch"]
        except (EOFError, RuntimeError, FileNotFoundError):
            saved_epoch = 0
        if saved_epoch >= 3:
            break
        time.sleep(0.05)  # poll gently: the training process needs the cores
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not checkpoint.exists()

    resumed = subprocess.run(train_cmd(), cwd=project, env=env, capture_output=True, text=True, check=True)
    assert "resuming from the training state saved after epoch" in resumed.stderr
    final = torch.load(checkpoint, weights_only=True)
    assert final["epoch"] == uninterrupted["epoch"]
    for name, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_the_single_process_run(project):
    """train.nproc_per_node=2 makes `lstmops train` launch torchrun with 2 CPU processes: each
    trains its half of every global batch; the averaged gradients equal the single process's, so
    the losses agree up to float summation order."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    overrides = [a for o in SMALL + ["train.epochs=3", "train.device=cpu"] for a in ("-S", o)]
    for stage in ("ingest", "validate", "prepare"):
        subprocess.run([str(CLI), stage, *overrides], cwd=project, check=True, env=env)
    subprocess.run([str(CLI), "train", *overrides], cwd=project, check=True, env=env, capture_output=True)
    single = json.loads((project / "models/train.json").read_text())

    ddp = subprocess.run(
        [str(CLI), "train", *overrides, "-S", "train.nproc_per_node=2"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    double = json.loads((project / "models/train.json").read_text())
    assert double["processes"] == 2 and single["processes"] == 1
    assert " x 2 processes, " in ddp.stdout and f"MLflow run {double['run_id']}" in ddp.stdout
    assert double["best_epoch"] == single["best_epoch"]
    assert double["best_val_loss"] == pytest.approx(single["best_val_loss"], rel=1e-4)


def test_progress_reports_rate_and_the_epoch_and_run_etas_while_an_epoch_runs(monkeypatch):
    logged: list[tuple[int, dict]] = []
    monkeypatch.setattr(ProgressBars, "LOG_EVERY_S", 0.0)
    bars = ProgressBars(epochs=4, windows_per_epoch=1000, done_epochs=1, log_metrics=lambda m, step: logged.append((step, m)))
    bars.start_epoch(2)
    time.sleep(0.05)
    bars.update(250)
    bars.close()
    step, metrics = logged[-1]
    assert step == 2 and metrics["windows_per_s"] > 0
    assert metrics["epoch_eta_s"] == pytest.approx(750 / metrics["windows_per_s"])
    assert metrics["eta_s"] == pytest.approx((4000 - 1250) / metrics["windows_per_s"])
    at_epoch_end = bars.run_estimates()  # the rate counts only what this process trained, not resumed epochs
    assert at_epoch_end["windows_per_s"] == pytest.approx(250 / bars.elapsed(), rel=0.05)
    assert at_epoch_end["eta_s"] == pytest.approx((4000 - 1250) / at_epoch_end["windows_per_s"])


def test_a_detached_burn_in_sets_the_state_but_gradients_reach_only_the_trained_positions():
    torch.manual_seed(0)
    model = LSTMForecaster(ModelSpec(3, 8, 2, 0.0, 5)).eval()
    x = torch.randn(2, 60, 3, requires_grad=True)
    through = model.forward_all(x, skip=40, grad_through_skip=True)
    detached = model.forward_all(x, skip=40, grad_through_skip=False)
    torch.testing.assert_close(detached, through)  # the same forecasts at every trained position
    detached.sum().backward()
    assert x.grad[:, :40].abs().sum() == 0 and x.grad[:, 40:].abs().sum() > 0


def test_the_thread_governor_gives_up_threads_to_other_processes_and_takes_them_back(monkeypatch):
    from lstmops import cpus

    before = torch.get_num_threads()
    samples = iter([(0.0, 0.0, 0.0),   # at start; 0.5 s later nothing is read (under a second)
                    (1.0, 3.8, 2.0),   # others used 1.8 of 2 CPUs -> one thread
                    (2.0, 5.7, 3.0),   # others still 0.9 -> stays at one
                    (3.0, 7.0, 4.2),   # others 0.1 (a light background) -> both threads again
                    (4.0, 9.0, 6.2)])  # fmt: skip
    monkeypatch.setattr(cpus.ThreadGovernor, "sample", staticmethod(lambda: next(samples)))
    clock = iter([0.5, 1.0, 2.0, 3.0, 4.0])  # what adjust() sees before it samples
    monkeypatch.setattr(cpus.time, "monotonic", lambda: next(clock))
    try:
        torch.set_num_threads(2)
        governor = cpus.ThreadGovernor(2)
        assert governor.adjust() is None
        assert governor.adjust() == 1 and torch.get_num_threads() == 1
        assert governor.adjust() is None and torch.get_num_threads() == 1
        assert governor.adjust() == 2 and torch.get_num_threads() == 2
        assert governor.adjust() is None  # unchanged
    finally:
        torch.set_num_threads(before)


def test_the_governor_reads_only_the_cpus_it_may_run_on_and_stands_aside_where_that_says_nothing(tmp_path, monkeypatch):
    from lstmops import cpus

    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: cpu0 busy 300 jiffies, cpu1 busy 50, cpu2 (not ours) 9000
    stat.write_text(f"cpu  9350 0 0 100 0 0 0 0\ncpu0 200 0 100 50 10 0 0 0\ncpu1 50 0 0 300 0 0 0 0\n"
                    f"cpu2 9000 0 0 0 0 0 0 0\nintr 1 2 3\n")  # fmt: skip
    assert cpus.busy_seconds(frozenset({0, 1}), stat) == 350 / tick
    assert cpus.busy_seconds(frozenset({7}), stat) is None  # none of its CPUs listed: no judgement

    monkeypatch.setattr(cpus, "cgroup_quota", lambda: None)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpus.ThreadGovernor.applies()
    monkeypatch.setattr(cpus, "cgroup_quota", lambda: len(os.sched_getaffinity(0)) - 0.5)
    assert not cpus.ThreadGovernor.applies()  # a quota is its share, whatever runs beside it
    monkeypatch.setattr(cpus, "cgroup_quota", lambda: None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert not cpus.ThreadGovernor.applies()  # sibling ranks are not competition


def test_one_or_two_threads_train_the_same_weights_bit_for_bit(tmp_path):
    """Why the governor may change the thread count mid-run: on CPU it changes speed, not results."""
    frame = pd.read_csv(SOURCE_CSV, nrows=SMALL_ROWS)
    root = make_project(tmp_path / "p", frame)
    cfg = config.load(root, [*SMALL, "train.epochs=2", "train.device=cpu", "train.adapt_threads=false"])
    stages.ingest(cfg, root)
    stages.validate(cfg, root)
    stages.prepare(cfg, root)
    before, weights = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fit(cfg, partial(forecast.trainer, cfg, root), tmp_path / f"{threads}.pt")
            weights.append(torch.load(tmp_path / f"{threads}.pt", weights_only=True)["state_dict"])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_fit_leaves_the_thread_count_as_it_found_it_after_the_governor_lowered_it(tmp_path, monkeypatch):
    """tune and backtest fit many times in one process: each fit starts from the configured count,
    not from the lowest point the previous one's governor reached while a neighbour was busy."""
    from lstmops import cpus

    monkeypatch.setattr(cpus.ThreadGovernor, "applies", staticmethod(lambda: True))
    monkeypatch.setattr(cpus.ThreadGovernor, "adjust", lambda self: torch.set_num_threads(1))  # a busy neighbour
    frame = pd.read_csv(SOURCE_CSV, nrows=SMALL_ROWS)
    root = make_project(tmp_path / "p", frame)
    cfg = config.load(root, [*SMALL, "train.epochs=1", "train.device=cpu", "train.adapt_threads=true"])
    stages.ingest(cfg, root)
    stages.validate(cfg, root)
    stages.prepare(cfg, root)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fit(cfg, partial(forecast.trainer, cfg, root), tmp_path / "model.pt")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
