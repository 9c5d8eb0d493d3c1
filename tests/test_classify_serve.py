"""`lstmops serve` with a sequence classifier (task classify), in process: variable-length sequences
in, padded by the server, answered with the file's own probabilities and class names; bad input a
4xx naming the problem; concurrent requests batched; the forecaster's answers unchanged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from lstmops.serve.app import create_app
from lstmops.serve.batching import Batcher
from lstmops.serve.loader import LoadedClassifier, ModelLoadError, load_torchscript
from lstmops.serve.payload import PayloadError, parse_sequences
from lstmops.serve.server import build
from lstmops.serve.settings import Settings
from lstmops.tasks.classify.artifact import script
from lstmops.tasks.classify.model import ClassifierSpec, LSTMClassifier

JSON = {"Content-Type": "application/json"}
FEATURES = ["f1", "f2", "f3", "f4"]
CLASSES = ["ae", "i", "u"]
MEAN, STD = [1.0, -1.0, 0.0, 2.0], [0.5, 2.0, 1.0, 1.0]


def tiny_classifier(path: Path, seed: int = 0) -> Path:
    """A TorchScript file exactly as `lstmops export` writes one for task classify, untrained."""
    torch.manual_seed(seed)
    core = LSTMClassifier(ClassifierSpec(4, 3, 8, 1, 0.0, True)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(script(core, MEAN, STD, FEATURES, CLASSES, min_length=2, max_length=20), str(path))
    return path


def sequences(lengths: list[int], seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 4)) * STD + MEAN).astype(np.float32) for n in lengths]


def expected(path: Path, seqs: list[np.ndarray]) -> np.ndarray:
    """What the file answers for each sequence sent alone."""
    model = torch.jit.load(str(path))
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(s[None]), torch.tensor([len(s)])).numpy() for s in seqs])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("classifier") / "model.ts")


@pytest.fixture(scope="module")
def client(model_file):
    server = build(Settings(model=str(model_file), threads=torch.get_num_threads()))
    with TestClient(create_app(server)) as c:
        yield c


def invoke(client: TestClient, body, headers=JSON):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/invocations", content=data, headers=headers)


def test_the_file_loads_as_a_classifier_with_its_interface(model_file):
    loaded = load_torchscript(model_file, "v1")
    assert isinstance(loaded, LoadedClassifier)
    assert (loaded.features, loaded.classes, loaded.min_length, loaded.max_length) == (FEATURES, CLASSES, 2, 20)


def test_variable_length_sequences_get_the_files_probabilities_and_class_names(client, model_file):
    seqs = sequences([5, 2, 9])
    answer = invoke(client, {"inputs": [s.tolist() for s in seqs]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    want = expected(model_file, seqs)
    np.testing.assert_allclose(body["probabilities"], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.sum(body["probabilities"], axis=1), 1, atol=1e-6)
    assert body["predictions"] == [CLASSES[i] for i in want.argmax(axis=1)]
    assert body["classes"] == CLASSES
    assert answer.headers["X-Model-Version"].startswith("model.ts@sha256:")


def test_one_sequence_as_json_or_csv(client, model_file):
    seq = sequences([6])[0]
    want = expected(model_file, [seq])
    single = invoke(client, {"inputs": seq.tolist()})
    assert single.status_code == 200, single.text
    np.testing.assert_allclose(single.json()["probabilities"], want, atol=1e-6)
    csv = "f3,f1,f4,f2\n" + "\n".join(f"{r[2]!r},{r[0]!r},{r[3]!r},{r[1]!r}" for r in seq.astype(float).tolist())
    answer = invoke(client, csv, {"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["probabilities"], want, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [sequences([5])[0][:, :3].tolist()]}, "expected 4 features (f1, f2, f3, f4), got 3"),
        ({"inputs": [s.tolist() for s in sequences([5, 1])]}, "sequence 1 has 1 step(s), fewer than the 2 the model was trained on"),
        ({"inputs": [sequences([21])[0].tolist()]}, "sequence 0 has 21 steps, more than the 20 the model was trained on"),
        ({"inputs": [[[1, 2, 3, float("nan")], [1, 2, 3, 4]]]}, "input contains NaN or infinite values in sequence 0"),
        ({"inputs": [sequences([3])[0].tolist(), []]}, "sequence 1 is empty or not a list of steps"),
        ({"inputs": [[[1, 2, 3, 4], [1, 2]]]}, "sequence 0 is not rectangular: every step must have the same features"),
        ({"inputs": [[[1, 2, 3, 4], [1, 2, 3, 4]], [[1, 2], [3, 4]]]}, "sequence 1 has 2 features, sequence 0 has 4"),
        ({"inputs": [[["a", 2, 3, 4], [1, 2, 3, 4]]]}, "sequence 0 must contain only numbers"),
        ({"inputs": [[[True, 2, 3, 4], [1, 2, 3, 4]]]}, "inputs must contain only numbers (found true/false)"),
        ({"inputs": []}, '"inputs" must be a non-empty list of sequences'),
        ({"wrong": 1}, 'expected a JSON object with "inputs"'),
        (b"{not json", "body is not valid JSON"),
    ],
)
def test_bad_input_is_a_400_naming_the_problem(client, body, message):
    answer = invoke(client, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(message) or message in answer.json()["error"]
    assert client.get("/ping").status_code == 200  # still serving


def test_another_content_type_is_a_415(client):
    assert invoke(client, "x", {"Content-Type": "text/plain"}).status_code == 415


def test_concurrent_requests_of_one_padded_length_are_batched_with_their_lengths(model_file):
    loaded = load_torchscript(model_file, "v1")
    batcher = Batcher(max_batch=8, max_wait_s=0.05)
    seen: list[int] = []
    batcher.observe = seen.append
    batcher.start()
    requests = [parse_sequences(json.dumps({"inputs": [s.tolist() for s in sequences([7, n], seed=n)]}).encode(), "application/json", FEATURES)
                for n in (3, 7, 4)]  # fmt: skip

    async def ask_all():
        return await asyncio.gather(*(batcher.predict(loaded, torch.from_numpy(x), torch.from_numpy(n)) for x, n in requests))

    try:
        answers = asyncio.run(ask_all())
    finally:
        batcher.stop()
    assert sum(seen) == 6 and max(seen) > 2  # at least two requests shared a forward pass
    for (x, n), got in zip(requests, answers):
        seqs = [x[i, : n[i]] for i in range(len(n))]
        np.testing.assert_allclose(got, expected(model_file, seqs), atol=1e-6)


def test_parse_sequences_pads_with_zeros_and_counts_steps():
    x, lengths = parse_sequences(b'{"inputs": [[[1, 2]], [[3, 4], [5, 6]]]}', "application/json", ["a", "b"])
    assert lengths.tolist() == [1, 2] and x.shape == (2, 2, 2) and x.dtype == np.float32
    assert x[0, 1].tolist() == [0, 0]
    with pytest.raises(PayloadError, match="empty request body"):
        parse_sequences(b"  ", "application/json", ["a", "b"])


def test_a_classifier_file_that_answers_wrongly_is_refused_at_load(tmp_path):
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.task = "classify"
            self.features = ["a"]
            self.classes = ["x", "y"]
            self.min_length = 1
            self.max_length = 5

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return torch.ones(x.shape[0], 2)  # "probabilities" summing to 2

    path = tmp_path / "broken.ts"
    torch.jit.script(Broken()).save(str(path))
    with pytest.raises(ModelLoadError, match="self-check gave shape"):
        load_torchscript(path, "broken")
