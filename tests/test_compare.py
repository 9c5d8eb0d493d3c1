"""`lstmops compare` and the Diebold-Mariano test: the statistics by hand, the command end to end
on a small project, and the gate's promote.require_significance against a real MLflow server."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

from lstmops.errors import ConfigError
from lstmops.registry.gate import Evidence, decide
from lstmops.stats import diebold_mariano, hac_variance, verdict, window_losses

from .conftest import SMALL, make_project

CLI = Path(sys.executable).parent / "lstmops"
FEATURES = ["demand_gw", "temperature_c", "workday"]
HORIZON = 12  # conftest.SMALL: window.horizon=12, window.input_steps=48


# --- the statistics -------------------------------------------------------------------------------


def test_dm_statistic_by_hand():
    # d = [1, 2, 3, 4]: mean 2.5; gamma_0 = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
    # h = 1 (lag 0): DM = 2.5 / sqrt(1.25 / 4) = sqrt(20); HLN sqrt((4 + 1 - 2) / 4): DM* = sqrt(15).
    one = diebold_mariano(np.array([1.0, 2, 3, 4]), np.zeros(4), horizon=1)
    assert one.statistic == pytest.approx(math.sqrt(15))
    assert one.p_two_sided == pytest.approx(2 * sps.t.sf(math.sqrt(15), 3))
    assert one.p_b_better == pytest.approx(sps.t.sf(math.sqrt(15), 3)) and one.df == 3 and one.lag == 0
    # h = 2 (lag 1): gamma_1 = (0.75 - 0.25 + 0.75) / 4 = 0.3125, Bartlett weight 1/2:
    # LRV = 1.25 + 2 * 0.5 * 0.3125 = 1.5625, DM = 2.5 / sqrt(1.5625 / 4) = 4;
    # HLN sqrt((4 + 1 - 4 + 2/4) / 4) = sqrt(0.375): DM* = sqrt(6).
    two = diebold_mariano(np.array([1.0, 2, 3, 4]), np.zeros(4), horizon=2)
    assert hac_variance(np.array([1.0, 2, 3, 4]), 1) == pytest.approx(1.5625)
    assert two.statistic == pytest.approx(math.sqrt(6)) and two.lag == 1
    assert two.p_b_better + two.p_a_better == pytest.approx(1)
    assert two.mean_difference == 2.5 and two.mean_loss_a == 2.5 and two.mean_loss_b == 0


def test_hac_variance_with_lag_0_is_the_plain_variance():
    d = np.random.default_rng(3).normal(size=200)
    assert hac_variance(d, 0) == pytest.approx(np.var(d))


def test_window_losses_are_the_mean_over_the_horizon():
    actual = np.array([[1.0, 2.0], [4.0, 4.0]])
    forecast = np.array([[2.0, 4.0], [4.0, 2.0]])
    assert window_losses(actual, forecast, "mse").tolist() == [2.5, 2.0]
    assert window_losses(actual, forecast, "mae").tolist() == [1.5, 1.0]
    assert window_losses(actual, forecast, "mape").tolist() == [100.0, 25.0]


def test_identical_forecasts_give_p_1_and_no_significant_difference():
    losses = np.random.default_rng(0).random(50)
    result = diebold_mariano(losses, losses.copy(), horizon=4)
    assert result.statistic == 0 and result.p_two_sided == 1 and result.p_b_better == 1
    assert not any(math.isnan(v) for v in (result.statistic, result.p_two_sided, result.p_b_better))
    assert verdict(result).startswith("no significant difference at the 5% level (two-sided p=1")


def overlapping(rng: np.random.Generator, sd: float, windows: int = 500, horizon: int = HORIZON) -> np.ndarray:
    """Per-window MSE of consecutive multi-step windows: each target step's error is shared by the
    windows that forecast it, so the losses are autocorrelated as in the gate's test windows."""
    actual_steps = np.cumsum(rng.normal(size=windows + horizon))
    errors = rng.normal(0, sd, windows + horizon)
    rows = np.arange(windows)[:, None] + np.arange(horizon)
    return window_losses(actual_steps[rows], actual_steps[rows] + errors[rows])


