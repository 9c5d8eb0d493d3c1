"""Trustworthy releases (issue 18, parts 1-3): a version's file is stored once and checked
against the sha256 (and signature) the version records wherever it is loaded; the registered
MLflow model loads without unpickling anything."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmops.errors import ModelRefused
from lstmops.registry import signing
from lstmops.registry.register import register_file
from lstmops.registry.verify import fetch_verified, file_digest

from .conftest import free_port, lstmops
from .serve_support import get, start, stop, tiny_model, wait_for, windows

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "lstmops"


# --- without a server -----------------------------------------------------------------------------


def test_the_same_model_saves_to_the_same_bytes_whatever_the_file_is_called(tmp_path):
    from lstmops.io import save_torchscript

    module = torch.jit.load(str(tiny_model(tmp_path / "a.ts")))
    save_torchscript(module, tmp_path / "one.ts")
    save_torchscript(module, tmp_path / ".model.ts.x1y2.tmp")  # as atomic_path names it
    assert (tmp_path / "one.ts").read_bytes() == (tmp_path / ".model.ts.x1y2.tmp").read_bytes()


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_prints_it(tmp_path):
    made = subprocess.run([str(CLI), "keygen", str(tmp_path / "keys" / "release")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    private, public = tmp_path / "keys" / "release.key", tmp_path / "keys" / "release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    secret = "".join(before.decode().splitlines()[1:-1])
    assert secret not in made.stdout + made.stderr and "key id" in made.stdout
    again = subprocess.run([str(CLI), "keygen", str(tmp_path / "keys" / "release")], capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    assert private.read_bytes() == before  # never overwritten


def keys(tmp_path: Path, name: str):
    private, public = signing.keygen(tmp_path / name)
    env = {signing.SIGNING_FILE_ENV: str(private), signing.VERIFY_FILE_ENV: str(public)}
    return signing.signing_key(env), signing.verify_keys(env), public


def test_a_signature_binds_the_hash_and_the_key(tmp_path):
    key, trusted, _ = keys(tmp_path, "a")
    _, other, _ = keys(tmp_path, "b")
    sha, size = "ab" * 32, 1234
    signed = signing.sign(key, sha, size)
    assert signing.check(trusted, sha, size, signed.signature, "v1") == signed.key_id
    assert signing.check([], sha, size, None, "v1") is None  # no key configured: nothing required
    for args, words in [
        ((trusted, sha, size, None), "not signed"),
        ((trusted, "cd" * 32, size, signed.signature), "does not verify"),  # another file's hash
        ((trusted, sha, size + 1, signed.signature), "does not verify"),
        ((trusted, sha, size, "bm90IGEgc2lnbmF0dXJl"), "does not verify"),
        ((other, sha, size, signed.signature), "does not verify"),  # the wrong key
    ]:
        with pytest.raises(ModelRefused, match=words) as refused:
            signing.check(*args, "m version 1")
        assert str(refused.value).startswith("m version 1: refused") and "\n" not in str(refused.value)
    # several trusted keys (a rotation): either verifies
    both = signing.verify_keys({signing.VERIFY_ENV: (tmp_path / "b.pub").read_text() + (tmp_path / "a.pub").read_text()})
    assert signing.check(both, sha, size, signed.signature, "v1") == signed.key_id


def test_a_bad_key_setting_names_the_variable_not_the_key(tmp_path):
    from lstmops.errors import ConfigError

    (tmp_path / "junk.pem").write_text("-----BEGIN PUBLIC KEY-----\nc2VjcmV0LXN0dWZm\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match=r"\$LSTMOPS_VERIFY_KEY_FILE") as bad:
        signing.verify_keys({signing.VERIFY_FILE_ENV: str(tmp_path / "junk.pem")})
    assert "c2VjcmV0" not in str(bad.value)
    with pytest.raises(ConfigError, match=r"\$LSTMOPS_SIGNING_KEY:"):
        signing.signing_key({signing.SIGNING_ENV: "secret-material"})


def test_the_sagemaker_handler_loads_only_the_expected_file(tmp_path, monkeypatch):
    from lstmops.deploy import inference

    model = tiny_model(tmp_path / "model" / "model.pt")
    sha, _ = file_digest(model)
    monkeypatch.setenv(inference.SHA256_ENV, sha)
    assert inference.model_fn(str(model.parent)) is not None
    monkeypatch.setenv(inference.SHA256_ENV, "0" * 64)
    with pytest.raises(ValueError, match=f"refused: its sha256 is {sha}, LSTMOPS_MODEL_SHA256 expects {'0' * 64}"):
        inference.model_fn(str(model.parent))


def test_the_pyfunc_loader_checks_hash_and_signature(tmp_path, monkeypatch):
    from lstmops.registry import pyfunc

    key, _, public = keys(tmp_path, "k")
    folder = tmp_path / "data"
    folder.mkdir()
    model = tiny_model(folder / "model.ts")
    sha, size = file_digest(model)
    signed = signing.sign(key, sha, size)
    record = {"sha256": sha, "size": size, "signature": signed.signature, "signing_key": signed.key_id, "inputs": []}
    (folder / pyfunc.RECORD).write_text(json.dumps(record))
    monkeypatch.setenv(signing.VERIFY_FILE_ENV, str(public))
    x = windows(2)
    with torch.inference_mode():
        want = torch.jit.load(str(model))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pyfunc._load_pyfunc(str(folder)).predict(x), want)
    (folder / pyfunc.RECORD).write_text(json.dumps({**record, "signature": None}))
    with pytest.raises(ModelRefused, match="not signed"):
        pyfunc._load_pyfunc(str(folder))
    tiny_model(folder / "model.ts", seed=9)  # another valid TorchScript file in its place
    (folder / pyfunc.RECORD).write_text(json.dumps(record))
    with pytest.raises(ModelRefused, match=f"the version records sha256 {sha}"):
        pyfunc._load_pyfunc(str(folder))


# --- against a real MLflow server -----------------------------------------------------------------


@pytest.fixture
def store(mlflow_server, monkeypatch, tmp_path):
    """A fresh registered model name on the session's server, and a project whose params name it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    for var in (signing.SIGNING_ENV, signing.SIGNING_FILE_ENV, signing.VERIFY_ENV, signing.VERIFY_FILE_ENV):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("trust-tests")
    name = f"trust-{uuid.uuid4().hex[:8]}"
    project = tmp_path / "project"
    project.mkdir()
    params = (REPO / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("model_name: null", f"model_name: {name}", 1))
    return MlflowClient(mlflow_server), name, project


