"""The promotion lease, against a real MLflow server: one holder at a time, a live holder is
never broken, a dead one is broken after one lease by the backend's clock, only the owner
releases, and a holder that was taken over stops acting. Leases here last 2 s."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from lstmops.errors import LstmopsError
from lstmops.registry.trail import LEASE_INFIX, Lease

pytestmark = pytest.mark.integration
LEASE_S = 2.0


@pytest.fixture
def registry(mlflow_server):
    """A client and a fresh model name (a lease needs no registered model of that name)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server), f"lease-{uuid.uuid4().hex[:8]}"


def leases(client, name: str) -> dict[str, dict[str, str]]:
    """The lease models left in the registry, by name, with their tags."""
    prefix = name + LEASE_INFIX
    return {m.name: m.tags for m in client.search_registered_models(f"name LIKE '{prefix}%'")}


def test_one_holder_at_a_time_and_a_release_frees_it(registry):
    client, name = registry
    first, second = Lease(client, name, LEASE_S), Lease(client, name, LEASE_S)
    assert first.acquire(wait=False)
    assert not second.acquire(wait=False)
    first.release()
    assert second.acquire(wait=False)
    second.release()
    # One lease model remains, the newest generation, released: it is the counter the next claim builds on.
    (only, tags), = leases(client, name).items()
    assert only == f"{name}{LEASE_INFIX}000002"
    assert tags["token"] == second.token and tags["released"] == "true" and tags["lease_s"] == "2"


def test_a_live_holder_is_never_broken_however_long_it_holds(registry):
    client, name = registry
    holder = Lease(client, name, LEASE_S)
    holder.acquire()
    released_at: list[float] = []

    def hold_then_release() -> None:
        time.sleep(2.5 * LEASE_S)  # longer than a lease: only the refreshes keep it
        holder.check()  # still certainly ours
        released_at.append(time.monotonic())
        holder.release()

    worker = threading.Thread(target=hold_then_release)
    worker.start()
    waiter = Lease(client, name, LEASE_S, wait_s=10 * LEASE_S)
    assert waiter.acquire()
    acquired_at = time.monotonic()
    worker.join()
    waiter.release()
    assert released_at and acquired_at >= released_at[0]


def test_a_dead_holders_lease_is_broken_after_one_lease_by_the_backends_clock(registry):
    client, name = registry
    dead = client.create_registered_model(
        f"{name}{LEASE_INFIX}000001", tags={"token": "dead", "holder": "ghost@elsewhere", "lease_s": f"{LEASE_S:g}"}
    )  # a holder that took the lease and was killed: no refresh ever comes
    waiter = Lease(client, name, LEASE_S, wait_s=0.1)
    assert waiter.wait_s >= LEASE_S  # waits at least as long as a lease can live, whatever it was asked
    assert waiter.acquire()
    broke_at = client.get_registered_model(name + "-promotion-clock").last_updated_timestamp
    assert broke_at - dead.last_updated_timestamp > LEASE_S * 1000  # judged on the backend's stamps
    assert waiter.generation == 2 and list(leases(client, name)) == [f"{name}{LEASE_INFIX}000002"]
    waiter.release()


def test_wall_clocks_do_not_decide_staleness(registry, monkeypatch):
    client, name = registry
    holder = Lease(client, name, LEASE_S)
    holder.acquire()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this machine's clock is an hour ahead
    assert not Lease(client, name, LEASE_S).acquire(wait=False)
    monkeypatch.undo()
    holder.release()


def test_only_the_owner_releases(registry):
    client, name = registry
    owner = Lease(client, name, LEASE_S)
    owner.acquire()
    impostor = Lease(client, name, LEASE_S)
    impostor.generation = owner.generation  # believes it holds the same generation, with another token
    impostor.release()
    assert not Lease(client, name, LEASE_S).acquire(wait=False)
    owner.check()
    owner.release()
    after = Lease(client, name, LEASE_S)
    assert after.acquire(wait=False)
    after.release()


def test_a_holder_that_stopped_refreshing_stops_acting_and_cannot_release_its_successors_lease(registry, monkeypatch):
    client, name = registry
    frozen = Lease(client, name, LEASE_S)
    frozen.acquire()
    monkeypatch.setattr(frozen, "refresh", lambda: None)  # its refreshes stop (a paused VM, a lost network)
    time.sleep(0.7 * LEASE_S)
    with pytest.raises(LstmopsError, match="lost the promotion lease .not refreshed"):
        frozen.check()
    successor = Lease(client, name, LEASE_S)
    assert successor.acquire()  # once it is stale by the backend's clock
    monkeypatch.undo()
    Lease.refresh(frozen)  # it wakes up: its lease is gone
    with pytest.raises(LstmopsError, match="lost the promotion lease .it was taken over"):
        frozen.check()
    frozen.release()
    assert not Lease(client, name, LEASE_S).acquire(wait=False)  # the successor still holds it
    assert leases(client, name)[f"{name}{LEASE_INFIX}000002"].get("released") is None
    successor.check()
    successor.release()


def test_a_waiter_gives_up_in_one_line_only_on_a_holder_that_stays_alive(registry):
    client, name = registry
    holder = Lease(client, name, LEASE_S)
    holder.acquire()
    started = time.monotonic()
    with pytest.raises(LstmopsError, match=r"held by .* for over \d+ s") as refused:
        Lease(client, name, LEASE_S, wait_s=LEASE_S).acquire()
    assert time.monotonic() - started >= LEASE_S and "\n" not in str(refused.value)
    holder.check()  # the waiter broke nothing
    holder.release()
