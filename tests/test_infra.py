"""infra/: the Kubernetes overlays, the Dockerfiles (serving, training), the Prefect work pool's Job
and the CloudFormation template pass the real offline checkers (kubectl kustomize, kubernetes-validate,
checkov, hadolint, cfn-lint), and the manifests agree with the server's CLI, settings and routes, so
infra cannot drift from the code."""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
TRAIN_DOCKERFILE = INFRA / "docker" / "train.Dockerfile"
TEMPLATE = INFRA / "sagemaker" / "endpoint.yaml"
JOB_TEMPLATE = INFRA / "prefect" / "kubernetes-job-template.json"
TRAIN_POLICY = INFRA / "prefect" / "networkpolicy.yaml"
OVERLAYS = ("dev", "prod")
KUBERNETES = "1.30.0"  # the oldest version the manifests must validate against (preStop sleep is 1.30+)
BIN = Path(sys.executable).parent


def tool(name: str, venv: str = ".venv") -> str:
    """A checker installed by `make setup` (checkov lives in .venv-tools/: it pins its own boto3)."""
    for candidate in (REPO / venv / "bin" / name, BIN / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make setup`")
    return found


# ---------------------------------------------------------------- rendering ----------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each overlay rendered by kustomize (kubectl's built-in), as one YAML file per overlay."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomize overlays cannot be rendered")
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for overlay in OVERLAYS:
        text = subprocess.run(
            ["kubectl", "kustomize", str(INFRA / "k8s" / "overlays" / overlay)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        files[overlay] = out / f"{overlay}.yaml"
        files[overlay].write_text(text)
    return files


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = [doc["kind"] for doc in docs]
    assert len(kinds) == len(set(kinds)), f"one object of each kind expected, got {kinds}"
    return {doc["kind"]: doc for doc in docs}


def serve_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# ---------------------------------------------------------------- Kubernetes ---------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly_against_kubernetes_1_30(rendered, overlay):
    import kubernetes_validate

    docs = documents(rendered[overlay])
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "PodDisruptionBudget"} <= by_kind(docs).keys()
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any unknown or wrong field


def test_strict_validation_catches_a_misspelt_field(rendered):
    """The check above can fail: kubernetes-validate --strict rejects what a typo produces."""
    import kubernetes_validate

    deployment = copy.deepcopy(by_kind(documents(rendered["prod"]))["Deployment"])
    serve_container(deployment)["readinesProbe"] = serve_container(deployment).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_locked_down(rendered, overlay):
    deployment = by_kind(documents(rendered[overlay]))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = serve_container(deployment)
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 10000
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The root filesystem is read-only: /tmp (MLflow downloads, HOME) is an emptyDir.
    tmp = next(mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp")
    assert "emptyDir" in next(volume for volume in pod["volumes"] if volume["name"] == tmp["name"])
    assert pod["automountServiceAccountToken"] is False
    assert by_kind(documents(rendered[overlay]))["ServiceAccount"]["automountServiceAccountToken"] is False
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][key].keys()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollout_never_drops_capacity_and_drains_before_sigkill(rendered, overlay):
    from lstmops.serve.settings import Settings

    deployment = by_kind(documents(rendered[overlay]))["Deployment"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = serve_container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    # SIGKILL comes terminationGracePeriodSeconds after the pod starts terminating (preStop included).
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + Settings().graceful_timeout


def test_manifest_matches_the_server_cli_settings_and_routes(rendered):
    from typer.main import get_command

    from lstmops.cli import app
    from lstmops.serve.app import ROUTES
    from lstmops.serve.loader import MODEL_URI
    from lstmops.serve.settings import Settings

    docs = by_kind(documents(rendered["prod"]))
    container = serve_container(docs["Deployment"])
    options = {opt for param in get_command(app).commands["serve"].params for opt in param.opts}
    assert container["command"] == ["lstmops"] and container["args"][0] == "serve"
    args = container["args"][1:]
    flags = args[::2]
    assert set(flags) <= options, f"options the server does not have: {set(flags) - options}"
    values = dict(zip(flags, args[1::2], strict=True))
    port = int(values["--port"])
    assert port == Settings().port == 8080
    (container_port,) = container["ports"]
    assert container_port["containerPort"] == port
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == container_port["name"]
    # $(MODEL_URI) is expanded by the kubelet from the ConfigMap the container reads.
    assert values["--model-uri"] == "$(MODEL_URI)"
    assert container["envFrom"] == [{"configMapRef": {"name": docs["ConfigMap"]["metadata"]["name"]}}]
    assert MODEL_URI.match(docs["ConfigMap"]["data"]["MODEL_URI"])
    assert docs["ConfigMap"]["data"]["MLFLOW_TRACKING_URI"].startswith("http")
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {name: probe["path"] for name, probe in probes.items()} == {
        "startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz",
    }  # fmt: skip
    assert {probe["path"] for probe in probes.values()} <= set(ROUTES)
    assert {probe["port"] for probe in probes.values()} == {container_port["name"]}


def test_dev_is_one_small_open_replica_and_prod_scales_behind_a_secret_token(rendered):
    from lstmops.serve.auth import TOKEN_ENV, TOKEN_FILE_ENV

    dev, prod = (by_kind(documents(rendered[overlay])) for overlay in OVERLAYS)
    dev_container, prod_container = serve_container(dev["Deployment"]), serve_container(prod["Deployment"])

    assert dev["Deployment"]["spec"]["replicas"] == 1 and "HorizontalPodAutoscaler" not in dev
    assert not {TOKEN_ENV, TOKEN_FILE_ENV} & {env["name"] for env in dev_container.get("env", [])}
    assert "replicas" not in prod["Deployment"]["spec"]  # the HPA owns the count
    hpa = prod["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == prod["Deployment"]["metadata"]["name"]
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert memory_gib(dev_container["resources"]["limits"]["memory"]) < memory_gib(
        prod_container["resources"]["limits"]["memory"]
    )

    # prod: the token is a file from a Secret the operator creates; no secret value is committed.
    token_file = Path(next(env["value"] for env in prod_container["env"] if env["name"] == TOKEN_FILE_ENV))
    mount = next(m for m in prod_container["volumeMounts"] if Path(m["mountPath"]) == token_file.parent)
    volume = next(v for v in prod["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "lstmops-auth"
    assert volume["secret"]["items"] == [{"key": "token", "path": token_file.name}]
    assert not any(doc["kind"] == "Secret" for overlay in OVERLAYS for doc in documents(rendered[overlay]))
    assert dev["Namespace"]["metadata"]["name"] != prod["Namespace"]["metadata"]["name"]
    for docs in (dev, prod):
        assert re.fullmatch(r"[\w.-]+/lstmops:\d+\.\d+\.\d+", serve_container(docs["Deployment"])["image"])


def memory_gib(quantity: str) -> float:
    units = {"Mi": 1 / 1024, "Gi": 1.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_prod_scales_on_the_queue_depth_the_server_exports_as_well_as_cpu(rendered):
    from lstmops.serve.metrics import Metrics

    hpa = by_kind(documents(rendered["prod"]))["HorizontalPodAutoscaler"]["spec"]
    by_type = {metric["type"]: metric for metric in hpa["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"  # still scales without a custom-metrics adapter
    queue = by_type["Pods"]["pods"]
    exported = {family.name for family in Metrics().registry.collect()}
    assert queue["metric"]["name"] in exported and queue["metric"]["name"] == "lstmops_inflight_requests"
    assert queue["target"]["type"] == "AverageValue" and float(queue["target"]["averageValue"]) > 0
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0  # shedding meanwhile: scale up at once
    pod = by_kind(documents(rendered["prod"]))["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert pod["prometheus.io/scrape"] == "true" and pod["prometheus.io/path"] == "/metrics"


def test_the_configmaps_limits_are_variables_the_server_reads_and_dev_waives_auth_explicitly(rendered):
    from lstmops import cli
    from lstmops.serve import settings as serve_settings
    from lstmops.serve.settings import INSECURE_ENV, Settings

    source = Path(serve_settings.__file__).read_text() + Path(cli.__file__).read_text()  # the CLI reads some
    for overlay in OVERLAYS:
        docs = by_kind(documents(rendered[overlay]))
        knobs = {k: v for k, v in docs["ConfigMap"]["data"].items() if k.startswith("LSTMOPS_")}
        assert knobs and all(f'"{name}"' in source for name in knobs), knobs
        defaults = Settings()  # written out as they are
        assert int(knobs["LSTMOPS_MAX_INFLIGHT"]) == defaults.max_inflight
        assert int(knobs["LSTMOPS_MAX_QUEUED_WINDOWS"]) == defaults.max_queued_windows
        assert int(knobs["LSTMOPS_MAX_BATCH"]) == defaults.max_batch
    dev, prod = (serve_container(by_kind(documents(rendered[o]))["Deployment"]) for o in OVERLAYS)
    assert {"name": INSECURE_ENV, "value": "1"} in dev["env"]
    assert INSECURE_ENV not in {env["name"] for env in prod.get("env", [])}


# ---------------------------------------------------------------- Dockerfile ---------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest))
            current = ""
    return lines


def test_dockerfile_is_hadolint_clean():
    result = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_serves_as_sagemaker_and_kubernetes_expect():
    from lstmops.serve.settings import Settings

    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (word, _) in enumerate(instructions) if word == "FROM") :]
    last = {word: rest for word, rest in final}
    # SageMaker runs `docker run IMAGE serve`: exec-form ENTRYPOINT, so `serve` reaches lstmops as PID 1.
    assert json.loads(last["ENTRYPOINT"]) == ["lstmops"] and json.loads(last["CMD"]) == ["serve"]
    assert last["EXPOSE"] == str(Settings().port)
    assert last["USER"] == "10001"  # numeric, so Kubernetes can verify runAsNonRoot; matches the manifests
    assert all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+( AS \w+)?", rest) for word, rest in instructions if word == "FROM")
    assert "torch==2.13.0+cpu" in DOCKERFILE.read_text() and "download.pytorch.org/whl/cpu" in DOCKERFILE.read_text()
    assert "--no-deps /src" in DOCKERFILE.read_text()  # the package without its training stack


# Reached only when LSTMOPS_SERVE_LOG is set (the served-traffic log, opt-in): the server checks
# for its packages first and refuses to start without them, in one line (test below).
OPT_IN = {"lstmops.monitor.store"}
OPT_IN_INSIDE = {"lstmops.monitor.served"}  # its functions import pandas only once the log is on


def test_the_opt_in_traffic_log_refuses_to_start_where_its_packages_are_missing(monkeypatch):
    import importlib.util

    import pytest

    from lstmops.errors import ConfigError
    from lstmops.monitor import served

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("pandas", "boto3") else real(name, *a))
    with pytest.raises(ConfigError) as refused:
        served.from_env({"LSTMOPS_SERVE_LOG": "s3://bucket/served"})
    assert str(refused.value).startswith("LSTMOPS_SERVE_LOG=s3://bucket/served: logging served traffic needs pandas, boto3")
    assert served.from_env({}) is None  # unset: off, and nothing is needed


def serve_imports() -> set[str]:
    """Top-level packages imported anywhere in the modules `lstmops serve` can reach: the CLI's
    module-level imports, then every lstmops module the serve package imports, transitively."""
    src = REPO / "src"
    seen, external = set(), set()
    queue = sorted(str(p.relative_to(src).with_suffix("")).replace("/", ".") for p in (src / "lstmops/serve").glob("*.py"))
    cli = ast.parse((src / "lstmops/cli.py").read_text())
    queue += [n.module for n in cli.body if isinstance(n, ast.ImportFrom) and n.module.startswith("lstmops")]
    external |= {alias.name.split(".")[0] for n in cli.body if isinstance(n, ast.Import) for alias in n.names}
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        path = src / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = src / module.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text())
        for node in (tree.body if module in OPT_IN_INSIDE else ast.walk(tree)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                if name in OPT_IN:
                    continue
                (queue.append(name) if name.startswith("lstmops") else external.add(name.split(".")[0]))
    return external - set(sys.stdlib_module_names) - {"__future__"}


def distribution_closure(requirements: list[str]) -> set[str]:
    """The installed distributions that pip would install for these requirements (with extras)."""
    from importlib.metadata import distribution
    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    closure, stack = set(), [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        if norm(req.name) in closure:
            continue
        closure.add(norm(req.name))
        for dep in distribution(req.name).requires or []:
            dep = Requirement(dep)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                stack.append(dep)
    return closure


def test_image_requirements_cover_every_package_the_server_imports():
    from importlib.metadata import packages_distributions

    lines = (INFRA / "docker" / "requirements.txt").read_text().splitlines()
    requirements = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert all("==" in r for r in requirements), "pin every requirement of the image"
    provided = distribution_closure([*requirements, "torch"])
    owners = packages_distributions()
    imported = serve_imports()
    assert {"torch", "numpy", "fastapi", "uvicorn"} <= imported  # the walk found the server
    missing = {pkg for pkg in imported if not any(re.sub(r"[-_.]+", "-", d).lower() in provided for d in owners[pkg])}
    assert not missing, f"the image lacks what the server imports: {sorted(missing)}"
    heavy = {"dvc", "prefect", "great-expectations", "pandas", "mlflow", "sqlalchemy"}
    assert not heavy & provided, f"the serving image would carry the training stack: {heavy & provided}"


# ---------------------------------------------------------------- training: image, work pool ----


def test_training_dockerfile_is_hadolint_clean():
    result = subprocess.run([tool("hadolint"), "--no-color", str(TRAIN_DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_training_image_has_the_whole_pipeline_and_torch_by_build_argument():
    import torch

    instructions = dockerfile_instructions(TRAIN_DOCKERFILE)
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG")
    assert args["TORCH_VARIANT"] == "cpu"  # CUDA builds by --build-arg TORCH_VARIANT=cu128 (or another)
    assert args["TORCH_VERSION"] == torch.__version__.split("+")[0]  # the torch the project is tested with
    text = TRAIN_DOCKERFILE.read_text()
    assert 'download.pytorch.org/whl/${TORCH_VARIANT}" \\\n       "torch==${TORCH_VERSION}+${TORCH_VARIANT}"' in text
    runs = [rest for word, rest in instructions if word == "RUN"]
    assert any(re.search(r"pip install --no-cache-dir /src$", run.strip()) for run in runs)  # with its dependencies
    assert any("git" in run.split() for run in runs)  # Prefect's git_clone pull step
    final = instructions[max(i for i, (word, _) in enumerate(instructions) if word == "FROM") :]
    last = {word: rest for word, rest in final}
    assert last["USER"] == "10001" and last["WORKDIR"] == "/work"
    # Prefect's worker passes `prefect flow-run execute` as the container's args: no ENTRYPOINT to prefix it.
    assert "ENTRYPOINT" not in last and json.loads(last["CMD"])[0] == "lstmops"


@pytest.fixture(scope="module")
def work_pool_job():
    """The Job that Prefect's Kubernetes worker would submit for a flow run, from the pool's base
    job template and a deployment's job variables: rendered by prefect-kubernetes' own code."""
    import asyncio
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    def render(values: dict, template: dict | None = None) -> dict:
        template = template or json.loads(JOB_TEMPLATE.read_text())
        # An API URL, as a worker has: otherwise preparing the run starts a temporary Prefect server.
        with temporary_settings({PREFECT_API_URL: "http://prefect-server.prefect.svc:4200/api"}):
            job = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
            job.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-fox", flow_id=uuid.uuid4()))
        return job.job_manifest

    return render


def prefect_default_template() -> dict:
    from prefect_kubernetes.worker import KubernetesWorker

    return KubernetesWorker.get_default_base_job_template()


@pytest.mark.parametrize("values", [{}, {"gpus": 4, "image": "registry.example.com/lstmops-train:0.1.0-cu128"}])
def test_work_pool_job_validates_strictly_and_gets_its_gpus_secrets_and_scratch_space(work_pool_job, values):
    import kubernetes_validate

    job = work_pool_job(values)
    kubernetes_validate.validate(job, KUBERNETES, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"].get("nvidia.com/gpu") == values.get("gpus")  # none unless asked
    assert re.fullmatch(r"[\w.-]+/lstmops-train:[\w.-]+", container["image"])
    assert container["envFrom"] == [{"secretRef": {"name": "lstmops-aws"}}, {"secretRef": {"name": "lstmops-mlflow"}}]
    assert not any(env.get("name", "").startswith(("AWS_", "MLFLOW_TRACKING_")) for env in container["env"])
    assert container["args"] == ["prefect", "flow-run", "execute"]  # the image has no ENTRYPOINT in the way
    # CPU request = limit: the quota training sizes its threads by.
    assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"] and context["capabilities"] == {"drop": ["ALL"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"  # NCCL between torchrun's processes
    assert "emptyDir" in mounts["/work"] and "emptyDir" in mounts["/tmp"] and container["workingDir"] == "/work"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"


def test_work_pool_template_keeps_prefects_variables_and_fixes_its_job(work_pool_job):
    """Every variable of prefect-kubernetes' default template is still there (job variables that
    work on a default pool work on this one); its Job fails strict validation (completions and
    parallelism in the pod spec), which is why the pool gets this template."""
    import kubernetes_validate

    ours, default = json.loads(JOB_TEMPLATE.read_text()), prefect_default_template()
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    with pytest.raises(kubernetes_validate.ValidationError, match="completions"):
        kubernetes_validate.validate(work_pool_job({"image": "prefecthq/prefect:3"}, default), KUBERNETES, strict=True)


def test_work_pool_pods_are_selected_by_the_ingress_network_policy(work_pool_job):
    import kubernetes_validate

    (policy,) = documents(TRAIN_POLICY)
    kubernetes_validate.validate(policy, KUBERNETES, strict=True)
    labels = work_pool_job({})["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in policy["spec"]  # nothing may connect in


# ---------------------------------------------------------------- checkov, cfn-lint --------------


@pytest.fixture(scope="module")
def checkov(rendered, work_pool_job, tmp_path_factory) -> dict[str, dict]:
    """One checkov run over the rendered overlays, the work pool's Job and network policy, both
    Dockerfiles and the template (offline)."""
    scan = tmp_path_factory.mktemp("checkov")
    for overlay, path in rendered.items():
        shutil.copy(path, scan / f"k8s-{overlay}.yaml")
    shutil.copy(DOCKERFILE, scan / "Dockerfile")
    shutil.copy(TRAIN_DOCKERFILE, scan / TRAIN_DOCKERFILE.name)
    (scan / "k8s-train-job.yaml").write_text(yaml.safe_dump(work_pool_job({"gpus": 2})))
    shutil.copy(TRAIN_POLICY, scan / "k8s-train-networkpolicy.yaml")
    shutil.copy(TEMPLATE, scan / TEMPLATE.name)
    result = subprocess.run(
        [tool("checkov", ".venv-tools"), "--skip-download", "--output", "json", "--directory", str(scan),
         "--framework", "kubernetes", "dockerfile", "cloudformation"],
        capture_output=True, text=True,
    )  # fmt: skip
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_framework = {report["check_type"]: report for report in reports}
    assert result.returncode == (1 if any(r["summary"]["failed"] for r in reports) else 0), result.stderr[-2000:]
    return by_framework


@pytest.mark.integration
@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile", "cloudformation"])
def test_checkov_passes_with_every_skip_justified(checkov, framework):
    report = checkov[framework]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in report["results"]["failed_checks"]]
    assert not failed, failed
    assert report["summary"]["passed"] > 0  # it did scan the files
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) > 20, f"{check['check_id']} skipped without a reason"


@pytest.mark.integration
def test_template_is_cfn_lint_clean():
    result = subprocess.run([tool("cfn-lint"), str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