def test_clearly_lower_errors_on_500_windows_are_significant():
    rng = np.random.default_rng(7)
    a, b = overlapping(rng, 1.0), overlapping(rng, 0.8)
    result = diebold_mariano(a, b, HORIZON)
    assert result.p_b_better < 0.01
    assert verdict(result).startswith("B is better than A at the 5% level (one-sided p=")
    reverse = diebold_mariano(b, a, HORIZON)  # the other way round: A is the better one
    assert reverse.p_b_better > 0.99
    assert verdict(reverse, 0.05).startswith("A is better than B at the 5% level (two-sided p=")


def test_forecasts_differing_only_by_noise_are_not_significant():
    rng = np.random.default_rng(11)
    a, b = overlapping(rng, 1.0), overlapping(rng, 1.0)
    result = diebold_mariano(a, b, HORIZON)
    assert result.p_two_sided > 0.05 and result.p_b_better > 0.05
    assert verdict(result).startswith("no significant difference")
    # Ignoring the overlap (lag 0, h = 1) would understate the variance of the mean: larger |DM|.
    assert abs(diebold_mariano(a, b, 1).statistic) > abs(result.statistic)


def test_too_few_windows_or_bad_losses_are_refused():
    with pytest.raises(ValueError, match="too few"):
        diebold_mariano(np.ones(10), np.zeros(10), horizon=12)
    with pytest.raises(ValueError, match="NaN"):
        diebold_mariano(np.array([1.0, np.nan, 2, 3]), np.zeros(4))


def test_the_gate_rule_with_significance():
    base = dict(metric="rmse", min_improvement=0.01, challenger=0.9, baselines={"day": 1.0}, champion=1.0,
                champion_problem=None, validation="passed", parity_ok=True, significance=0.05)  # fmt: skip
    ok, reason = decide(Evidence(**base, dm_pvalue=0.21))
    assert not ok and reason.endswith("but not significantly better than the champion (DM p=0.21 >= 0.05)")
    ok, reason = decide(Evidence(**base, dm_pvalue=0.003))
    assert ok and reason.startswith("wins:") and "(DM p=0.003 < 0.05)" in reason
    assert not decide(Evidence(**{**base, "challenger": 0.999}, dm_pvalue=0.001))[0]  # the margin still applies


def test_require_significance_is_refused_for_tasks_without_window_losses():
    from lstmops import config

    repo = Path(__file__).resolve().parents[1]
    assert config.load(repo, ["promote.require_significance=true"]).promote.significance == 0.05
    with pytest.raises(ConfigError, match="promote.require_significance: .* task charlm has none"):
        config.load(repo / "pipelines" / "charlm", ["promote.require_significance=true"])


# --- a small project and forecasters without training -----------------------------------------------


class Rule(nn.Module):
    """A forecaster as a TorchScript file without any training: the last target value (back=0) or
    the value ``back`` steps before each target step (seasonal naive), plus ``bias``."""

    def __init__(self, back: int = 0, bias: float = 0.0, horizon: int = HORIZON, features: list[str] = FEATURES) -> None:
        super().__init__()
        self.features, self.target = list(features), features[0]
        self.input_steps, self.horizon, self.back, self.bias = 48, horizon, back, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        if self.back == 0:
            out = x[:, n - 1, 0].unsqueeze(1).repeat(1, self.horizon)
        else:
            out = x[:, n - self.back : n - self.back + self.horizon, 0]
        return out + self.bias


def save(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, small_frame):
    """Ingested and prepared (no training), a reports/metrics.json with the naive baselines of
    its test windows, and a unique registered-model name in params.yaml."""
    from lstmops import config, stages
    from lstmops.tasks.forecast.evaluate import baselines, evaluate_forecasts, mase_scale
    from lstmops.io import write_json
    from lstmops.tasks.forecast.task import holdout

    root = make_project(tmp_path_factory.mktemp("compare") / "project", small_frame)
    name = f"cmp-{uuid.uuid4().hex[:8]}"
    cfg = config.write_overrides(root, [*SMALL, f"mlflow.model_name={name}"])
    for stage in ("ingest", "validate", "prepare"):
        stages.RUNNERS[stage](cfg, root)
    h = holdout(root)
    naive = baselines(h.raw[:, 0].astype(np.float64), h.test_origins, HORIZON, {"seasonal_naive_day": 48})
    overall, _ = evaluate_forecasts(h.actual, naive, mase_scale(h.raw[:, 0].astype(np.float64), h.meta, 48))
    write_json(root / "reports" / "metrics.json", {"test": overall, "best_baseline": min(overall, key=lambda k: overall[k]["rmse"])})
    return root, cfg, name


