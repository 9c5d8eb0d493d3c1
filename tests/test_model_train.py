"""Model behaviour: shapes, any history length, an LSTM that learns a long time lag, and
training that is bit-identical run to run on CPU and keeps its best checkpoint."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lstmops import config
from lstmops.tasks.forecast.prepare import prepare
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec, ScaledForecaster
from lstmops.tasks.forecast.task import ForecastTrainer, load_model, mean_loss
from lstmops.train import fit, seed_everything

from .conftest import SMALL

REPO = Path(__file__).resolve().parents[1]


def test_forecaster_maps_any_history_length_to_the_horizon():
    model = LSTMForecaster(ModelSpec(n_features=3, hidden_size=8, num_layers=2, dropout=0.1, horizon=5)).eval()
    for steps in (10, 37):
        assert model(torch.randn(4, steps, 3)).shape == (4, 5)


def test_scaled_forecaster_takes_raw_units_and_returns_raw_units():
    core = LSTMForecaster(ModelSpec(2, 4, 1, 0.0, 3)).eval()
    wrapped = ScaledForecaster(core, mean=[10.0, 0.5], std=[2.0, 0.25], target_index=0).eval()
    raw = torch.randn(2, 6, 2) * torch.tensor([2.0, 0.25]) + torch.tensor([10.0, 0.5])
    expected = core((raw - torch.tensor([10.0, 0.5])) / torch.tensor([2.0, 0.25])) * 2.0 + 10.0
    torch.testing.assert_close(wrapped(raw), expected)


def test_lstm_learns_a_long_time_lag():
    """Hochreiter & Schmidhuber (1997)-style: the target is the first input value, seen 20
    noisy steps earlier. A model without memory cannot beat predicting the mean (MSE ~ 1)."""
    seed_everything(0)
    steps, batch = 20, 64
    model = LSTMForecaster(ModelSpec(n_features=2, hidden_size=16, num_layers=1, dropout=0.0, horizon=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def sample():
        x = torch.zeros(batch, steps, 2)
        x[:, :, 0] = torch.randn(batch, steps) * 0.5  # distractors
        value = torch.randn(batch)
        x[:, 0, 0] = value
        x[:, 0, 1] = 1.0  # marks the step to remember
        return x, value[:, None]

    for _ in range(500):
        x, y = sample()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = sample()
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(model(x), y).item() < 0.1


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_frame):
    root = tmp_path_factory.mktemp("prepared")
    frame = small_frame.assign(timestamp=pd.to_datetime(small_frame["timestamp"]))
    frame.to_parquet(root / "snap.parquet")
    cfg = config.load(REPO, SMALL + ["train.device=cpu"])
    prepare(cfg, root / "snap.parquet", root / "prepared")
    return cfg, root


def test_training_is_bit_identical_run_to_run_on_cpu(prepared):
    cfg, root = prepared
    fit(cfg, lambda device: ForecastTrainer(cfg, root / "prepared", device), root / "a.pt")
    fit(cfg, lambda device: ForecastTrainer(cfg, root / "prepared", device), root / "b.pt")
    a, _ = load_model(root / "a.pt")
    b, _ = load_model(root / "b.pt")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_training_improves_validation_loss_and_keeps_the_best_epoch(prepared):
    cfg, root = prepared
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 15, "patience": 15})})
    history, summary = fit(cfg, lambda device: ForecastTrainer(cfg, root / "prepared", device), root / "best.pt")
    model, ckpt = load_model(root / "best.pt")
    assert ckpt["epoch"] == summary["best_epoch"]
    assert ckpt["val_loss"] == min(r["val_loss"] for r in history.rows)

    from lstmops.tasks.forecast.prepare import Prepared
    from lstmops.tasks.forecast.windows import origins

    meta = Prepared.load(root / "prepared")
    series = torch.from_numpy(np.load(root / "prepared" / "series.npy"))
    val = torch.from_numpy(origins(meta.split, "val", meta.input_steps, meta.horizon))
    seed_everything(cfg.seed)
    untrained = LSTMForecaster(model_spec := ModelSpec(**ckpt["spec"])).eval()
    assert model_spec.horizon == cfg.window.horizon
    assert mean_loss(model, series, val, meta, 256) < 0.7 * mean_loss(untrained, series, val, meta, 256)


def test_early_stopping_ends_training_after_patience_and_keeps_the_best_epoch(prepared, monkeypatch):
    cfg, root = prepared
    curve = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9])  # best at epoch 2, then two epochs without improvement
    monkeypatch.setattr(ForecastTrainer, "validation_loss", lambda *args: next(curve))
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 6, "patience": 2})})
    history, summary = fit(cfg, lambda device: ForecastTrainer(cfg, root / "prepared", device), root / "es.pt")
    assert (summary["epochs_run"], summary["best_epoch"]) == (4, 2)
    assert load_model(root / "es.pt")[1]["epoch"] == 2


# --- the seasonal skip (model.seasonal_skip) --------------------------------------------------------


def skip_model(period: int = 6, horizon: int = 4) -> LSTMForecaster:
    return LSTMForecaster(ModelSpec(2, 8, 1, 0.0, horizon, seasonal_skip=period, target_index=1)).eval()


def test_the_seasonal_skip_starts_as_the_seasonal_naive_forecast_plus_the_lstm():
    model, plain = skip_model(), LSTMForecaster(ModelSpec(2, 8, 1, 0.0, 4, target_index=1)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "seasonal"} | {"seasonal": torch.zeros(4, 4)})
    x = torch.randn(3, 20, 2)
    # Forecast step h (1..4) after row 19 is row 19 + h; a period of 6 before it is row 13 + h.
    seasonal_naive = x[:, 14:18, 1]
    torch.testing.assert_close(model(x), plain(x) + seasonal_naive)


def test_the_seasonal_skip_gives_every_span_position_the_forecast_of_its_own_window():
    model = skip_model()
    x = torch.randn(2, 30, 2)
    per_position = model.forward_all(x, skip=9, grad_through_skip=False)
    one_by_one = torch.stack([model(x[:, : t + 1]) for t in range(9, 30)], dim=1)
    torch.testing.assert_close(per_position, one_by_one)


def test_the_seasonal_skip_survives_torchscript_and_a_checkpoint_without_it_loads(tmp_path):
    model = skip_model()
    scripted = torch.jit.script(ScaledForecaster(model, [0.0, 5.0], [1.0, 2.0], 1, input_steps=6))
    raw = torch.randn(2, 12, 2)
    torch.testing.assert_close(scripted(raw), ScaledForecaster(model, [0.0, 5.0], [1.0, 2.0], 1, input_steps=6)(raw))
    old = LSTMForecaster(ModelSpec(2, 8, 1, 0.0, 4))  # a checkpoint from before the skip: no seasonal weight, no fields
    state = {k: v for k, v in old.state_dict().items() if k != "seasonal"}
    spec = {k: v for k, v in ModelSpec(2, 8, 1, 0.0, 4).to_dict().items() if k not in ("seasonal_skip", "target_index")}
    torch.save({"state_dict": state, "spec": spec, "epoch": 1, "val_loss": 1.0}, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt")
    torch.testing.assert_close(loaded(raw), old.eval()(raw))


@pytest.mark.parametrize("period", [11, 49])
def test_a_seasonal_skip_outside_horizon_to_input_steps_is_refused_naming_both(period):
    with pytest.raises(config.ConfigError, match=f"model.seasonal_skip={period} must be within window.horizon..window.input_steps"):
        config.load(REPO, [*SMALL, f"model.seasonal_skip={period}"])  # SMALL: horizon 12, input_steps 48


def test_training_with_the_seasonal_skip_learns_its_weight(prepared):
    cfg, root = prepared
    cfg = config.load(REPO, SMALL + ["train.device=cpu", "model.seasonal_skip=48"])
    fit(cfg, lambda device: ForecastTrainer(cfg, root / "prepared", device), root / "skip.pt")
    model, ckpt = load_model(root / "skip.pt")
    assert ckpt["spec"]["seasonal_skip"] == 48
    assert not torch.equal(model.seasonal, torch.eye(12))  # trained away from the identity start
