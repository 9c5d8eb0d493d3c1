"""Deploy a packaged model to a SageMaker real-time endpoint with boto3.

Upload model.tar.gz to S3 under its hash, create the (immutable) model and endpoint config
named after that hash, then create the endpoint or update it blue/green with automatic rollback
on two CloudWatch alarms (server errors, p99 latency) that this module keeps in place, as
``infra/sagemaker/endpoint.yaml`` does. Deploying the same tarball twice creates nothing new.

Credentials, region and endpoints come from the standard AWS environment and config
(``AWS_PROFILE``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``...), which is how tests point it at moto.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lstmops.errors import LstmopsError

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's rule for endpoint names
VARIANT = "AllTraffic"
PORT = "8080"
# Blue/green as in the CloudFormation template: all traffic to the new fleet, ten minutes of
# baking under the alarms, the old fleet kept five more minutes, then removed.
BAKE_SECONDS = 600


class DeployError(LstmopsError):
    """A deployment that AWS refused or that could not reach AWS."""


@dataclass(frozen=True)
class Target:
    role: str
    image: str
    bucket: str
    endpoint: str = "lstmops-serve"
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    prefix: str = "lstmops"
    region: str | None = None

    def check(self) -> None:
        """What can be refused before any call: a wrong role or name fails here, in one line."""
        if not ROLE_ARN.match(self.role):
            raise DeployError(f"--role {self.role!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        if not NAME.match(self.endpoint) or len(self.endpoint) > 40:
            raise DeployError(f"--endpoint {self.endpoint!r}: use letters, digits and hyphens, at most 40 characters")
        if self.instance_count < 1:
            raise DeployError("--instance-count must be at least 1")


@dataclass(frozen=True)
class Names:
    """Every name derives from the tarball's hash: models and configs are immutable in SageMaker."""

    model: str
    config: str
    key: str
    errors_alarm: str
    latency_alarm: str

    @staticmethod
    def of(target: Target, sha256: str) -> Names:
        model = f"{target.endpoint}-{sha256[:12]}"
        fleet = hashlib.sha256(f"{target.instance_type}x{target.instance_count}".encode()).hexdigest()[:8]
        return Names(
            model=model,
            config=f"{model}-{fleet}",
            key=f"{target.prefix.strip('/')}/{sha256[:12]}/model.tar.gz",
            errors_alarm=f"{target.endpoint}-5xx-errors",
            latency_alarm=f"{target.endpoint}-model-latency",
        )


def deploy(tarball: Path, sha256: str, target: Target, wait: bool = True, say: Callable[[str], None] = print,
           model_sha256: str = "") -> str:  # fmt: skip
    """Upload, register the model and config, create or update the endpoint; its final status."""
    target.check()
    names = Names.of(target, sha256)
    import boto3

    with aws_errors():
        session = boto3.session.Session(region_name=target.region)
        s3, sm, cw = session.client("s3"), session.client("sagemaker"), session.client("cloudwatch")
        data_url = upload(s3, tarball, target.bucket, names.key)
        say(f"uploaded {data_url}")
        say(ensure_model(sm, names.model, target, data_url, model_sha256))
        say(ensure_config(sm, names.config, names.model, target))
        ensure_alarms(cw, target.endpoint, names)
        say(create_or_update(sm, target.endpoint, names))
        if not wait:
            return f"not waiting (--no-wait): aws sagemaker wait endpoint-in-service --endpoint-name {target.endpoint}"
        return wait_in_service(sm, target.endpoint, names.config)


def upload(s3, tarball: Path, bucket: str, key: str) -> str:
    s3.upload_file(str(tarball), bucket, key)
    return f"s3://{bucket}/{key}"


def exists(call: Callable[[], object]) -> bool:
    """SageMaker says 'not found' as a ValidationException ('Could not find ...')."""
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ValidationException" and "not find" in exc.response["Error"]["Message"]:
            return False
        raise
    return True


