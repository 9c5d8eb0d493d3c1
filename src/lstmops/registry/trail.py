"""Champion moves that cannot race, are recorded before they happen, and can be undone.

MLflow's ``set_registered_model_alias`` is an unconditional upsert with no history (mlflow
issues 2169, 6180) and the registry has no compare-and-set. lstmops builds both from the one
atomic operation every MLflow backend has: **creating a registered model whose name already
exists fails** (the name is the table's primary key, on sqlite and PostgreSQL alike, and a
tracking server passes the database's answer on as ``RESOURCE_ALREADY_EXISTS``). Tags, by
contrast, are upserts: "write a token, wait, re-read, lowest wins" only narrows a race, so no
part of the mutual exclusion below rests on a tag write.

**The lease.** Leases are registered models named ``NAME-promotion-lease-000001``,
``-000002``, ... (generations). To take the lease a process creates generation g+1 where g is
the newest one, and only when g is released or stale: of all processes that saw the same g,
the database lets exactly one create g+1. The winner then deletes the older generations, so
the newest generation never goes away and the counter never restarts (a process that created a
generation below the newest, from a slow read, finds the newer one and gives its own back).
The lease carries an owner token (a fresh uuid per holder); the holder refreshes it from a
background thread every quarter of its lifetime (``update_registered_model``, which the backend
stamps with *its* clock as ``last_updated_timestamp``), and releases it only if the token on
it is still its own, by marking it released, never by deleting what another process might hold.

**Whose clock.** A lease is stale when ``backend now - last refresh > lease_s``, both read from
the backend: "now" is the ``last_updated_timestamp`` the backend writes when a waiter touches
a second registered model, ``NAME-promotion-clock`` (a tracking server exposes no clock of its
own), read *before* the lease so that the age can only be underestimated. Neither the holder's
nor the waiter's wall clock enters the decision, so skew between machines cannot break a live
lease. Behind a tracking server the backend clock is the server's; with a ``sqlite:///`` URI
used directly it is the local machine's.

**Who waits how long.** A waiter gives up only when one holder has kept the lease, refreshing
it, for longer than the waiter's ``wait_s`` and than the holder's own ``lease_s`` (written on the
lease) plus two polls, so a dead holder delays the next promotion by at most one lease and
never fails it, and a queue of promotions proceeds in turn. The holder in turn
stops acting (``Lease.check``) once its last confirmed refresh is older than 60 % of the lease,
so it gives up before any waiter may judge it stale. Without fencing in the store itself a
holder frozen *between* that check and its write (a paused VM) could still write late; the
window is one API call, and the trail shows it (two records with overlapping leases).

**The record comes first.** Under the lease a move writes its record as an ``intent``
(registered-model tag ``audit.000042``, JSON: when, who, kind, from, to, why, lease token),
moves the alias, then rewrites the record as ``committed``. A process that dies in between
leaves an intent whose lease is no longer live; the next read that can take the lease
(``history``, ``move_champion``, ``rollback``) reconciles it from where the alias is: moved
(``committed``) or not (``aborted``), marked ``reconciled``. If the alias points somewhere the
trail does not say (a move made in the MLflow UI or API), the same read records an ``external``
move from the last recorded champion to the alias, so nothing moves unrecorded for long.

**Rollback follows from_version.** Each move that is not a rollback pushes itself onto a stack
and each rollback pops one: rollback returns to the ``from_version`` of the move on top, so
after gate->1, gate->2, a hand move to 5 (recorded as external) and ``promote 6``, rollback
goes to 5, then 2, then 1.

**Malformed records** (not JSON, missing fields, wrong types) are reported on stderr (a logging
warning each) and skipped; their sequence numbers are still never reused.

**A bounded trail.** At most ``LSTMOPS_AUDIT_KEEP`` records (default 100) stay on the model.
Past that, the oldest are written to a JSON Lines artifact of a run in the MLflow experiment
``lstmops-audit`` (tagged ``lstmops.audit.model=NAME``) and only then deleted from the model,
down to half the limit: the history is kept, in the same backend, and the registered model's
tags stay small. Rollback can only follow the records still on the model.

Lifetimes come from ``LSTMOPS_LEASE_S`` (default 30 s) and ``LSTMOPS_LEASE_WAIT_S`` (default
twice the lease, never less than one lease).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any

from lstmops.errors import LstmopsError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
AUDIT_PREFIX = "audit."
LEASE_INFIX = "-promotion-lease-"
CLOCK_SUFFIX = "-promotion-clock"
ARCHIVE_EXPERIMENT = "lstmops-audit"
ARCHIVE_MODEL_TAG = "lstmops.audit.model"
CLOCK_DESCRIPTION = "lstmops reads the registry's clock here (touched by waiters for the promotion lease)"
LEASE_S = 30.0  # a move holds the lease for well under a second; a dead holder costs one lease
AUDIT_KEEP = 100

KINDS = ("gate", "promote", "rollback", "external")
STATES = ("intent", "committed", "aborted")


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """One audit record: the champion alias went (or was about to go) from ``from_version`` to
    ``to_version``. Records written before the lease existed have only the first seven fields."""

    seq: int
    time: str
    actor: str
    kind: str  # gate | promote | rollback | external
    from_version: int | None
    to_version: int
    reason: str
    state: str = "committed"  # intent: written, alias not yet confirmed moved | committed | aborted
    lease: str = ""  # the owner token of the lease it was made under ("" for external moves)
    settled: str = ""  # when it was committed or aborted
    reconciled: bool = False  # settled by a later read, not by the process that wrote the intent

    def tag(self) -> tuple[str, str]:
        return record_key(self.seq), json.dumps(asdict(self), sort_keys=True)


def record_key(seq: int) -> str:
    return f"{AUDIT_PREFIX}{seq:06d}"


def record_seq(key: str) -> int | None:
    """The sequence number of an ``audit.NNNNNN`` key, or None for any other key."""
    tail = key[len(AUDIT_PREFIX) :] if key.startswith(AUDIT_PREFIX) else ""
    return int(tail) if tail.isdigit() else None


_TYPES: dict[str, tuple[type, ...]] = {
    "seq": (int,), "time": (str,), "actor": (str,), "kind": (str,), "from_version": (int, type(None)),
    "to_version": (int,), "reason": (str,), "state": (str,), "lease": (str,), "settled": (str,), "reconciled": (bool,),
}  # fmt: skip
_REQUIRED = [f.name for f in fields(Move)][:7]  # what records written before the lease already had


def parse_record(seq: int, value: str) -> Move:
    """A record from its tag value; ValueError says what is wrong with it."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    known = {k: v for k, v in data.items() if k in _TYPES}  # newer writers may add fields
    for key, value_ in known.items():
        # bool is an int to isinstance: a version of `true` must not pass as version 1.
        if (isinstance(value_, bool) and bool not in _TYPES[key]) or not isinstance(value_, _TYPES[key]):
            raise ValueError(f"{key} is {value_!r}")
    move = Move(**known)
    if move.seq != seq:
        raise ValueError(f"it says seq {move.seq}")
    if move.kind not in KINDS or move.state not in STATES:
        raise ValueError(f"unknown kind {move.kind!r} or state {move.state!r}")
    return move


