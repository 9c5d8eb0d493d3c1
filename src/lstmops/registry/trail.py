"""Alias moves that are serialized, recorded and reversible, kept in the MLflow backend itself.

MLflow's ``set_registered_model_alias`` is an unconditional upsert with no history (mlflow
issues 2169, 6180). Every move of ``champion`` made by lstmops therefore:

1. takes a lock that the MLflow backend enforces: a registered model named ``NAME-promotion-lock``.
   Creating a registered model whose name exists fails on the database's unique key, on any
   backend (sqlite, PostgreSQL, a tracking server), so two promotions cannot interleave;
2. re-reads the champion under the lock (compare-and-set: a gate that scored against version 3
   refuses if someone else moved the champion meanwhile);
3. moves the alias and appends an audit record, a registered-model tag ``audit.000001`` (JSON:
   when, who, from, to, kind, why). Tags survive a new machine and show on the model's page in
   the MLflow UI;
4. releases the lock.

Rollback replays the trail as a stack (a promotion pushes, a rollback pops), so it returns to
the champion before the current one, whatever its version number.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from lstmops.errors import LstmopsError

CHAMPION = "champion"
CHALLENGER = "challenger"
AUDIT_PREFIX = "audit."
LOCK_SUFFIX = "-promotion-lock"
LOCK_WAIT_S = 60.0
LOCK_STALE_S = 300.0  # a promotion holds the lock for well under a second; older means its holder died


@dataclass(frozen=True)
class Move:
    """One audit record: the champion alias went from ``from_version`` to ``to_version``."""

    seq: int
    time: str
    actor: str
    kind: str  # gate | promote | rollback
    from_version: int | None
    to_version: int
    reason: str

    def tag(self) -> tuple[str, str]:
        return f"{AUDIT_PREFIX}{self.seq:06d}", json.dumps(asdict(self), sort_keys=True)


class PromotionConflict(LstmopsError):
    """The champion moved between the decision and the move (compare-and-set failed)."""


def actor() -> str:
    """Who moved the alias: LSTMOPS_ACTOR (e.g. set by CI or a Prefect deployment), else user@host."""
    return os.environ.get("LSTMOPS_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def champion_version(client, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def history(client, name: str) -> list[Move]:
    """Every recorded move of the champion alias, oldest first."""
    tags = client.get_registered_model(name).tags
    moves = [json.loads(value) for key, value in tags.items() if key.startswith(AUDIT_PREFIX)]
    return sorted((Move(**m) for m in moves), key=lambda m: m.seq)


class _Lock:
    """A mutex enforced by the registry's unique names (see the module docstring)."""

    def __init__(self, client, name: str, wait_s: float = LOCK_WAIT_S) -> None:
        self.client, self.name, self.wait_s = client, name + LOCK_SUFFIX, wait_s

    def __enter__(self) -> _Lock:
        from mlflow.exceptions import MlflowException

        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                self.client.create_registered_model(
                    self.name, tags={"holder": actor(), "since": str(time.time())},
                    description="Held by lstmops while it moves the champion alias; deleted when done.",
                )  # fmt: skip
                return self
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            self._break_if_stale()
            if time.monotonic() > deadline:
                raise LstmopsError(f"{self.name}: another promotion holds the lock for over {self.wait_s:.0f} s")
            time.sleep(0.1)

    def _break_if_stale(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            since = float(self.client.get_registered_model(self.name).tags.get("since", "0"))
            if time.time() - since > LOCK_STALE_S:
                self.client.delete_registered_model(self.name)
        except MlflowException:
            pass  # released meanwhile

    def __exit__(self, *exc: Any) -> None:
        self.client.delete_registered_model(self.name)


def move_champion(
    client, name: str, to_version: int, kind: str, reason: str, expect_from: int | None | str = "any"
) -> Move:
    """Point ``champion`` at ``to_version`` and record it, under the lock.

    ``expect_from`` makes it a compare-and-set: the move happens only if the champion is still
    that version (None: there is no champion yet).
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(to_version))
    except MlflowException:
        raise LstmopsError(f"{name} has no version {to_version}") from None
    with _Lock(client, name):
        current = champion_version(client, name)
        if expect_from != "any" and current != expect_from:
            raise PromotionConflict(
                f"{name}: champion moved from version {expect_from} to {current} while the gate ran; not promoted"
            )
        trail = history(client, name)
        # Tests widen the read-then-write window here to prove the lock serializes promotions.
        time.sleep(float(os.environ.get("LSTMOPS_TEST_PROMOTION_DELAY_S", "0")))
        move = Move(
            seq=(trail[-1].seq if trail else 0) + 1, time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            actor=actor(), kind=kind, from_version=current, to_version=int(to_version), reason=reason,
        )  # fmt: skip
        client.set_registered_model_alias(name, CHAMPION, str(to_version))
        client.set_registered_model_tag(name, *move.tag())
        client.set_model_version_tag(name, str(to_version), "promoted", f"{move.time} by {move.actor} ({kind})")
    return move


def rollback_target(trail: list[Move], current: int | None) -> int:
    """The champion before the current one: replay the trail as a stack and look one below the top."""
    stack: list[int] = []
    for move in trail:
        if move.kind == "rollback":
            stack.pop()
        else:
            stack.append(move.to_version)
    if not stack or stack[-1] != current:
        raise LstmopsError(
            f"the champion (version {current}) is not the last one lstmops recorded "
            f"({stack[-1] if stack else 'none'}); it was moved outside lstmops: use `lstmops promote VERSION`"
        )
    if len(stack) < 2:
        raise LstmopsError(f"version {current} is the first recorded champion: there is nothing to roll back to")
    return stack[-2]


def rollback(client, name: str, reason: str) -> Move:
    """Move the champion back to the previous champion, following the audit trail."""
    current = champion_version(client, name)
    target = rollback_target(history(client, name), current)
    return move_champion(client, name, target, "rollback", reason, expect_from=current)
