# syntax=docker/dockerfile:1
# The lstmops training image: the whole pipeline (DVC, Great Expectations, PyTorch, MLflow, Prefect,
# Optuna) for Prefect's Kubernetes work pool (infra/prefect/) and for `lstmops` run by hand in a pod.
#
# Build context: the repository root (the root .dockerignore sends only pyproject.toml, README.md, src/):
#   docker build -f infra/docker/train.Dockerfile -t lstmops-train:0.1.0 .                          # CPU
#   docker build -f infra/docker/train.Dockerfile --build-arg TORCH_VARIANT=cu128 -t lstmops-train:0.1.0-cu128 .
# TORCH_VARIANT picks the PyTorch index and wheel: `cpu`, or a CUDA build the index has for
# TORCH_VERSION (cu126, cu128, ...). The CUDA wheels carry their CUDA libraries, so the same slim
# base serves both; a GPU node's NVIDIA device plugin mounts the driver.
#
# The image holds the tools, not the project: a Prefect flow run clones the project's repository at
# the deployed ref into its working directory (prefect.yaml's pull steps: git_clone, dvc pull), so
# a new commit needs no new image. Hence git, and a writable /work (an emptyDir in the job template).

# Pinned by exact tag (Python 3.11, Debian 12 slim), as the serving image; CI may pin the digest.
FROM python:3.11.14-slim-bookworm AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, from the PyTorch index of the chosen variant: installed from PyPI by the package's
# `torch>=2.4` it would be the default CUDA build, GBs even for a CPU image.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
       "torch==${TORCH_VERSION}+${TORCH_VARIANT}"
# The package with its dependencies, pinned in pyproject.toml; the torch above satisfies its range.
COPY pyproject.toml README.md /src/
COPY src/ /src/src/
RUN pip install --no-cache-dir /src

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="lstmops-train" \
      org.opencontainers.image.description="lstmops pipeline: ingest, validate, prepare, train (torchrun on several GPUs), evaluate, register, export, tune"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    GX_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1
# git: Prefect's git_clone pull step and DVC need it. Not pinned to a Debian revision: bookworm's
# security updates replace it, and a pinned revision that has left the archive breaks the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
# A numeric non-root user (the job template's runAsUser); /work is where a flow run clones the
# project, an emptyDir over this folder in Kubernetes (the root filesystem is read-only there).
RUN groupadd --system --gid 10001 lstmops \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin lstmops \
    && mkdir -p /work \
    && chown 10001:10001 /work
USER 10001
WORKDIR /work
# No HEALTHCHECK: a batch job, not a server; Kubernetes watches the pod's exit code.
# checkov:skip=CKV_DOCKER_2:a batch training job has no health endpoint; Kubernetes watches its exit code
# No ENTRYPOINT: Prefect's worker passes the whole command (`prefect flow-run execute`) as the
# container's args, and a pod run by hand passes `lstmops ...` or `torchrun ...`.
CMD ["lstmops", "--help"]
