"""SageMaker: `lstmops package sagemaker` writes a reproducible model.tar.gz whose handlers answer
like the model; `lstmops deploy sagemaker` creates and updates endpoints through boto3 (moto
server for the control plane; botocore's Stubber checks update_endpoint against the real service
model, since moto lacks it); the CloudFormation template creates a stack."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from lstmops.tasks.forecast.prepare import Prepared, Split
from lstmops.tasks.forecast.export import script
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec
from lstmops.registry.register import register_file

CLI = Path(sys.executable).parent / "lstmops"
REPO = Path(__file__).resolve().parents[1]
FEATURES = ["demand_gw", "temperature_c", "workday"]
STEPS, HORIZON = 12, 4
ROLE = "arn:aws:iam::123456789012:role/lstmops-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/lstmops:0.1.0"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained forecaster exported as `lstmops export` does it (scaling and checks inside)."""
    torch.manual_seed(0)
    meta = Prepared(
        features=FEATURES, target="demand_gw", target_index=0, mean=[5.0, 20.0, 0.5], std=[1.0, 5.0, 0.5],
        split=Split(100, 120, 140), start="2014-01-01", frequency="30min", input_steps=STEPS, horizon=HORIZON,
    )  # fmt: skip
    core = LSTMForecaster(ModelSpec(n_features=3, hidden_size=8, num_layers=1, dropout=0.0, horizon=HORIZON)).eval()
    path = tmp_path_factory.mktemp("model") / "model.ts"
    torch.jit.save(script(core, meta), str(path))
    return path


@pytest.fixture(scope="module")
def tarball(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lstmops.deploy.package import package_sagemaker

    return package_sagemaker(tmp_path_factory.mktemp("pkg") / "model.tar.gz", model=model_file).path


@pytest.fixture(scope="module")
def handlers(tarball: Path, tmp_path_factory: pytest.TempPathFactory):
    """code/inference.py from the tarball, imported by path, and the unpacked model directory."""
    model_dir = tmp_path_factory.mktemp("opt-ml-model")
    with tarfile.open(tarball) as tar:
        tar.extractall(model_dir, filter="data")
    spec = importlib.util.spec_from_file_location("sagemaker_inference_under_test", model_dir / "code" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, model_dir


def windows(n: int = 2, steps: int = STEPS) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.stack([torch.randn(n, steps) + 5, torch.randn(n, steps) * 5 + 20, (torch.rand(n, steps) > 0.5).float()], -1)


def answer(handlers, body: bytes | str, content_type: str, accept: str = "application/json") -> dict:
    module, model_dir = handlers
    model = module.model_fn(str(model_dir))
    text, media = module.output_fn(module.predict_fn(module.input_fn(body, content_type), model), accept)
    assert media == "application/json"
    return json.loads(text)


# ---------------------------------------------------------------- package ------------------------


def test_tarball_holds_the_model_and_handlers_readable_by_any_user(tarball, model_file):
    from lstmops.deploy import inference

    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["code", "code/inference.py", "model.pt"]
        assert tar.extractfile("model.pt").read() == model_file.read_bytes()
        assert tar.extractfile("code/inference.py").read() == Path(inference.__file__).read_bytes()
    assert {m.name: m.mode for m in members} == {"code": 0o755, "code/inference.py": 0o644, "model.pt": 0o644}


def test_same_model_gives_the_same_bytes(model_file, tarball, tmp_path):
    from lstmops.deploy.package import file_sha256, package_sagemaker

    os.utime(model_file)  # a newer file time must not change the tarball
    again = package_sagemaker(tmp_path / "again.tar.gz", model=model_file)
    assert again.path.read_bytes() == tarball.read_bytes()
    assert again.sha256 == file_sha256(tarball)
    assert (again.features, again.input_steps, again.horizon) == (FEATURES, STEPS, HORIZON)


def test_handlers_answer_json_like_the_model(handlers, model_file):
    x = windows(3)
    expected = torch.jit.load(str(model_file))(x)
    got = answer(handlers, json.dumps({"inputs": x.tolist()}).encode(), "application/json; charset=utf-8")
    assert torch.allclose(torch.tensor(got["predictions"]), expected, atol=1e-5)
    one = answer(handlers, json.dumps({"inputs": x[0].tolist()}), "application/json", accept="*/*")  # one window
    assert torch.allclose(torch.tensor(one["predictions"]), expected[:1], atol=1e-5)


def test_handlers_answer_csv_with_columns_in_any_order(handlers, model_file):
    x = windows(1, steps=STEPS + 5)  # more history than trained on is fine
    expected = torch.jit.load(str(model_file))(x)
    order = [2, 0, 1]
    rows = [",".join(str(float(v)) for v in step[order]) for step in x[0]]
    with_header = "\n".join([",".join(FEATURES[i] for i in order), *rows]) + "\n"
    assert torch.allclose(torch.tensor(answer(handlers, with_header, "text/csv")["predictions"]), expected, atol=1e-5)
    plain = "\n".join(",".join(str(float(v)) for v in step) for step in x[0])  # no header: the model's order
    assert torch.allclose(torch.tensor(answer(handlers, plain.encode(), "text/csv")["predictions"]), expected, atol=1e-5)


def short_window() -> str:
    return json.dumps({"inputs": windows(1, steps=STEPS - 2).tolist()})


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "message"),
    [
        ('{"inputs": [[1, 2, 3]]}', "application/x-npy", "application/json", "unsupported content type 'application/x-npy'"),
        ("{not json", "application/json", "application/json", "body is not valid JSON"),
        ("", "application/json", "application/json", "empty request body"),
        ('{"data": [[1, 2, 3]]}', "application/json", "application/json", 'expected a JSON object with "inputs"'),
        ('{"inputs": [[1, "a", 3]]}', "application/json", "application/json", "array of numbers"),
        ('{"inputs": [[1, 2, 3], [1, 2]]}', "application/json", "application/json", "rectangular"),
        ('{"inputs": [1, 2, 3]}', "application/json", "application/json", "got 1-d"),
        (json.dumps({"inputs": [[1.0, 2.0]] * STEPS}), "application/json", "application/json", "expected 3 features"),
        (short_window(), "application/json", "application/json", f"shorter than the {STEPS}"),
        (json.dumps({"inputs": [[math.nan, 20.0, 1.0]] * STEPS}), "application/json", "application/json", "NaN"),
        ("1,2,3\n1,2\n", "text/csv", "application/json", "CSV line 2 has 2 values, expected 3"),
        ("1,2,3\n1,x,3\n", "text/csv", "application/json", "CSV line 2: 'x' is not a number"),
        ("demand_gw,temp,workday\n" + "1,2,3\n" * STEPS, "text/csv", "application/json", "do not match the model's features"),
        (json.dumps({"inputs": windows(1).tolist()}), "application/json", "text/csv", "unsupported accept type 'text/csv'"),
    ],
)  # fmt: skip
def test_bad_requests_raise_value_error_saying_what_is_wrong(handlers, body, content_type, accept, message):
    with pytest.raises(ValueError) as caught:
        answer(handlers, body, content_type, accept)
    assert message in str(caught.value)
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)