@dataclass(frozen=True)
class Trail:
    """The records on a registered model: the readable ones by seq, and what was wrong with the others."""

    moves: list[Move]
    problems: list[str] = field(default_factory=list)
    last_seq: int = 0  # the highest seq of any audit.* key, readable or not: never reused


def parse_trail(name: str, tags: dict[str, str]) -> Trail:
    moves, problems, last = [], [], 0
    for key in sorted(tags):
        seq = record_seq(key)
        if seq is None:
            if key.startswith(AUDIT_PREFIX):
                problems.append(f"{name}: tag {key} is not an audit record (audit.NNNNNN); ignored")
            continue
        last = max(last, seq)
        try:
            moves.append(parse_record(seq, tags[key]))
        except ValueError as exc:
            problems.append(f"{name}: audit record {key} is malformed ({exc}); skipped")
    return Trail(sorted(moves, key=lambda m: m.seq), problems, last)


def read_trail(client, name: str) -> Trail:
    """The model's records; each malformed one is reported (a warning) and skipped, never fatal."""
    trail = parse_trail(name, registered_model(client, name).tags)
    for problem in trail.problems:
        log.warning("warning: %s", problem)
    return trail


# --- what the trail means ----------------------------------------------------------------------


def reconciliation(moves: list[Move], champion: int | None, next_seq: int, when: str, by: str) -> list[Move]:
    """The records to write so that the trail agrees with the alias, assuming no move is in flight
    (the caller holds the lease): each intent settled by where the alias went next, then an
    ``external`` move if the alias is not where the last committed record left it."""
    fixes: list[Move] = []
    settled: list[Move] = []
    for i, move in enumerate(moves):
        if move.state == "intent":
            # Where the alias was next: the from of the next record (read under the lease), or now.
            after = moves[i + 1].from_version if i + 1 < len(moves) else champion
            move = replace(move, state="committed" if after == move.to_version else "aborted",
                           settled=when, reconciled=True)  # fmt: skip
            fixes.append(move)
        settled.append(move)
    recorded = next((m.to_version for m in reversed(settled) if m.state == "committed"), None)
    if champion is not None and champion != recorded:
        fixes.append(Move(
            seq=next_seq, time=when, actor="unknown", kind="external", from_version=recorded,
            to_version=champion, reason=f"the alias was moved outside lstmops; found by {by}", settled=when,
        ))  # fmt: skip
    return fixes