def new_run() -> str:
    import mlflow

    with mlflow.start_run() as run:
        pass
    return run.info.run_id


def tamper(client, mv, replacement: Path) -> None:
    """Overwrite the version's stored file through the artifact store (as anyone who can write it
    could), with another valid TorchScript file."""
    artifact = mv.tags["model.artifact"]
    staged = replacement.parent / "staged" / "model.ts"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(replacement.read_bytes())
    client.log_artifact(mv.run_id, str(staged), artifact.rsplit("/", 1)[0])


class FakeExport:
    """A task whose export writes a small forecaster (``seed`` stands for the export code)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def export(self, cfg, root: Path):
        from lstmops.io import save_torchscript
        from lstmops.tasks.base import Exported
        from lstmops.tasks.forecast.task import _signature

        module = torch.jit.load(str(tiny_model(root / "scratch" / f"{self.seed}.ts", seed=self.seed)))
        save_torchscript(module, root / "models" / "model.ts")
        return Exported({"max_abs_diff": 0.0}, _signature(3, 4), {"features": ["demand_gw", "temperature_c", "workday"]},
                        "exported models/model.ts")  # fmt: skip


@pytest.mark.integration
def test_a_version_records_its_file_and_a_reexport_never_changes_it(store, monkeypatch):
    import mlflow

    from lstmops import config, stages
    from lstmops.io import read_json, write_json
    from lstmops.registry.register import register

    client, name, root = store
    cfg = config.load(root)
    mlflow.set_experiment(cfg.mlflow.experiment)  # the training run's, as the stages use it
    run_id = new_run()
    write_json(root / "models" / "train.json", {"run_id": run_id})

    def export_and_register(seed: int):
        monkeypatch.setattr(stages, "task", lambda cfg: FakeExport(seed))
        stages.export(cfg, root)
        exported = read_json(root / "models" / "export.json")
        return exported, register(exported["model_uri"], name, run_id, {"task": "forecast"}, stages.exported_record(exported))

    exported, entry = export_and_register(0)
    v1 = client.get_model_version(name, str(entry["version"]))
    served = fetch_verified(v1, root / "fetched" / "1")  # the file the registry serves for version 1
    assert v1.tags["model.sha256"] == file_digest(served)[0] == exported["sha256"] == file_digest(root / "models/model.ts")[0]
    assert v1.tags["model.size"] == str(served.stat().st_size)
    assert v1.tags["model.artifact"] == f"torchscript/{exported['sha256']}/model.ts"

    # dvc repro -f -s export: the same model exports the same bytes: nothing new
    again, entry_again = export_and_register(0)
    assert again["sha256"] == exported["sha256"] and entry_again["version"] == entry["version"]
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    # a change to the export code: other bytes, so a new version; version 1 keeps its own
    changed, entry_changed = export_and_register(1)
    assert changed["sha256"] != exported["sha256"] and entry_changed["version"] == entry["version"] + 1
    assert file_digest(fetch_verified(v1, root / "fetched" / "1-again"))[0] == exported["sha256"]
    v2 = client.get_model_version(name, str(entry_changed["version"]))
    assert v2.tags["model.sha256"] == changed["sha256"] and v2.run_id == v1.run_id

    # No pickle: the registered MLflow model loads with pickle disallowed and forecasts a window.
    client.set_registered_model_alias(name, "champion", v1.version)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    x = windows(1)
    with torch.inference_mode():
        want = torch.jit.load(str(served))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-6)

    # ... and so does `mlflow models serve` (its scoring server, this environment)
    port = free_port()
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its uvicorn
    log = (root / "mlflow-serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
                             "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", proc, timeout=120)
        from .serve_support import request

        status, _, body = request("POST", f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": x.tolist()}).encode(),
                                  {"Content-Type": "application/json"})  # fmt: skip
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(json.loads(body)["predictions"]), want, rtol=1e-5)
    finally:
        stop(proc)
        log.close()
    assert "pickle" not in (root / "mlflow-serve.log").read_text().lower()


@pytest.mark.integration
def test_a_champion_whose_stored_file_was_replaced_is_refused_everywhere(store, tmp_path):
    from lstmops.deploy.package import package_sagemaker
    from lstmops.errors import LstmopsError
    from lstmops.registry.gate import load_version_model
    from lstmops.registry.lineage import describe

    client, name, root = store
    good = tiny_model(tmp_path / "good.ts", seed=0)
    mv = register_file(client, name, good, new_run())
    client.set_registered_model_alias(name, "champion", mv.version)
    sha = mv.tags["model.sha256"]
    tamper(client, mv, tiny_model(tmp_path / "other.ts", seed=3))
    bad_sha = file_digest(tmp_path / "other.ts")[0]
    refusal = f"{name} version {mv.version}: refused: its model file has sha256 {bad_sha}"
    env = {"MLFLOW_TRACKING_URI": client.tracking_uri, "LSTMOPS_MODEL_CACHE": str(tmp_path / "cache")}

    served = lstmops(root, env, "serve", "--model-uri", f"models:/{name}@champion", "--host", "127.0.0.1",
                     "--port", str(free_port()))  # fmt: skip
    assert served.returncode == 1 and served.stderr.count("\n") == 1, served.stderr
    assert served.stderr.startswith(f"error: {refusal}") and f"the version records sha256 {sha}" in served.stderr

    compared = lstmops(root, env, "compare", "@champion", str(good))
    assert compared.returncode == 1 and compared.stderr.count("\n") == 1, compared.stderr
    assert compared.stderr.startswith(f"error: {refusal}") and sha in compared.stderr

    with pytest.raises(ModelRefused, match=refusal):  # what the gate loads, champion and challenger alike
        load_version_model(client, name, int(mv.version))
    with pytest.raises(LstmopsError, match=refusal):
        package_sagemaker(tmp_path / "model.tar.gz", model_uri=f"models:/{name}@champion", cwd=root)
    assert not (tmp_path / "model.tar.gz").exists()
    assert any(line.strip().startswith("model file     REFUSED") for line in describe(client, client.get_model_version(name, mv.version)))


@pytest.mark.integration
def test_a_serving_server_keeps_its_model_when_the_new_champion_is_refused_then_takes_it_when_put_right(store, tmp_path):
    client, name, root = store
    run_id = new_run()
    v1 = register_file(client, name, tiny_model(tmp_path / "v1.ts", seed=0), run_id)
    second = tiny_model(tmp_path / "v2.ts", seed=1)
    v2 = register_file(client, name, second, run_id)
    client.set_registered_model_alias(name, "champion", v1.version)
    port = free_port()
    proc = start(["--model-uri", f"models:/{name}@champion", "--poll-interval", "1", "--host", "127.0.0.1", "--port", str(port)],
                 {"MLFLOW_TRACKING_URI": client.tracking_uri, "LSTMOPS_MODEL_CACHE": str(tmp_path / "cache")},
                 root, tmp_path / "serve.log")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/readyz", proc, timeout=60)
        tamper(client, v2, tiny_model(tmp_path / "other.ts", seed=3))
        client.set_registered_model_alias(name, "champion", v2.version)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            detail = json.loads(get(f"{url}/readyz")[2])
            if detail["last_reload_error"]:
                break
            time.sleep(0.2)
        assert detail["version"] == f"{name}/{v1.version}" and detail["ready"]
        assert detail["last_reload_error"].startswith(f"{name} version {v2.version}: refused: its model file has sha256")
        assert v2.tags["model.sha256"] in detail["last_reload_error"]
        assert "lstmops_model_reload_failures_total 0.0" not in get(f"{url}/metrics")[2].decode()

        tamper(client, v2, second)  # the file put right: taken at a later poll (the refusal is not pinned)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and json.loads(get(f"{url}/readyz")[2])["version"] != f"{name}/{v2.version}":
            time.sleep(0.2)
        detail = json.loads(get(f"{url}/readyz")[2])
        assert detail["version"] == f"{name}/{v2.version}" and detail["last_reload_error"] is None
    finally:
        stop(proc)


@pytest.mark.integration
def test_signed_versions_load_only_with_the_right_key(store, tmp_path):
    client, name, _ = store
    key, trusted, _ = keys(tmp_path, "release")
    _, wrong, _ = keys(tmp_path, "someone-else")
    run_id = new_run()
    signed = register_file(client, name, tiny_model(tmp_path / "a.ts", seed=0), run_id, key=key)
    unsigned = register_file(client, name, tiny_model(tmp_path / "b.ts", seed=1), run_id)
    assert signed.tags["model.signing_key"] == signing.key_id(key.public_key())

    assert fetch_verified(signed, tmp_path / "ok", keys=trusted).is_file()
    assert fetch_verified(unsigned, tmp_path / "no-keys", keys=[]).is_file()  # no key configured: not required
    with pytest.raises(ModelRefused, match=f"{name} version {unsigned.version}: refused: not signed"):
        fetch_verified(unsigned, tmp_path / "unsigned", keys=trusted)
    with pytest.raises(ModelRefused, match="does not verify with the trusted key"):
        fetch_verified(signed, tmp_path / "wrong", keys=wrong)

    # Someone who can write both the registry and the store swaps the file and its recorded hash:
    # the hash matches, the signature does not.
    other = tiny_model(tmp_path / "c.ts", seed=2)
    tamper(client, signed, other)
    sha, size = file_digest(other)
    client.set_model_version_tag(name, signed.version, "model.sha256", sha)
    client.set_model_version_tag(name, signed.version, "model.size", str(size))
    forged = client.get_model_version(name, signed.version)
    assert fetch_verified(forged, tmp_path / "forged-no-keys", keys=[]).is_file()  # only the signature can tell
    with pytest.raises(ModelRefused, match="does not verify"):
        fetch_verified(forged, tmp_path / "forged", keys=trusted)
