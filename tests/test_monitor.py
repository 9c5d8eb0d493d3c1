"""The monitor's parts as specifications: the decay rule, the naive forecasts on the same origins,
drift, and a forecasts store that never duplicates a (version, origin), locally, on S3 (SeaweedFS)
and in a PostgreSQL table."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstmops.monitor import decay, drift, score
from lstmops.monitor.settings import DecayRule, DriftSettings
from lstmops.monitor.store import LocalStore, S3Store, last_origin, read_forecasts, stored, write_forecasts
from lstmops.tasks.forecast.monitor import candidate_origins, naive_forecasts

from .conftest import free_port

RULE = DecayRule(vs_baseline=0.0, vs_registered=0.5, bad_days=2, of_days=3, cooldown_days=2)


def day(origin: str, error: float, naive: float = 1.0, registered: float | None = 1.0) -> decay.Day:
    return decay.judge(origin, error, {"persistence": naive, "seasonal": naive * 2}, registered, RULE)


def test_a_day_violates_against_the_best_naive_forecast_or_the_registered_error():
    assert not day("d1", 0.9).violates
    worse_than_naive = day("d1", 1.1, naive=1.0, registered=None)
    assert worse_than_naive.violates and "persistence" in worse_than_naive.why
    assert day("d1", 1.6, naive=5.0, registered=1.0).violates  # beats the naive, but 1.6 > 1.5 x registered
    assert not day("d1", 1.4, naive=5.0, registered=1.0).violates


def test_the_rule_fires_on_n_of_m_days_then_waits_out_its_cooldown():
    days = [day("d1", 0.5), day("d2", 2.0), day("d3", 0.5)]
    assert not decay.decide(days, RULE).fired  # 1 of 3
    days.append(day("d4", 2.0))
    fired = decay.decide(days, RULE)
    assert fired.fired and fired.bad_days == 2 and fired.last_origin == "d4"
    days.append(day("d5", 2.0))
    assert not decay.decide(days, RULE, last_fired="d4").fired  # one day since: cooling down
    days.append(day("d6", 2.0))
    assert decay.decide(days, RULE, last_fired="d4").fired


def test_naive_forecasts_use_only_values_before_each_origin():
    times = pd.date_range("2014-01-01", periods=10 * 48, freq="30min")
    actuals = pd.Series(np.arange(len(times), dtype=float), index=times)
    origin = pd.DatetimeIndex([times[5 * 48]])
    out = naive_forecasts(actuals, origin, 48, pd.Timedelta("30min"), {"day": 48, "half": 24})
    by = {name: g.sort_values("step").prediction.to_numpy() for name, g in out.groupby("forecaster")}
    t = 5 * 48
    assert (by["persistence"] == t - 1).all()
    assert (by["day"] == np.arange(t - 48, t)).all()
    assert (by["half"] == np.r_[np.arange(t - 24, t), np.arange(t - 24, t)]).all()
    # an origin without a day of history before it gets no day-naive forecast
    early = naive_forecasts(actuals, pd.DatetimeIndex([times[30]]), 48, pd.Timedelta("30min"), {"day": 48})
    assert set(early.forecaster) == {"persistence"}


def test_origins_are_at_the_chosen_time_of_day_with_evenly_spaced_history():
    times = pd.date_range("2014-01-01", periods=3 * 48, freq="30min")
    rows = candidate_origins(times, 48, pd.Timedelta("30min"), pd.Timedelta("1D"))
    assert rows.tolist() == [48, 96, 144]  # midnights of day 2 and 3, and just after the last row
    gappy = times.delete(100)
    assert 144 not in candidate_origins(gappy, 48, pd.Timedelta("30min"), pd.Timedelta("1D")).tolist()


def test_realized_error_counts_an_origin_only_once_its_whole_horizon_has_arrived():
    times = pd.date_range("2014-01-02", periods=4, freq="30min")
    forecasts = pd.DataFrame({"version": 1, "origin": times[0], "step": [1, 2, 3, 4], "target_time": times,
                              "prediction": [1.0, 2.0, 3.0, 4.0]})  # fmt: skip
    partial = pd.Series([1.0, 2.0, 3.0], index=times[:3])
    assert score.realized(forecasts, partial).empty
    whole = pd.Series([2.0, 2.0, 3.0, 4.0], index=times)
    scored = score.realized(forecasts, whole)
    errors = score.by_day(score.long_form(scored, pd.DataFrame()))
    assert errors.rmse.tolist() == [pytest.approx(0.5)] and errors.mae.tolist() == [pytest.approx(0.25)]


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"x": rng.normal(size=5000), "flag": rng.integers(0, 2, 5000)})
    same = pd.DataFrame({"x": rng.normal(size=500), "flag": rng.integers(0, 2, 500)})
    shifted = same.assign(x=same.x * 1.2 + 1.0)
    settings = DriftSettings()
    assert not any(d["drifted"] for d in drift.drift(reference, same, settings).values())
    result = drift.drift(reference, shifted, settings)
    assert result["x"]["drifted"] and not result["flag"]["drifted"]
    assert drift.drift(reference, shifted, DriftSettings(test="ks", threshold=0.2))["x"]["drifted"]


def rows(origins: list[str], horizon: int = 4) -> pd.DataFrame:
    frames = []
    for o in origins:
        t = pd.Timestamp(o)
        frames.append(pd.DataFrame({"origin": t, "step": np.arange(1, horizon + 1),
                                    "target_time": pd.date_range(t, periods=horizon, freq="30min"),
                                    "prediction": np.linspace(1, 2, horizon)}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def check_store_is_idempotent(store) -> None:
    issued = pd.Timestamp("2026-01-01", tz="UTC")
    first = write_forecasts(store, "m", 3, rows(["2014-01-02", "2014-01-03"]), issued)
    assert len(first.origins) == 2 and first.rows == 8
    again = write_forecasts(store, "m", 3, rows(["2014-01-03", "2014-01-04"]), issued + pd.Timedelta("1h"))
    assert [str(o.date()) for o in again.origins] == ["2014-01-04"] and len(again.kept) == 1
    write_forecasts(store, "m", 4, rows(["2014-01-04"]), issued)  # another version, same origin: its own file
    frame = read_forecasts(store, "m")
    assert not frame.duplicated(["version", "origin", "step"]).any() and len(frame) == 16
    kept = frame[(frame.version == 3) & (frame.origin == pd.Timestamp("2014-01-03"))]
    assert (kept.issued_at == issued).all()  # the first forecast from an origin stays what it was
    assert last_origin(store, "m", 3) == pd.Timestamp("2014-01-04") and last_origin(store, "m", 9) is None
    assert len(stored(store, "m")) == 4


def test_the_local_store_keeps_one_file_per_version_and_origin(tmp_path):
    check_store_is_idempotent(LocalStore(tmp_path / "store"))
    assert not list((tmp_path / "store").rglob(".*tmp"))


@pytest.mark.integration
def test_the_s3_store_keeps_one_object_per_version_and_origin(s3_server, monkeypatch):
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    check_store_is_idempotent(S3Store("s3://lstmops/monitor-test/store"))


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL 15 on 127.0.0.1 (initdb/pg_ctl as the postgres user: initdb refuses root)."""
    bin_dir = Path("/usr/lib/postgresql/15/bin")
    if not bin_dir.is_dir():
        pytest.skip("PostgreSQL 15 is not installed here")
    home = Path(tempfile.mkdtemp(prefix="lstmops-pg-"))
    home.chmod(0o755)
    shutil.chown(home, "postgres")
    port = free_port()
    as_pg = lambda *cmd: subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True)  # noqa: E731
    as_pg(str(bin_dir / "initdb"), "-D", str(home / "data"), "-A", "trust", "-U", "postgres")
    as_pg(str(bin_dir / "pg_ctl"), "-D", str(home / "data"), "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1",
          "-w", "-l", str(home / "log"), "start")  # fmt: skip
    try:
        as_pg(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "lstmops")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/lstmops"
    finally:
        as_pg(str(bin_dir / "pg_ctl"), "-D", str(home / "data"), "-m", "fast", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.integration
def test_the_sql_table_takes_each_version_and_origin_once(postgres, monkeypatch):
    from sqlalchemy import create_engine, text

    from lstmops.monitor.sql import write_sql
    from lstmops.monitor.store import sql_url

    monkeypatch.setenv("LSTMOPS_FORECASTS_DB", postgres)
    url = sql_url("$LSTMOPS_FORECASTS_DB")
    issued = pd.Timestamp("2026-01-01", tz="UTC")
    batch = rows(["2014-01-02", "2014-01-03"]).assign(model="m", version=3, issued_at=issued)
    assert write_sql(url, "forecasts_test", batch) == 8
    assert write_sql(url, "forecasts_test", batch) == 0
    later = rows(["2014-01-03", "2014-01-04"]).assign(model="m", version=3, issued_at=issued)
    assert write_sql(url, "forecasts_test", later) == 4
    engine = create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(text("select count(*), count(distinct (version, origin, step)) from forecasts_test")).one()
    engine.dispose()
    assert tuple(count) == (12, 12)


def test_an_unreachable_sql_table_fails_in_one_line_without_the_password():
    from lstmops.errors import ServiceUnavailable
    from lstmops.monitor.sql import write_sql

    url = f"postgresql+psycopg://user:s3cret@127.0.0.1:{free_port()}/db"
    with pytest.raises(ServiceUnavailable) as caught:
        write_sql(url, "t", rows(["2014-01-02"]).assign(model="m", version=1, issued_at=pd.Timestamp("2026-01-01", tz="UTC")))
    assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value) and "forecasts table t" in str(caught.value)