def ensure_model(sm, name: str, target: Target, data_url: str, model_sha256: str = "") -> str:
    if exists(lambda: sm.describe_model(ModelName=name)):
        return f"model {name} exists (same tarball)"
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=target.role,
        # LSTMOPS_MODEL_SHA256: the handlers (code/inference.py) load model.pt only with this hash
        # LSTMOPS_INSECURE_NO_AUTH: only IAM-signed calls reach a SageMaker endpoint's container, so
        # the server's own bearer token is waived there (it refuses a public bind without one).
        PrimaryContainer={"Image": target.image, "ModelDataUrl": data_url, "Environment": {
            "SAGEMAKER_BIND_TO_PORT": PORT, "LSTMOPS_INSECURE_NO_AUTH": "1",
            **({"LSTMOPS_MODEL_SHA256": model_sha256} if model_sha256 else {})}},
        # The server reads /opt/ml/model only: it needs no network.
        EnableNetworkIsolation=True,
    )
    return f"created model {name}"


def ensure_config(sm, name: str, model: str, target: Target) -> str:
    if exists(lambda: sm.describe_endpoint_config(EndpointConfigName=name)):
        return f"endpoint config {name} exists"
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{
            "VariantName": VARIANT, "ModelName": model, "InstanceType": target.instance_type,
            "InitialInstanceCount": target.instance_count, "InitialVariantWeight": 1.0,
        }],
    )  # fmt: skip
    return f"created endpoint config {name}"


def ensure_alarms(cw, endpoint: str, names: Names) -> None:
    """The rollback triggers (put_metric_alarm is an upsert): any 5xx in a minute, or p99 model
    latency above 200 ms for two minutes, as in infra/sagemaker/endpoint.yaml."""
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}]
    common = {"Namespace": "AWS/SageMaker", "Dimensions": dimensions, "Period": 60, "TreatMissingData": "notBreaching"}
    cw.put_metric_alarm(
        AlarmName=names.errors_alarm, MetricName="Invocation5XXErrors", Statistic="Sum", EvaluationPeriods=1,
        Threshold=1.0, ComparisonOperator="GreaterThanOrEqualToThreshold", **common,
    )  # fmt: skip
    cw.put_metric_alarm(
        AlarmName=names.latency_alarm, MetricName="ModelLatency", ExtendedStatistic="p99", EvaluationPeriods=2,
        Threshold=200_000.0, ComparisonOperator="GreaterThanThreshold", **common,
    )  # fmt: skip


def deployment_config(names: Names) -> dict:
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": BAKE_SECONDS},
            "TerminationWaitInSeconds": 300,
            "MaximumExecutionTimeoutInSeconds": 3600,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": names.errors_alarm}, {"AlarmName": names.latency_alarm}]},
    }


def create_or_update(sm, endpoint: str, names: Names) -> str:
    from botocore.exceptions import ClientError

    try:
        current = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ValidationException" or "not find" not in exc.response["Error"]["Message"]:
            raise
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=names.config)
        return f"creating endpoint {endpoint}"
    if current["EndpointConfigName"] == names.config:
        return f"endpoint {endpoint} already serves {names.config}"
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=names.config, DeploymentConfig=deployment_config(names))
    return f"updating endpoint {endpoint}: {current['EndpointConfigName']} -> {names.config} (blue/green, auto-rollback)"


def wait_in_service(sm, endpoint: str, config: str, delay: int = 30, attempts: int = 120) -> str:
    """SageMaker's waiter (up to an hour). A rolled-back update also ends InService, on the old
    config: that is a failed deployment too, and says so."""
    from botocore.exceptions import WaiterError

    try:
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint, WaiterConfig={"Delay": delay, "MaxAttempts": attempts}
        )
    except WaiterError:
        described = sm.describe_endpoint(EndpointName=endpoint)
        reason = described.get("FailureReason") or "timed out"
        raise DeployError(f"endpoint {endpoint} is {described['EndpointStatus']}: {reason}") from None
    described = sm.describe_endpoint(EndpointName=endpoint)
    if described["EndpointConfigName"] != config:
        reason = described.get("FailureReason") or "a rollback alarm fired while the new fleet baked"
        raise DeployError(f"endpoint {endpoint} rolled back to {described['EndpointConfigName']}: {reason}")
    return f"endpoint {endpoint} is InService"


@contextmanager
def aws_errors() -> Iterator[None]:
    """AWS failures as one line: the operation, AWS's error code and message."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        yield
    except NoCredentialsError:
        raise DeployError("no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") from None
    except NoRegionError:
        raise DeployError("no AWS region: pass --region or set AWS_REGION") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise DeployError(f"{exc.operation_name}: {error.get('Code')}: {error.get('Message')}") from None
    except (BotoCoreError, S3UploadFailedError) as exc:
        raise DeployError(f"AWS: {exc}") from None