def lstmops(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], cwd=root, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_compare_two_files_prints_the_table_and_the_verdict(small):
    root, _, _ = small
    worse = save(Rule(back=0, bias=1.0), root / "persistence_biased.ts")
    better = save(Rule(back=0), root / "persistence.ts")
    result = lstmops(root, "compare", str(worse), str(better))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"A: {worse} (history 48 steps)" and lines[1] == f"B: {better} (history 48 steps)"
    assert lines[2].endswith("test windows of demand_gw, horizon 12, original units")
    rows = {line.split()[0]: line.split()[1:] for line in lines[4:7]}
    assert lines[3].split() == ["forecaster", "RMSE", "MAE", "MAPE%", "R2", "MASE"]
    assert set(rows) == {"A", "B", "persistence"}
    assert rows["B"] == rows["persistence"]  # B is that baseline: the same numbers on the same windows
    assert float(rows["A"][0]) > float(rows["B"][0])  # RMSE
    assert "the best naive baseline, from reports/metrics.json" in lines[7]
    assert "Newey-West lag 11" in result.stdout and "HLN-corrected" in result.stdout
    assert lines[-1].startswith("B is better than A at the 5% level (one-sided p=")

    same = lstmops(root, "compare", str(better), str(better), "--json", "--loss", "mae")
    assert same.returncode == 0, same.stderr
    out = json.loads(same.stdout)
    assert out["a"]["metrics"] == out["b"]["metrics"] and out["a"]["kind"] == "file"
    assert out["diebold_mariano"]["loss"] == "mae" and out["diebold_mariano"]["p_two_sided"] == 1
    assert out["diebold_mariano"]["lag"] == HORIZON - 1 and not out["significant"]
    assert out["verdict"].startswith("no significant difference") and out["best_baseline"]["name"] == "persistence"


def test_bad_arguments_fail_in_one_line(small):
    root, _, _ = small
    good = save(Rule(back=0), root / "good.ts")
    other_horizon = save(Rule(back=0, horizon=6), root / "six.ts")
    other_features = save(Rule(back=0, features=["demand_gw", "temperature_c"]), root / "two.ts")
    (root / "junk.ts").write_text("not a model")
    cases = {
        ("missing.ts", str(good)): "missing.ts: no such file, and not a registry version",
        (str(good), str(other_horizon)): "B (" + str(other_horizon) + ") cannot score this project's test windows: "
                                         "it forecasts 6 steps, the test windows 12",
        (str(other_features), str(good)): "it reads features ['demand_gw', 'temperature_c']",
        (str(good), str(root / "junk.ts")): "cannot load as TorchScript",
    }  # fmt: skip
    for args, words in cases.items():
        result = lstmops(root, "compare", *args)
        assert result.returncode == 1 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result
        assert words in result.stderr, result.stderr
    loss = lstmops(root, "compare", str(good), str(good), "--loss", "huber")
    assert loss.returncode == 1 and "--loss huber: expected mse or mae" in loss.stderr


# --- against a real MLflow server (the session's) ----------------------------------------------------


def register(client, name: str, module: nn.Module, tmp: Path) -> tuple[int, str]:
    import mlflow

    mlflow.set_experiment("compare-tests")
    from lstmops.registry.register import register_file

    with mlflow.start_run() as run:
        version = register_file(client, name, save(module, tmp / "model.ts"), run.info.run_id)
    return int(version.version), run.info.run_id


