"""How a model answers over HTTP: the SageMaker contract (``/ping``, ``/invocations``), Kubernetes
probes, Prometheus metrics, a loader that follows an MLflow alias, and dynamic batching.

Nothing heavy is imported here; ``lstmops serve`` imports torch, numpy, fastapi, uvicorn and
prometheus_client, and mlflow only when following a registry alias.
"""
