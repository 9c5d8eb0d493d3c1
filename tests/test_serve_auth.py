"""Auth you cannot switch off by accident: no token on a public bind refuses to start unless waived
in as many words; an empty or whitespace token is refused, not taken as "no auth"; an empty
credential never matches; the token file is re-read when it is rotated; and the attacks on the
header (empty bearer, wrong scheme, padding, a token's prefix) fail."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lstmops.errors import LstmopsError
from lstmops.serve.app import create_app
from lstmops.serve.auth import Token, authorized, configured_token, require_auth
from lstmops.serve.server import build
from lstmops.serve.settings import Settings

from .serve_support import CLI, tiny_model, windows

JSON = {"Content-Type": "application/json"}
BODY = json.dumps({"inputs": windows(1).tolist()})


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "model.ts")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "my-host"])
def test_no_token_on_a_public_bind_refuses_to_start(host):
    with pytest.raises(LstmopsError, match=f"no auth token for a server on {host}: set LSTMOPS_AUTH_TOKEN"):
        require_auth(None, host, insecure_no_auth=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_or_an_explicit_waiver_needs_no_token(host):
    require_auth(None, host, insecure_no_auth=False)
    require_auth(None, "0.0.0.0", insecure_no_auth=True)
    require_auth(Token("t"), "0.0.0.0", insecure_no_auth=False)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LSTMOPS_AUTH_TOKEN": ""}, "LSTMOPS_AUTH_TOKEN is set but empty or whitespace"),
        ({"LSTMOPS_AUTH_TOKEN": "  \t\n"}, "LSTMOPS_AUTH_TOKEN is set but empty or whitespace"),
        ({"LSTMOPS_AUTH_TOKEN_FILE": " "}, "LSTMOPS_AUTH_TOKEN_FILE is set but empty"),
    ],
)
def test_a_token_variable_set_to_nothing_usable_is_an_error_not_no_auth(env, message):
    with pytest.raises(LstmopsError, match=message):
        configured_token(env)


def test_a_whitespace_token_file_is_an_error(tmp_path):
    (tmp_path / "token").write_text("   \n")
    with pytest.raises(LstmopsError, match="the auth token file is empty"):
        configured_token({"LSTMOPS_AUTH_TOKEN_FILE": str(tmp_path / "token")})


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer    ", "bearer", "Basic s3cret", "s3cret", "Bearer s3cre",
     "Bearer s3cret-and-more", "Token s3cret", "Bearer\ts3cretx"],
)  # fmt: skip
def test_attacks_on_the_header_fail(header):
    assert not authorized(header, "s3cret")


def test_the_right_token_in_any_case_of_the_scheme_passes():
    assert authorized("Bearer s3cret", "s3cret") and authorized("bearer s3cret", "s3cret")
    assert authorized("  Bearer   s3cret  ", "s3cret")  # padding is not part of the credential
    assert not authorized("Bearer ", "") and not authorized("Bearer", "")  # an empty token never matches


def test_a_rotated_token_file_is_read_again_without_a_restart(model_file, tmp_path, monkeypatch):
    secret = tmp_path / "token"
    secret.write_text("first-token\n")
    monkeypatch.setenv("LSTMOPS_AUTH_TOKEN_FILE", str(secret))
    with TestClient(create_app(build(Settings(model=str(model_file), host="127.0.0.1", threads=1)))) as client:
        client.app.server.token.recheck_s = 0.0  # check the file on every request, not once a second

        def call(token: str) -> int:
            return client.post("/invocations", content=BODY, headers={**JSON, "Authorization": f"Bearer {token}"}).status_code

        assert call("first-token") == 200
        # Kubernetes rotates a mounted Secret by swapping a symlink: a new file, a new inode.
        rotated = tmp_path / "token.new"
        rotated.write_text("second-token\n")
        os.replace(rotated, secret)
        assert call("second-token") == 200 and call("first-token") == 401
        # A rotation that leaves the file empty keeps the last good token: no lock-out, no open door.
        secret.write_text("")
        time.sleep(0.01)
        assert call("second-token") == 200 and call("") == 401


def run_serve(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LSTMOPS_")}
    return subprocess.run([str(CLI), "serve", *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "error: no auth token for a server on 0.0.0.0: set LSTMOPS_AUTH_TOKEN or LSTMOPS_AUTH_TOKEN_FILE"),
        ({"LSTMOPS_AUTH_TOKEN": "   "}, "error: LSTMOPS_AUTH_TOKEN is set but empty or whitespace"),
        ({"LSTMOPS_INSECURE_NO_AUTH": "maybe"}, "error: LSTMOPS_INSECURE_NO_AUTH='maybe': expected 1/true/yes"),
    ],
)
def test_the_command_refuses_to_start_open_with_one_line(model_file, tmp_path, env, message):
    result = run_serve(["--model", str(model_file), "--port", "1"], env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
