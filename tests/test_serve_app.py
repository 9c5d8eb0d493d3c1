"""`lstmops serve` in process: the SageMaker and Kubernetes routes, forecasts identical to the
model's own, every client mistake a 4xx with a message, metrics, auth and batching."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from lstmops.errors import LstmopsError
from lstmops.serve.app import ROUTES, create_app
from lstmops.serve.batching import Batcher
from lstmops.serve.loader import ModelLoadError, load_torchscript
from lstmops.serve.runtime import cgroup_quota, default_threads
from lstmops.serve.server import build, choose_source
from lstmops.serve.settings import Settings

from .serve_support import expected, tiny_model, windows

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "model.ts")


def serving(model_file: Path, **settings) -> TestClient:
    server = build(Settings(model=str(model_file), threads=torch.get_num_threads(), **settings))
    return TestClient(create_app(server))


@pytest.fixture(scope="module")
def client(model_file):
    with serving(model_file) as c:
        yield c


def invoke(client: TestClient, body, headers=JSON):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/invocations", content=data, headers=headers)


def test_json_batch_and_single_window_give_the_models_own_forecasts(client, model_file):
    x = windows(3)
    batch = invoke(client, {"inputs": x.tolist()})
    assert batch.status_code == 200, batch.text
    np.testing.assert_allclose(batch.json()["predictions"], expected(model_file, x), rtol=0, atol=1e-6)
    single = invoke(client, {"inputs": x[0].tolist()})
    np.testing.assert_allclose(single.json()["predictions"], expected(model_file, x[:1]), rtol=0, atol=1e-6)
    instances = invoke(client, {"instances": x[:1].tolist()})
    assert instances.json() == single.json()


def test_csv_window_with_or_without_header_any_column_order(client, model_file):
    x = windows(1)[0]
    plain = "\n".join(",".join(repr(float(v)) for v in row) for row in x)
    shuffled = "workday,demand_gw,temperature_c\n" + "\n".join(
        f"{r[2]!r},{r[0]!r},{r[1]!r}" for r in x.astype(float).tolist()
    )
    want = expected(model_file, x[None])
    for body in (plain, "demand_gw,temperature_c,workday\n" + plain, shuffled):
        answer = invoke(client, body, {"Content-Type": "text/csv; charset=utf-8"})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["predictions"], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "body, headers, status, message",
    [
        ({"inputs": windows(1)[:, :, :1].tolist()}, JSON, 400,
         "expected 3 features (demand_gw, temperature_c, workday), got 1"),
        ({"inputs": windows(1, steps=5).tolist()}, JSON, 400,
         "history of 5 steps is shorter than the 12 the model was trained on"),
        ({"inputs": [[[float("nan")] * 3] * 12]}, JSON, 400, "input contains NaN or infinite values at window 0"),
        ({"inputs": [[1.0, 2.0, 3.0]][0]}, JSON, 400, "expected windows x steps x features (3-d) or one window"),
        ({"inputs": [[["1", "2", "3"]] * 12]}, JSON, 400, "inputs must contain only numbers"),
        ({"inputs": [[[1.5, 2.5, True]] * 12]}, JSON, 400, "inputs must contain only numbers (found true/false)"),
        ({"inputs": [[[1, 2, 3]] * 12, [[1, 2]] * 12]}, JSON, 400, "inputs must be a rectangular array"),
        ({"inputs": []}, JSON, 400, "expected windows x steps x features"),
        ({"data": [[1]]}, JSON, 400, 'expected a JSON object with "inputs"'),
        ("{not json", JSON, 400, "body is not valid JSON"),
        ("", JSON, 400, "empty request body"),
        ("a,b,c\n1,2,3\n", {"Content-Type": "text/csv"}, 400, "CSV header ['a', 'b', 'c'] does not name the model's"),
        ("1,2,3\n1,2\n", {"Content-Type": "text/csv"}, 400, "CSV rows have different numbers of columns"),
        ("1,2,3\n1,x,3\n", {"Content-Type": "text/csv"}, 400, "CSV row 2 holds a value that is not a number"),
        ("{}", {"Content-Type": "text/plain"}, 415, "unsupported content type 'text/plain'"),
        ("{}", {}, 415, "unsupported content type"),
    ],
)  # fmt: skip
def test_client_mistakes_are_4xx_naming_what_is_wrong(client, body, headers, status, message):
    answer = invoke(client, body, headers)
    assert answer.status_code == status
    assert message in answer.json()["error"]


def test_every_response_carries_the_model_version_and_a_request_id(client, model_file):
    answer = client.get("/ping", headers={"X-Request-Id": "abc-123"})
    assert answer.headers["x-request-id"] == "abc-123"
    assert answer.headers["x-model-version"].startswith("model.ts@sha256:")
    made_up = invoke(client, "bad")
    assert len(made_up.headers["x-request-id"]) == 32 and made_up.headers["x-model-version"]
    assert client.get("/nowhere").headers["x-request-id"]


def test_probes_and_routes(client):
    assert client.get("/ping").status_code == 200
    assert client.head("/ping").status_code == 200
    assert client.get("/healthz").json() == {"alive": True}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["version"].startswith("model.ts@") and ready["last_reload_error"] is None
    assert set(ROUTES) == {"/ping", "/invocations", "/healthz", "/readyz", "/metrics"}


def test_body_over_the_limit_is_413_whether_declared_or_streamed(model_file):
    with serving(model_file, max_body_bytes=1000) as small:
        declared = invoke(small, b"x" * 1001)
        assert declared.status_code == 413 and "1,000-byte limit" in declared.json()["error"]
        streamed = small.post("/invocations", content=(b"x" * 100 for _ in range(11)), headers=JSON)  # chunked
        assert streamed.status_code == 413
    big = {"inputs": windows(10000).tolist()}  # about 7.4 MB of JSON
    assert len(json.dumps(big)) > 6 * 1024 * 1024
    with serving(model_file) as default:
        assert invoke(default, big).status_code == 413


def test_metrics_count_requests_by_status_and_show_the_model(client):
    invoke(client, {"inputs": windows(2).tolist()})
    invoke(client, "nope")
    text = client.get("/metrics").text
    assert 'lstmops_requests_total{method="POST",path="/invocations",status="200"}' in text
    assert 'lstmops_requests_total{method="POST",path="/invocations",status="400"}' in text
    assert 'lstmops_request_seconds_bucket{le="0.005",path="/invocations",status="200"}' in text
    assert "lstmops_batch_windows_bucket" in text
    assert 'lstmops_model_loaded{version="model.ts@sha256:' in text
    assert "lstmops_model_reload_failures_total 0.0" in text


def test_bearer_token_guards_invocations_only(model_file, monkeypatch, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret-token\n")  # a mounted Secret ends with a newline
    monkeypatch.setenv("LSTMOPS_AUTH_TOKEN_FILE", str(secret))
    body = {"inputs": windows(1).tolist()}
    with serving(model_file) as guarded:
        assert invoke(guarded, body).status_code == 401
        assert invoke(guarded, body, {**JSON, "Authorization": "Bearer wrong"}).status_code == 401
        assert invoke(guarded, body, {**JSON, "Authorization": "Basic s3cret-token"}).status_code == 401
        assert invoke(guarded, body, {**JSON, "Authorization": "Bearer s3cret-token"}).status_code == 200
        for probe in ("/ping", "/healthz", "/readyz", "/metrics"):
            assert guarded.get(probe).status_code == 200
    monkeypatch.setenv("LSTMOPS_AUTH_TOKEN", "from-env")
    with serving(model_file) as env_guarded:
        assert invoke(env_guarded, body, {**JSON, "Authorization": "Bearer from-env"}).status_code == 200
    monkeypatch.delenv("LSTMOPS_AUTH_TOKEN")
    secret.unlink()
    with pytest.raises(LstmopsError, match="cannot read the auth token file"):
        serving(model_file)


def malformed(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """One of many kinds of garbage a client can send."""
    good = windows(1).tolist()
    kind = rng.randrange(14)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), JSON
    if kind == 1:  # wrong shapes
        dims = [rng.randrange(0, 15) for _ in range(rng.randrange(0, 5))]
        if len(dims) in (2, 3) and dims[-1] == 3 and dims[-2] >= 12 and 0 not in dims:
            dims[-1] = 4  # that shape would be a valid window of zeros
        return json.dumps({"inputs": np.zeros(dims).tolist()}).encode(), JSON
    if kind == 2:
        x = windows(2)
        x[rng.randrange(2), rng.randrange(12), rng.randrange(3)] = rng.choice([np.nan, np.inf, -np.inf])
        return json.dumps({"inputs": x.tolist()}).replace("Infinity", rng.choice(["Infinity", "1e999"])).encode(), JSON
    if kind == 3:  # a string, a null, a bool or an object somewhere
        value = rng.choice(["1.0", None, True, {"a": 1}, [], "NaN"])
        good[0][rng.randrange(12)][rng.randrange(3)] = value
        return json.dumps({"inputs": good}).encode(), JSON
    if kind == 4:
        return json.dumps(rng.choice([None, 1, "x", [1, 2], {"inputs": None}, {"inputs": "abc"},
                                      {"inputs": 3.5}, {"inputs": good, "instances": good}])).encode(), JSON  # fmt: skip
    if kind == 5:  # truncated JSON
        text = json.dumps({"inputs": good})
        return text[: rng.randrange(len(text))].encode(), JSON
    if kind == 6:
        return json.dumps({"inputs": good}).encode(), {"Content-Type": rng.choice(["text/plain", "", "image/png",
                                                                                   "application/x-www-form-urlencoded"])}
    if kind == 7:  # nested garbage
        depth = rng.choice([5, 50, 5000])
        return ("[" * depth + "1" + "]" * depth).encode(), JSON
    if kind == 8:
        return ('{"inputs": ' + "[" * 100_000 + "]" * 100_000 + "}").encode(), JSON
    if kind == 9:  # CSV garbage
        rows = [",".join(rng.choice(["1", "x", "", "nan", "1e999", "\x00", "2,3"]) for _ in range(rng.randrange(1, 5)))
                for _ in range(rng.randrange(0, 20))]  # fmt: skip
        return "\n".join(rows).encode(), {"Content-Type": "text/csv"}
    if kind == 10:
        return bytes([0xFF, 0xFE]) + b"a,b", {"Content-Type": "text/csv"}
    if kind == 11:  # huge numbers and ints out of range
        return json.dumps({"inputs": [[[10**400, 1, 1]] * 12]}).encode(), JSON
    if kind == 12:  # wrong feature count or short history
        return json.dumps({"inputs": windows(1, steps=rng.randrange(1, 12)).tolist()}).encode(), JSON
    return json.dumps({"inputs": np.zeros((1, 12, rng.choice([1, 2, 4, 9]))).tolist()}).encode(), JSON


def test_fuzz_a_thousand_malformed_payloads_never_get_a_5xx(client):
    rng = random.Random(20261122)
    statuses = [invoke(client, *malformed(rng)).status_code for _ in range(1000)]
    assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    huge = b'{"inputs": [' + b"1," * (4 * 1024 * 1024) + b"1]}"
    assert invoke(client, huge).status_code == 413
    assert client.get("/readyz").status_code == 200
    assert invoke(client, {"inputs": windows(1).tolist()}).status_code == 200


def test_concurrent_requests_are_batched_and_answered_exactly(model_file):
    model = load_torchscript(model_file, "v")
    sizes: list[int] = []
    batcher = Batcher(max_batch=64, max_wait_s=0.05, observe=sizes.append)
    batcher.start()
    x = torch.from_numpy(windows(20))

    async def all_at_once():
        return await asyncio.gather(*(batcher.predict(model, x[i : i + 1]) for i in range(20)))

    try:
        answers = asyncio.run(all_at_once())
    finally:
        batcher.stop()
    np.testing.assert_allclose(np.concatenate(answers), expected(model_file, x.numpy()), rtol=0, atol=1e-5)
    assert sum(sizes) == 20 and max(sizes) > 1  # fewer forward passes than requests


def test_batcher_never_mixes_window_lengths(model_file):
    model = load_torchscript(model_file, "v")
    sizes: list[int] = []
    batcher = Batcher(max_batch=64, max_wait_s=0.05, observe=sizes.append)
    batcher.start()
    short, long = torch.from_numpy(windows(3, steps=12)), torch.from_numpy(windows(3, steps=20))

    async def mixed():
        return await asyncio.gather(batcher.predict(model, short), batcher.predict(model, long),
                                    batcher.predict(model, short))  # fmt: skip

    try:
        a, b, c = asyncio.run(mixed())
    finally:
        batcher.stop()
    np.testing.assert_allclose(b, expected(model_file, long.numpy()), rtol=0, atol=1e-5)
    np.testing.assert_allclose(a, c)
    assert sorted(sizes) == [3, 6]


def test_a_file_that_is_not_torchscript_or_fails_its_self_check_is_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="junk.pt: cannot load as TorchScript"):
        load_torchscript(junk, "junk")
    broken = tiny_model(tmp_path / "nan.ts", std=[0.0, 5.0, 0.5])  # scales to inf: forecasts NaN
    with pytest.raises(ModelLoadError, match="self-check gave shape"):
        load_torchscript(broken, "nan")


def test_model_source_precedence(tmp_path, model_file):
    sm = tmp_path / "sm"
    tiny_model(sm / "model.pt")
    env = {"SM_MODEL_DIR": str(sm)}
    assert choose_source(Settings(model=str(model_file)), tmp_path, env).path == model_file
    assert choose_source(Settings(model_uri="models:/m@champion"), tmp_path, env).alias == "champion"
    assert choose_source(Settings(), tmp_path, env).path == sm / "model.pt"
    (tmp_path / "params.yaml").write_text("mlflow:\n  model_name: my-model\n")
    project = choose_source(Settings(), tmp_path, {"SM_MODEL_DIR": str(tmp_path / "empty")})
    assert (project.name, project.alias) == ("my-model", "champion")
    with pytest.raises(LstmopsError, match="no model to serve"):
        choose_source(Settings(), tmp_path / "sm", {"SM_MODEL_DIR": str(tmp_path / "empty")})
    with pytest.raises(LstmopsError, match="expected models:/NAME@ALIAS"):
        choose_source(Settings(model_uri="runs:/abc/model"), tmp_path, env)


def test_cpu_quota_from_cgroup_v2_and_v1(tmp_path):
    v2 = tmp_path / "cpu.max"
    v1 = (tmp_path / "quota", tmp_path / "period")
    v2.write_text("150000 100000\n")
    assert cgroup_quota(v2, v1) == 1.5
    v2.write_text("max 100000\n")
    assert cgroup_quota(v2, v1) is None
    v2.unlink()
    v1[0].write_text("200000\n")
    v1[1].write_text("100000\n")
    assert cgroup_quota(v2, v1) == 2.0
    v1[0].write_text("-1\n")
    assert cgroup_quota(v2, v1) is None


def test_each_worker_leaves_a_cpu_to_its_event_loop():
    assert default_threads(cpus=2, workers=1) == 1
    assert default_threads(cpus=16, workers=1) == 15
    assert default_threads(cpus=16, workers=4) == 3
    assert default_threads(cpus=1, workers=2) == 1


class LegacyForecaster(torch.nn.Module):
    """An artifact as exported before the model checked its own input: the scaler buffers and the
    network only, no ``features``, ``input_steps``, ``horizon`` or ``check``."""

    def __init__(self, core, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core((x - self.mean) / self.std) * self.std[0] + self.mean[0]


def test_an_artifact_from_before_the_input_checks_is_served_and_its_input_checked_by_the_server(tmp_path):
    from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec
    from lstmops.serve.loader import InputError

    core = LSTMForecaster(ModelSpec(n_features=3, hidden_size=8, num_layers=1, dropout=0.0, horizon=4)).eval()
    path = tmp_path / "legacy.ts"
    torch.jit.script(LegacyForecaster(core, [5.0, 20.0, 0.5], [1.0, 5.0, 0.5])).save(str(path))
    loaded = load_torchscript(path, "legacy")
    assert (loaded.features, loaded.horizon) == (["feature_0", "feature_1", "feature_2"], 4)
    assert tuple(loaded.predict(torch.from_numpy(windows(2))).shape) == (2, 4)
    with pytest.raises(InputError, match="with 3 features"):
        loaded.check(torch.zeros(1, 12, 1))
    with pytest.raises(InputError, match="NaN"):
        loaded.check(torch.full((1, 12, 3), float("nan")))


def test_a_model_of_another_task_is_refused_at_load_naming_the_task(tmp_path):
    class Other(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.task = "charlm"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = tmp_path / "other.ts"
    torch.jit.script(Other()).save(str(path))
    with pytest.raises(ModelLoadError, match="a charlm model"):
        load_torchscript(path, "other")