def rollback_target(trail: list[Move], current: int | None) -> int:
    """Where rollback goes: the ``from_version`` of the move that made the current champion.

    Committed moves that are not rollbacks push onto a stack and rollbacks pop, so repeated
    rollbacks keep going back. A champion the trail does not know of (an unrecorded external
    move) is rolled back to the last recorded one.
    """
    stack: list[Move] = []
    for move in trail:
        if move.state != "committed":
            continue
        if move.kind == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(move)
    if stack and stack[-1].to_version != current:
        return stack[-1].to_version
    if not stack or stack[-1].from_version is None:
        raise LstmopsError(
            f"version {current} is the first recorded champion: there is nothing to roll back to "
            "(use `lstmops promote VERSION`)"
        )
    return stack[-1].from_version


# --- the lease ---------------------------------------------------------------------------------


def _env_float(key: str, default: float) -> float:
    raw = os.environ.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LstmopsError(f"{key}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise LstmopsError(f"{key}={raw!r} must be positive")
    return value


def _error_code(exc: Exception) -> str:
    return getattr(exc, "error_code", "")


class Lease:
    """Exclusive right to move one registered model's champion (see the module docstring).

    ``with Lease(client, name):`` waits, holds and refreshes, then releases. ``acquire(wait=False)``
    only tries once (a stale lease counts as free).
    """

    def __init__(self, client, name: str, lease_s: float | None = None, wait_s: float | None = None) -> None:
        self.client, self.name = client, name
        self.lease_s = lease_s if lease_s is not None else _env_float("LSTMOPS_LEASE_S", LEASE_S)
        self.poll_s = min(1.0, self.lease_s / 10)
        wanted = wait_s if wait_s is not None else _env_float("LSTMOPS_LEASE_WAIT_S", 2 * self.lease_s)
        self.wait_s = max(wanted, self.lease_s + 2 * self.poll_s)  # never give up before a lease can expire
        self.token = uuid.uuid4().hex
        self.generation: int | None = None
        self._fresh_at = 0.0  # monotonic time a confirmed refresh was sent
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # names
    def _lease_name(self, generation: int) -> str:
        return f"{self.name}{LEASE_INFIX}{generation:06d}"

    def _clock_name(self) -> str:
        return self.name + CLOCK_SUFFIX

    def _generations(self) -> list[tuple[int, Any]]:
        """Existing lease generations, oldest first, as (generation, registered model)."""
        prefix = self.name + LEASE_INFIX
        # The filter may match more than the prefix (LIKE's _ and %, a name cut at a quote that
        # would end the filter's string); the exact prefix is checked below.
        pattern = prefix.split("'")[0]
        found = self.client.search_registered_models(filter_string=f"name LIKE '{pattern}%'", max_results=1000)
        tails = [(m.name[len(prefix) :], m) for m in found if m.name.startswith(prefix)]
        return sorted(((int(tail), m) for tail, m in tails if tail.isdigit()), key=lambda pair: pair[0])

    # the backend's clock
    def backend_now_ms(self) -> int:
        """The backend's current time: the stamp it writes when the clock model is touched."""
        from mlflow.exceptions import MlflowException

        for _ in range(3):
            try:
                touched = self.client.update_registered_model(self._clock_name(), description=CLOCK_DESCRIPTION)
                return int(touched.last_updated_timestamp)
            except MlflowException as exc:
                if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
            try:
                self.client.create_registered_model(self._clock_name())
            except MlflowException as exc:
                if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
        raise LstmopsError(f"{self._clock_name()}: cannot read the registry's clock")

    # acquiring
    def acquire(self, wait: bool = True) -> bool:
        """Take the lease; True once held. Without ``wait``, return False if it is held. With it,
        wait while the lease changes hands (a queue of promotions proceeds in turn) and fail in
        one line only when one holder has kept it, refreshed, for longer than ``wait_s`` and than
        its own lease."""
        seen: tuple[int, int] | None = None  # (generation, refresh stamp) at the last look
        holder_since = (0, time.monotonic())  # (generation, when this waiter first saw it held)
        while True:
            leases = self._generations()
            top = leases[-1] if leases else None
            if top is None or self._free(top, seen):
                if self._claim(top[0] + 1 if top else 1):
                    return True
                continue  # someone else won that generation: look again at once
            if not wait:
                return False
            if holder_since[0] != top[0]:
                holder_since = (top[0], time.monotonic())
            holder_s = float(top[1].tags.get("lease_s", self.lease_s))
            held = time.monotonic() - holder_since[1]
            if held > max(self.wait_s, holder_s + 2 * self.poll_s):
                holder = top[1].tags.get("holder", "another process")
                raise LstmopsError(
                    f"{self.name}: the promotion lease has been held by {holder} for over {held:.0f} s "
                    f"(refreshed every few seconds, so it is alive); try again later"
                )
            seen = (top[0], int(top[1].last_updated_timestamp))
            time.sleep(self.poll_s)

    def _free(self, top: tuple[int, Any], seen: tuple[int, int] | None) -> bool:
        """Released, or stale by the backend's clock. A lease refreshed since the last look is
        alive without asking the clock (saves a write per poll)."""
        from mlflow.exceptions import MlflowException

        generation, model = top
        if model.tags.get("released") == "true":
            return True
        if seen is not None and seen != (generation, int(model.last_updated_timestamp)):
            return False
        now = self.backend_now_ms()  # read before the lease, so the age is never overestimated
        try:
            model = self.client.get_registered_model(model.name)
        except MlflowException:
            return False  # gone meanwhile: look again
        if model.tags.get("released") == "true":
            return True
        limit_s = max(self.lease_s, float(model.tags.get("lease_s", self.lease_s)))
        return now - int(model.last_updated_timestamp) > limit_s * 1000

    def _claim(self, generation: int) -> bool:
        from mlflow.exceptions import MlflowException

        sent = time.monotonic()
        try:
            self.client.create_registered_model(
                self._lease_name(generation),
                tags={"token": self.token, "holder": actor(), "lease_s": f"{self.lease_s:g}"},
                description=f"lstmops promotion lease of {self.name}: held while the champion alias moves.",
            )  # fmt: skip
        except MlflowException as exc:
            if _error_code(exc) == "RESOURCE_ALREADY_EXISTS":
                return False
            raise
        leases = self._generations()
        if leases and leases[-1][0] != generation:
            # Claimed from a stale read below the newest generation: not the lease; give it back.
            self._delete(self._lease_name(generation))
            return False
        self.generation, self._fresh_at, self._lost = generation, sent, None
        for older, model in leases[:-1]:
            self._delete(model.name)
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {self.name}", daemon=True)
        self._thread.start()
        return True

    def _delete(self, lease_name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model(lease_name)
        except MlflowException:
            pass  # already gone: someone newer cleaned it up

    # holding
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001  a failed refresh must not kill the thread; check() decides
                log.debug("lease refresh failed: %s", exc)
            if self._lost:
                return

    def refresh(self) -> None:
        """Prove the lease is still ours (our token, nothing newer), then push its expiry out."""
        from mlflow.exceptions import MlflowException

        assert self.generation is not None
        mine = self._lease_name(self.generation)
        sent = time.monotonic()
        try:
            model = self.client.get_registered_model(mine)
        except MlflowException as exc:
            if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
            self._lost = "it was taken over as stale"  # and cleaned up by the new holder
            return
        newest = self._generations()
        ours = model.tags.get("token") == self.token and model.tags.get("released") != "true"
        if not ours or newest[-1][0] != self.generation:
            self._lost = "it was taken over as stale"
            return
        self.client.update_registered_model(mine, description=f"lstmops promotion lease of {self.name} ({actor()})")
        self._fresh_at = sent

    def check(self) -> None:
        """Raise unless the lease is certainly still ours: stop acting well before a waiter could
        judge it stale (60 % of the lease since the last confirmed refresh was sent)."""
        if self.generation is None:
            raise LstmopsError(f"{self.name}: the promotion lease is not held")
        if self._lost:
            raise LstmopsError(f"{self.name}: lost the promotion lease ({self._lost})")
        quiet = time.monotonic() - self._fresh_at
        if quiet > 0.6 * self.lease_s:
            raise LstmopsError(
                f"{self.name}: lost the promotion lease (not refreshed for {quiet:.1f} s of {self.lease_s:g})"
            )

    def release(self) -> None:
        """Mark the lease released, if it is still ours; never touch another holder's lease."""
        from mlflow.exceptions import MlflowException

        self._stop.set()
        if self._thread is not None:
            # A refresh stuck in the client's HTTP retries must not hold up the exit; it can only
            # touch our own lease, and a released or stale lease is free to the next claim anyway.
            self._thread.join(timeout=self.lease_s)
        if self.generation is None:
            return
        mine, self.generation = self._lease_name(self.generation), None
        try:
            if self.client.get_registered_model(mine).tags.get("token") == self.token:
                self.client.set_registered_model_tag(mine, "released", "true")
        except MlflowException:
            pass  # taken over and cleaned up: nothing of ours is left to release

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --- reading and moving ------------------------------------------------------------------------


class PromotionConflict(LstmopsError):
    """The champion moved between the decision and the move (compare-and-set failed)."""


def actor() -> str:
    """Who moved the alias: LSTMOPS_ACTOR (e.g. set by CI or a Prefect deployment), else user@host."""
    return os.environ.get("LSTMOPS_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise LstmopsError(f"no registered model named {name}") from None
        raise


def champion_version(client, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def settle(client, name: str, lease: Lease, warn: bool = True) -> Trail:
    """Under the lease: write the reconciliation (settled intents, an external move) and return
    the trail as it now stands. ``warn``: report malformed records (False if the caller has)."""
    trail = read_trail(client, name) if warn else parse_trail(name, registered_model(client, name).tags)
    fixes = reconciliation(trail.moves, champion_version(client, name), trail.last_seq + 1, now_iso(), actor())
    for move in fixes:
        lease.check()
        client.set_registered_model_tag(name, *move.tag())
        log.warning("warning: %s: recorded %s", name, describe(move))
    if not fixes:
        return trail
    return parse_trail(name, registered_model(client, name).tags)


def describe(move: Move) -> str:
    if move.kind == "external":
        return f"an external move of {CHAMPION}: version {move.from_version} -> {move.to_version} (record {move.seq})"
    return f"record {move.seq} ({move.kind} to version {move.to_version}) as {move.state}, reconciled"


def history(client, name: str) -> list[Move]:
    """Every recorded move of the champion alias, oldest first, reconciled with the alias.

    If the trail disagrees with the alias and no promotion is in flight, the reconciliation is
    written (this read takes the lease for it, without waiting); while one is in flight its
    intent shows as such.
    """
    from mlflow.exceptions import MlflowException

    trail = read_trail(client, name)
    if not reconciliation(trail.moves, champion_version(client, name), trail.last_seq + 1, "", ""):
        return trail.moves
    lease = Lease(client, name)
    try:
        if not lease.acquire(wait=False):
            return trail.moves
        try:
            return settle(client, name, lease, warn=False).moves
        finally:
            lease.release()
    except MlflowException as exc:  # e.g. a reader without write permission: show what is there
        log.warning("warning: %s: could not record the reconciliation (%s)", name, exc.message)
        return trail.moves


def _test_hooks(point: str) -> None:
    """Test-only pauses that widen a window to prove what happens inside it."""
    if point == "decided":
        time.sleep(float(os.environ.get("LSTMOPS_TEST_PROMOTION_DELAY_S", "0")))
    elif os.environ.get("LSTMOPS_TEST_PAUSE_AFTER") == point:
        time.sleep(120)  # the test kills the process here


def _require_version(client, name: str, version: int) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise LstmopsError(f"{name} has no version {version}") from None


def _move(
    client, name: str, lease: Lease, trail: Trail, to_version: int, kind: str, reason: str, current: int | None
) -> Move:
    """Intent, alias, commit: the record exists before the alias moves."""
    keep = _keep()  # a bad setting fails before anything moves
    intent = Move(
        seq=trail.last_seq + 1, time=now_iso(), actor=actor(), kind=kind, from_version=current,
        to_version=int(to_version), reason=reason, state="intent", lease=lease.token,
    )  # fmt: skip
    lease.check()
    client.set_registered_model_tag(name, *intent.tag())
    _test_hooks("intent")
    lease.check()
    client.set_registered_model_alias(name, CHAMPION, str(to_version))
    _test_hooks("move")
    # No lease check from here: the alias has moved, and recording that is right whoever holds the lease.
    done = replace(intent, state="committed", settled=now_iso())
    client.set_registered_model_tag(name, *done.tag())
    client.set_model_version_tag(name, str(to_version), "promoted", f"{done.time} by {done.actor} ({kind})")
    archive_old_records(client, name, keep)
    return done


def move_champion(
    client, name: str, to_version: int, kind: str, reason: str, expect_from: int | None | str = "any"
) -> Move:
    """Point ``champion`` at ``to_version`` under the lease, recorded before and after.

    ``expect_from`` makes it a compare-and-set: the move happens only if the champion is still
    that version (None: there is no champion yet).
    """
    registered_model(client, name)
    _require_version(client, name, to_version)
    with Lease(client, name) as lease:
        trail = settle(client, name, lease)
        current = champion_version(client, name)
        if expect_from != "any" and current != expect_from:
            raise PromotionConflict(
                f"{name}: champion moved from version {expect_from} to {current} while the gate ran; not promoted"
            )
        _test_hooks("decided")
        return _move(client, name, lease, trail, to_version, kind, reason, current)


def rollback(client, name: str, reason: str) -> Move:
    """Move the champion back to the ``from_version`` of the move that made it champion."""
    registered_model(client, name)
    with Lease(client, name) as lease:
        trail = settle(client, name, lease)
        current = champion_version(client, name)
        target = rollback_target(trail.moves, current)
        _test_hooks("decided")
        return _move(client, name, lease, trail, target, "rollback", reason, current)


# --- keeping the trail bounded -----------------------------------------------------------------


def _keep() -> int:
    raw = os.environ.get("LSTMOPS_AUDIT_KEEP", str(AUDIT_KEEP))
    if not raw.isdigit() or int(raw) < 2:
        raise LstmopsError(f"LSTMOPS_AUDIT_KEEP={raw!r} must be a whole number of records, at least 2")
    return int(raw)


def archive_old_records(client, name: str, keep: int) -> str | None:
    """If more than ``keep`` records are on the model, move the oldest (down to keep // 2) into a
    JSON Lines artifact, then delete their tags. Returns the artifact's run id, or None.

    Best effort: if the artifact cannot be written, the tags stay (nothing is lost) and a warning
    says why; the promotion that triggered it has already been recorded.
    """
    from mlflow.exceptions import MlflowException

    tags = registered_model(client, name).tags
    keys = sorted((seq, key) for key in tags if (seq := record_seq(key)) is not None)
    if len(keys) <= keep:
        return None
    old = keys[: len(keys) - keep // 2]
    lines = "".join(json.dumps({"key": key, "record": tags[key]}) + "\n" for _, key in old)
    first, last = old[0][0], old[-1][0]
    try:
        experiment = client.get_experiment_by_name(ARCHIVE_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else _create_experiment(client)
        run_tags = {ARCHIVE_MODEL_TAG: name, "mlflow.runName": f"audit {name} {first}-{last}"}
        run = client.create_run(experiment_id, tags=run_tags)
        client.log_text(run.info.run_id, lines, f"audit/{name}-{first:06d}-{last:06d}.jsonl")
        client.set_terminated(run.info.run_id)
    except (MlflowException, OSError) as exc:
        log.warning("warning: %s: could not archive audit records %d-%d (%s); kept", name, first, last, exc)
        return None
    for _, key in old:
        client.delete_registered_model_tag(name, key)
    where = f"older records: MLflow experiment {ARCHIVE_EXPERIMENT}, runs tagged {ARCHIVE_MODEL_TAG}={name}"
    client.set_registered_model_tag(name, "audit-archive", where)
    return run.info.run_id


def _create_experiment(client) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(ARCHIVE_EXPERIMENT)
    except MlflowException:  # created by a concurrent archiver
        return client.get_experiment_by_name(ARCHIVE_EXPERIMENT).experiment_id


def archived_records(client, name: str) -> list[Move]:
    """The records moved into artifacts by ``archive_old_records``, oldest first (malformed ones skipped)."""
    import mlflow

    experiment = client.get_experiment_by_name(ARCHIVE_EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{ARCHIVE_MODEL_TAG}` = '{name}'")
    tags: dict[str, str] = {}
    for run in runs:
        for item in client.list_artifacts(run.info.run_id, "audit"):
            text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{item.path}")
            for line in text.splitlines():
                entry = json.loads(line)
                tags[entry["key"]] = entry["record"]
    return parse_trail(name, tags).moves