def test_the_server_logs_a_sample_of_what_it_served_to_the_store(tmp_path, monkeypatch):
    """LSTMOPS_SERVE_LOG on: every forecast window (sample 1) lands in the store with its version,
    newest input row and forecast; off: the server keeps nothing."""
    import json

    import torch
    from fastapi.testclient import TestClient

    from lstmops.serve.app import create_app
    from lstmops.serve.server import build
    from lstmops.serve.settings import Settings

    from .serve_support import expected, tiny_model, windows

    model = tiny_model(tmp_path / "model.ts")
    x = windows(3)
    monkeypatch.setenv("LSTMOPS_SERVE_LOG", str(tmp_path / "store"))
    monkeypatch.setenv("LSTMOPS_SERVE_LOG_SAMPLE", "1")
    server = build(Settings(model=str(model), threads=torch.get_num_threads()))
    with TestClient(create_app(server)) as client:
        answer = client.post("/invocations", content=json.dumps({"instances": x.tolist()}),
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code == 200
    server.served.flush()
    (part,) = (tmp_path / "store" / "served").rglob("*.parquet")
    logged = pd.read_parquet(part)
    assert len(logged) == 3 and set(logged.version) == {answer.headers["x-model-version"]}
    assert np.allclose(np.stack(logged.prediction.to_numpy()), expected(model, x), atol=1e-5)
    assert np.allclose(logged.input_demand_gw.to_numpy(), x[:, -1, 0])
    monkeypatch.delenv("LSTMOPS_SERVE_LOG")
    assert build(Settings(model=str(model), threads=torch.get_num_threads())).served is None
