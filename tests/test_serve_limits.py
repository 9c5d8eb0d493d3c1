"""Limits before allocation: windows per request, steps per window, a classifier's padded size
and the body size are refused with a 413 naming the limit, before anything the size of the
input is built; bodies are parsed in the bounded pool, off the event loop; the limits are read
from the environment and a bad value stops the start naming the variable."""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lstmops.errors import LstmopsError
from lstmops.serve import app as app_module
from lstmops.serve.app import create_app
from lstmops.serve.payload import Limits, PayloadError, parse, parse_sequences
from lstmops.serve.server import build
from lstmops.serve.settings import MIB, Settings

from .serve_support import FEATURES, tiny_model, windows
from .test_classify_serve import FEATURES as CLASSIFIER_FEATURES
from .test_classify_serve import tiny_classifier

JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}
MB = 1024 * 1024


@pytest.fixture(scope="module")
def forecaster(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("forecaster") / "model.ts")  # input_steps 12: steps limit 64


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("classifier") / "model.ts")  # max_length 20: steps limit 80


def serving(model: Path, **settings) -> TestClient:
    return TestClient(create_app(build(Settings(model=str(model), host="127.0.0.1", threads=1, **settings))))


def csv_bomb(rows: int) -> bytes:
    return b"demand_gw,temperature_c,workday\n" + b"5.0,20.0,1\n" * rows


