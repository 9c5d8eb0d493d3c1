"""What the monitor does when the rule fires (``monitor.on_decay``).

``event``: a Prefect event, ``lstmops.monitor.decay``, about the resource ``lstmops.model.NAME``,
with the pipeline's folder in its payload; the ``retrain`` deployment in prefect.yaml has a trigger
on it, so the server starts a retrain of that pipeline. ``run_deployment``: start the deployment
directly (for a Prefect server whose triggers do not run). ``none``: report only.
"""

from __future__ import annotations

import os
from pathlib import Path

from lstmops.errors import LstmopsError, ServiceUnavailable

EVENT = "lstmops.monitor.decay"


def resource_id(model: str) -> str:
    return f"lstmops.model.{model}"


def pipeline_param(root: Path) -> str:
    """The pipeline as the retrain flow's ``root`` parameter: relative to the project root, where
    the deployment's worker runs."""
    from lstmops.paths import project_root

    return Path(os.path.relpath(root.resolve(), project_root(root))).as_posix()


def announce(on_decay: str, deployment: str, root: Path, model: str, version: int, reason: str) -> str:
    """Emit the event or start the deployment; the line that says which."""
    if on_decay == "none":
        return "decay: reported only (monitor.on_decay: none)"
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return f"decay: not announced: PREFECT_API_URL is not set (monitor.on_decay: {on_decay})"
    payload = {"root": pipeline_param(root), "model": model, "version": version, "reason": reason}
    try:
        if on_decay == "event":
            return f"decay: event {EVENT} sent (id {send_event(model, version, payload)})"
        from prefect.deployments import run_deployment

        run = run_deployment(deployment, parameters={"root": payload["root"]}, timeout=0)
        return f"decay: started {deployment} ({run.name})"
    except LstmopsError:
        raise
    except Exception as exc:  # the API refused or was unreachable: the next monitor run tries again
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable(f"Prefect API {PREFECT_API_URL.value()}: cannot announce the decay ({text})") from None


def send_event(model: str, version: int, payload: dict) -> str:
    """Send the event and wait until the server has it (a CLI process must not exit before)."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    event = Event(
        event=EVENT,
        resource={"prefect.resource.id": resource_id(model), "prefect.resource.name": model,
                  "lstmops.version": str(version)},  # fmt: skip
        payload=payload,
    )

    async def send() -> None:
        async with get_events_client(reconnection_attempts=2) as client:
            await client.emit(event)

    run_coro_as_sync(send())
    return str(event.id)