def test_handlers_need_nothing_from_lstmops(handlers):
    """AWS's PyTorch container has torch and numpy, not lstmops."""
    _, model_dir = handlers
    code = (
        "import sys, json; sys.modules['lstmops'] = None  # any import of lstmops fails\n"
        "sys.path.insert(0, 'code'); import inference as h\n"
        f"x = h.input_fn(json.dumps({{'inputs': [[[5.0, 20.0, 1.0]] * {STEPS}]}}), 'application/json')\n"
        "print(h.output_fn(h.predict_fn(x, h.model_fn('.')), 'application/json')[0])\n"
    )
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=model_dir, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["predictions"][0]) == HORIZON


@pytest.mark.integration
def test_lstmops_server_answers_the_unpacked_tarball_as_the_handlers_do(handlers, tmp_path):
    """SageMaker with the lstmops image: `docker run IMAGE serve`, the tarball unpacked in
    /opt/ml/model (SM_MODEL_DIR here), port from SAGEMAKER_BIND_TO_PORT."""
    import urllib.request

    from tests.conftest import free_port, wait_http

    _, model_dir = handlers
    port = free_port()
    env = {**os.environ, "SM_MODEL_DIR": str(model_dir), "SAGEMAKER_BIND_TO_PORT": str(port)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(CLI), "serve", "--host", "127.0.0.1"], cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 60, server)
        body = json.dumps({"inputs": windows(2).tolist()}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        served = json.loads(urllib.request.urlopen(request, timeout=10).read())
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    expected = answer(handlers, body, "application/json")["predictions"]
    assert torch.allclose(torch.tensor(served["predictions"]), torch.tensor(expected), atol=1e-5)


def test_package_cli_errors_are_one_line_and_write_nothing(tmp_path, model_file):
    (tmp_path / "not-a-model.ts").write_text("hello")
    cases = [
        ([], "models/model.ts: model file not found (run `lstmops export`"),
        (["--model", "nope.ts"], "nope.ts: model file not found"),
        (["--model", "not-a-model.ts"], "not-a-model.ts: cannot load as TorchScript"),
        (["--model", str(model_file), "--model-uri", "models:/m@champion"], "either --model or --model-uri"),
    ]
    for args, message in cases:
        result = subprocess.run([str(CLI), "package", "sagemaker", *args], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.integration
def test_package_follows_a_registry_alias_to_the_versions_torchscript(model_file, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from lstmops.deploy.package import package_sagemaker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment = mlflow.create_experiment("deploy-test", artifact_location=(tmp_path / "mlruns").as_uri())
    client = MlflowClient()
    client.create_registered_model("forecaster")
    decoy = tmp_path / "decoy" / "model.ts"  # version 1: another model, so the alias must be followed
    decoy.parent.mkdir()
    decoy.write_bytes(b"not the champion")
    for source in (decoy, model_file):
        with mlflow.start_run(experiment_id=experiment) as run:
            register_file(client, "forecaster", source, run.info.run_id)
    client.set_registered_model_alias("forecaster", "champion", "2")

    packaged = package_sagemaker(tmp_path / "model.tar.gz", model_uri="models:/forecaster@champion", cwd=tmp_path)
    assert packaged.source == "forecaster/2"
    with tarfile.open(packaged.path) as tar:
        assert tar.extractfile("model.pt").read() == model_file.read_bytes()


# ---------------------------------------------------------------- deploy (moto) ------------------


@pytest.fixture(scope="module")
def moto_url():
    """A moto server in this process: the AWS control planes (S3, SageMaker, CloudWatch, CloudFormation)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_url, monkeypatch, tmp_path) -> dict[str, str]:
    """Fake credentials, no config files, every endpoint at moto; for this process and the CLI."""
    values = {
        "AWS_ENDPOINT_URL": moto_url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {**os.environ, **values}


def client(service: str):
    import boto3

    return boto3.client(service, region_name=REGION)


def deploy_cli(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(CLI), "deploy", "sagemaker", "--role", ROLE, "--image", IMAGE, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.integration
def test_deploy_creates_model_config_alarms_and_endpoint_then_reuses_them(aws_env, model_file, tarball, tmp_path):
    from lstmops.deploy.package import file_sha256

    client("s3").create_bucket(Bucket="models-bucket")
    args = ("--bucket", "models-bucket", "--model", str(model_file), "--endpoint", "forecast-e2e")
    first = deploy_cli(aws_env, tmp_path, *args)
    assert first.returncode == 0, first.stderr
    digest = file_sha256(tarball)[:12]  # the tarball is reproducible: its hash names everything
    assert f"created model forecast-e2e-{digest}" in first.stdout
    assert "creating endpoint forecast-e2e" in first.stdout
    assert first.stdout.rstrip().endswith("endpoint forecast-e2e is InService")

    sm = client("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName="forecast-e2e")
    assert endpoint["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert (variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        f"forecast-e2e-{digest}", "ml.m5.large", 1,
    )  # fmt: skip
    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["ExecutionRoleArn"] == ROLE and model["PrimaryContainer"]["Image"] == IMAGE
    data_url = model["PrimaryContainer"]["ModelDataUrl"]
    assert data_url == f"s3://models-bucket/lstmops/{digest}/model.tar.gz"
    uploaded = client("s3").get_object(Bucket="models-bucket", Key=data_url.split("/", 3)[3])["Body"].read()
    assert uploaded == tarball.read_bytes()
    alarms = client("cloudwatch").describe_alarms(AlarmNamePrefix="forecast-e2e-")["MetricAlarms"]
    assert {(a["MetricName"], a["Dimensions"][0]["Value"]) for a in alarms} == {
        ("Invocation5XXErrors", "forecast-e2e"), ("ModelLatency", "forecast-e2e"),
    }  # fmt: skip

    again = deploy_cli(aws_env, tmp_path, *args, "--no-wait")  # same model: nothing new, no update
    assert again.returncode == 0, again.stderr
    assert f"model forecast-e2e-{digest} exists" in again.stdout
    assert f"endpoint forecast-e2e already serves {endpoint['EndpointConfigName']}" in again.stdout
    assert len(sm.list_models(NameContains="forecast-e2e")["Models"]) == 1


@pytest.mark.integration
def test_deploy_failures_are_one_line(aws_env, model_file, tmp_path):
    no_credentials = {k: v for k, v in aws_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    cases = [
        (aws_env, ["--role", "sagemaker-role"], "--role 'sagemaker-role' is not an IAM role ARN"),
        (aws_env, ["--bucket", "no-such-bucket"], "NoSuchBucket"),
        (no_credentials, [], "no AWS credentials"),
    ]
    for env, extra, message in cases:
        args = ["--bucket", "some-bucket", "--model", str(model_file), *extra]
        result = deploy_cli(env, tmp_path, *args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr


def stubbed_sagemaker():
    import boto3
    from botocore.stub import Stubber

    sm = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    return sm, Stubber(sm)


def test_update_goes_blue_green_with_rollback_on_both_alarms():
    """moto has no update_endpoint: the Stubber checks the call against SageMaker's real API model."""
    from lstmops.deploy.sagemaker import Names, Target, create_or_update, deployment_config

    names = Names.of(Target(ROLE, IMAGE, "bucket", endpoint="forecast"), "ab" * 32)
    sm, stub = stubbed_sagemaker()
    stub.add_response("describe_endpoint", endpoint_description("forecast-old"), {"EndpointName": "forecast"})
    stub.add_response(
        "update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/forecast"},
        {"EndpointName": "forecast", "EndpointConfigName": names.config, "DeploymentConfig": deployment_config(names)},
    )  # fmt: skip
    with stub:
        message = create_or_update(sm, "forecast", names)
    stub.assert_no_pending_responses()
    assert message == f"updating endpoint forecast: forecast-old -> {names.config} (blue/green, auto-rollback)"
    policy = deployment_config(names)
    assert policy["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["WaitIntervalInSeconds"] >= 300
    assert [a["AlarmName"] for a in policy["AutoRollbackConfiguration"]["Alarms"]] == [
        "forecast-5xx-errors", "forecast-model-latency",
    ]  # fmt: skip


def endpoint_description(config: str, **extra: str) -> dict:
    return {
        "EndpointName": "forecast", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/forecast",
        "EndpointConfigName": config, "EndpointStatus": "InService",
        "CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z", **extra,
    }  # fmt: skip


def test_an_update_that_rolled_back_is_a_failed_deployment():
    """After a rollback the endpoint is InService again, on the old config: the waiter alone would pass."""
    from lstmops.deploy.sagemaker import DeployError, wait_in_service

    sm, stub = stubbed_sagemaker()
    stub.add_response("describe_endpoint", endpoint_description("forecast-old"))  # the waiter's poll
    stub.add_response("describe_endpoint", endpoint_description("forecast-old"))
    with stub, pytest.raises(DeployError) as caught:
        wait_in_service(sm, "forecast", "forecast-new", delay=1, attempts=1)
    assert str(caught.value) == (
        "endpoint forecast rolled back to forecast-old: a rollback alarm fired while the new fleet baked"
    )
    stub.add_response("describe_endpoint", endpoint_description("forecast-new"))
    stub.add_response("describe_endpoint", endpoint_description("forecast-new"))
    with stub:
        assert wait_in_service(sm, "forecast", "forecast-new", delay=1, attempts=1) == "endpoint forecast is InService"


def test_stubbed_calls_are_checked_against_the_service_model():
    """The check above can fail: a misspelt field is refused before any stubbed answer."""
    from botocore.exceptions import ParamValidationError

    sm, stub = stubbed_sagemaker()
    stub.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e"})
    with stub, pytest.raises(ParamValidationError):
        sm.update_endpoint(EndpointName="e", EndpointConfigName="c", DeploymentConfig={"BlueGreenPolicy": {}})


def test_access_denied_becomes_one_line_naming_the_call():
    from lstmops.deploy.sagemaker import DeployError, aws_errors

    sm, stub = stubbed_sagemaker()
    stub.add_client_error("create_model", "AccessDeniedException", "User is not authorized to perform sagemaker:CreateModel")
    with stub, pytest.raises(DeployError) as caught, aws_errors():
        sm.create_model(ModelName="m", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    assert str(caught.value) == "CreateModel: AccessDeniedException: User is not authorized to perform sagemaker:CreateModel"


# ---------------------------------------------------------------- CloudFormation (moto) ----------


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:Tried to parse AWS..CloudWatch..Alarm:UserWarning")
def test_cloudformation_template_creates_the_model_config_and_endpoint(aws_env):
    cfn = client("cloudformation")
    parameters = {
        "ImageUri": IMAGE, "ModelDataUrl": "s3://models-bucket/lstmops/abc/model.tar.gz", "ExecutionRoleArn": ROLE,
        "EndpointName": "forecast-cfn", "ErrorAlarmName": "forecast-cfn-5xx", "LatencyAlarmName": "forecast-cfn-latency",
    }  # fmt: skip
    cfn.create_stack(
        StackName="lstmops-serve",
        TemplateBody=(REPO / "infra" / "sagemaker" / "endpoint.yaml").read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )  # fmt: skip
    cfn.get_waiter("stack_create_complete").wait(StackName="lstmops-serve", WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName="lstmops-serve")["Stacks"][0]["Outputs"]}

    sm = client("sagemaker")
    # moto names the endpoint itself (it ignores the EndpointName property): read it from the outputs.
    endpoint = sm.describe_endpoint(EndpointName=outputs["EndpointName"])
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == outputs["EndpointConfigName"]
    model = sm.describe_model(ModelName=outputs["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == parameters["ModelDataUrl"]
    assert model["ExecutionRoleArn"] == ROLE
    # moto's CloudFormation skips AWS::CloudWatch::Alarm (a warning, not an error): the alarms and the
    # endpoint's DeploymentConfig are checked against AWS's resource schemas by cfn-lint (test_infra).