@pytest.fixture
def registry(small, mlflow_server, monkeypatch, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    root, cfg, name = small
    name = f"{name}-{uuid.uuid4().hex[:4]}"  # a fresh registered model per test
    return MlflowClient(mlflow_server), name, root, cfg, tmp_path


@pytest.mark.integration
def test_compare_resolves_versions_aliases_and_run_ids(registry):
    from lstmops.registry.trail import move_champion

    client, name, root, _, tmp = registry
    v1, _ = register(client, name, Rule(back=0, bias=1.0), tmp)
    v2, run_id = register(client, name, Rule(back=0), tmp)
    move_champion(client, name, v1, "gate", "first")
    # @ALIAS and VERSION name the project's model (here set with -S; params.yaml names another)
    by_version = lstmops(root, "compare", "@champion", str(v2), "--json", "-S", f"mlflow.model_name={name}",
                         MLFLOW_TRACKING_URI=client.tracking_uri)  # fmt: skip
    assert by_version.returncode == 0, by_version.stderr
    out = json.loads(by_version.stdout)
    assert out["a"]["model"] == f"models:/{name}/{v1} (@champion)" and out["b"]["model"] == f"models:/{name}/{v2} ({v2})"
    assert out["a"]["kind"] == out["b"]["kind"] == "version" and out["verdict"].startswith("B is better than A")
    result = lstmops(root, "compare", f"models:/{name}@champion", run_id, "--json", MLFLOW_TRACKING_URI=client.tracking_uri)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["a"]["model"] == f"models:/{name}/{v1} (models:/{name}@champion)" and out["b"]["kind"] == "run"
    assert out["b"]["metrics"] == json.loads(by_version.stdout)["b"]["metrics"]  # the same file either way
    unknown = lstmops(root, "compare", f"models:/{name}/42", run_id, MLFLOW_TRACKING_URI=client.tracking_uri)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert unknown.stderr.startswith(f"error: models:/{name}/42: no such model version in the registry")


def gate_with(registry, champion: nn.Module, challenger: nn.Module, significance: float | None):
    from lstmops.registry.gate import run_gate
    from lstmops.registry.trail import move_champion
    from lstmops.registry.seen import as_tags
    from lstmops.tasks.forecast.task import gate_inputs, seen

    client, name, root, cfg, tmp = registry
    v1, _ = register(client, name, champion, tmp)
    v2, _ = register(client, name, challenger, tmp)
    for version in (v1, v2):  # both "trained" on this pipeline's data: the gate scores its test windows
        for key, value in as_tags(seen(cfg, root)).items():
            client.set_model_version_tag(name, str(version), key, value)
    move_champion(client, name, v1, "gate", "first")
    metrics = {"test": {"persistence": {"rmse": 1e9}}}  # baselines are not the point here

    def scoring(records):
        return gate_inputs(cfg, root, metrics, records)
    verdict = run_gate(client, name, v2, scoring, "passed", True, "d" * 32,
                       min_improvement=0.01, significance=significance)  # fmt: skip
    return verdict, client.get_model_version(name, str(v2)).tags


@pytest.mark.integration
def test_gate_refuses_a_challenger_better_but_not_significantly(registry):
    # 1.2% lower RMSE than the champion on 169 windows (min_improvement 1%), one-sided DM p about 0.26
    champion, challenger = Rule(back=0, bias=0.08), Rule(back=0, bias=0.02)
    plain, _ = gate_with(registry, champion, challenger, None)  # without the option it would win
    assert plain.promoted and plain.dm_pvalue is None
    verdict, tags = gate_with(registry, champion, challenger, 0.05)
    assert not verdict.promoted and verdict.challenger_score <= 0.99 * verdict.champion_score
    assert verdict.dm_pvalue >= 0.05
    assert verdict.reason.endswith(f"but not significantly better than the champion (DM p={verdict.dm_pvalue:.2g} >= 0.05)")
    assert tags["gate.reason"] == verdict.reason and tags["gate.significance"] == "0.05"


@pytest.mark.integration
def test_gate_promotes_a_clearly_better_challenger_with_significance(registry):
    verdict, tags = gate_with(registry, Rule(back=0, bias=1.0), Rule(back=0), 0.05)
    assert verdict.promoted and verdict.dm_pvalue < 0.01
    assert "significantly better than the champion (DM p=" in verdict.reason and "< 0.05)" in verdict.reason
    assert tags["gate.dm_pvalue"] == str(verdict.dm_pvalue)