def peak_bytes(work) -> int:
    """Peak Python and numpy allocation while ``work`` runs (numpy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        work()
    except PayloadError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_too_many_windows_or_steps_are_413s_naming_the_limit(forecaster):
    with serving(forecaster, max_windows=4) as client:
        many = client.post("/invocations", content=json.dumps({"inputs": windows(5).tolist()}), headers=JSON)
        assert many.status_code == 413
        assert many.json()["error"].startswith("5 windows in one request; the limit is 4 (LSTMOPS_MAX_WINDOWS)")
        long = client.post("/invocations", content=json.dumps({"inputs": windows(1, steps=65).tolist()}), headers=JSON)
        assert long.status_code == 413
        assert long.json()["error"] == "window 0 has 65 steps; the limit is 64 (LSTMOPS_MAX_STEPS)"
        single = client.post("/invocations", content=json.dumps({"inputs": windows(1, steps=65)[0].tolist()}), headers=JSON)
        assert single.status_code == 413 and "LSTMOPS_MAX_STEPS" in single.json()["error"]
        fits = client.post("/invocations", content=json.dumps({"inputs": windows(4, steps=64).tolist()}), headers=JSON)
        assert fits.status_code == 200, fits.text


def test_a_csv_bomb_is_refused_from_its_line_count_before_rows_are_built(forecaster):
    bomb = csv_bomb(500_000)  # about 5.5 MiB: a million-row window's worth of work
    with serving(forecaster, max_body_bytes=6 * MIB) as client:
        answer = client.post("/invocations", content=bomb, headers=CSV)
        assert answer.status_code == 413
        assert answer.json()["error"] == "window 0 has 500,000 steps; the limit is 64 (LSTMOPS_MAX_STEPS)"
        assert client.get("/readyz").status_code == 200
    # Refused from the bytes: the split into rows alone would have cost tens of MB.
    limits = Limits(max_windows=64, max_steps=64, max_elements=4_000_000)
    assert peak_bytes(lambda: parse(bomb, "text/csv", FEATURES, limits)) < 1 * MB
    # What the limit saves: without it a tenth of that bomb already costs several times its size.
    assert peak_bytes(lambda: parse(csv_bomb(50_000), "text/csv", FEATURES)) > 5 * MB


def classifier_bomb() -> bytes:
    """Many one-step sequences and one of the longest trained length: small as JSON, huge padded."""
    short = [[0.5, -1.0, 0.0, 2.0]]
    return json.dumps({"inputs": [short] * 60_000 + [short * 80]}).encode()


def test_a_classifier_body_that_would_pad_to_gigabytes_is_refused_before_padding(classifier):
    bomb = classifier_bomb()
    assert len(bomb) < 6 * MB
    with serving(classifier, max_body_bytes=6 * MIB, max_windows=100_000) as client:
        answer = client.post("/invocations", content=bomb, headers=JSON)
        assert answer.status_code == 413
        assert answer.json()["error"].startswith(
            "60,001 sequences x 80 steps x 4 features make 19,200,320 values; the limit is 4,000,000 (LSTMOPS_MAX_ELEMENTS)"
        )
        assert client.get("/readyz").status_code == 200
    limits = Limits(max_windows=100_000, max_steps=80, max_elements=4_000_000)
    padded = 60_001 * 80 * 4 * 4  # bytes of float32 the padding would have allocated
    assert peak_bytes(lambda: parse_sequences(bomb, "application/json", CLASSIFIER_FEATURES, limits)) < padded / 2


def test_a_six_mib_classifier_body_with_the_default_limits_is_a_413_not_a_500(classifier):
    short = [[0.5, -1.0, 0.0, 2.0]] * 20
    bomb = json.dumps({"inputs": [short] * 13_000}).encode()  # about 6 MiB of valid sequences
    assert 5 * MB < len(bomb) <= 6 * MB
    with serving(classifier, max_body_bytes=6 * MIB) as client:
        answer = client.post("/invocations", content=bomb, headers=JSON)
        assert answer.status_code == 413
        assert "the limit is 64 (LSTMOPS_MAX_WINDOWS)" in answer.json()["error"]
    with serving(classifier) as default:  # the default body limit is well under SageMaker's 6 MiB
        answer = default.post("/invocations", content=bomb, headers=JSON)
        assert answer.status_code == 413 and "1,048,576-byte limit" in answer.json()["error"]


def test_bodies_past_the_inline_size_are_parsed_in_the_bounded_pool_not_on_the_event_loop(forecaster, monkeypatch):
    threads: list[str] = []
    original = app_module.decode

    def recording(*args):
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(app_module, "decode", recording)
    one = json.dumps({"inputs": windows(1).tolist()})  # about 900 bytes
    with serving(forecaster, parse_threads=3, parse_inline_bytes=2000) as client:
        assert client.post("/invocations", content=one, headers=JSON).status_code == 200
        assert len(threads) == 1 and not threads[0].startswith("parse")  # small: parsed inline
        threads.clear()
        for _ in range(3):
            assert client.post("/invocations", content=json.dumps({"inputs": windows(4).tolist()}), headers=JSON).status_code == 200
        assert client.app.server.parse_pool._max_workers == 3
    assert len(threads) == 3 and all(name.startswith("parse") for name in threads), threads


def test_limits_come_from_the_environment_and_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("LSTMOPS_MAX_WINDOWS", "8")
    monkeypatch.setenv("LSTMOPS_MAX_INFLIGHT", "16")
    monkeypatch.setenv("LSTMOPS_HEADER_TIMEOUT_S", "2.5")
    settings = Settings()
    assert (settings.max_windows, settings.max_inflight, settings.header_timeout_s) == (8, 16, 2.5)
    assert Settings(**json.loads(settings.to_env())) == settings  # what worker processes receive
    monkeypatch.setenv("LSTMOPS_MAX_WINDOWS", "lots")
    with pytest.raises(LstmopsError, match=r"LSTMOPS_MAX_WINDOWS='lots' is not an integer"):
        build(Settings(model="any.ts"))  # reported where the CLI turns errors into one line
    monkeypatch.setenv("LSTMOPS_MAX_WINDOWS", "0")
    with pytest.raises(LstmopsError, match="LSTMOPS_MAX_WINDOWS=0 is out of range"):
        Settings().check()
    with pytest.raises(LstmopsError, match="at most 6 MiB"):
        Settings(max_body_bytes=7 * MIB, max_windows=1).check()


def test_the_default_step_limit_follows_the_model(forecaster, classifier, monkeypatch):
    with serving(forecaster) as f, serving(classifier) as c:
        assert f.app.server.limits(f.app.server.holder.current).max_steps == 4 * 16  # input_steps 12, floor 16
        assert c.app.server.limits(c.app.server.holder.current).max_steps == 4 * 20  # max_length 20
    with serving(forecaster, max_steps=500) as fixed:
        assert fixed.app.server.limits(fixed.app.server.holder.current).max_steps == 500
        ok = fixed.post("/invocations", content=json.dumps({"inputs": windows(1, steps=400).tolist()}), headers=JSON)
        assert ok.status_code == 200 and np.asarray(ok.json()["predictions"]).shape == (1, 4)
