"""The decay rule (``monitor.rule``): has the champion got worse than it should be?

A day is one scored origin of the champion. It violates when the champion's error exceeds
(1 + ``vs_baseline``) x the best naive forecast's error on that origin, or (1 + ``vs_registered``) x
its own test error at registration. The rule fires when at least ``bad_days`` of the last
``of_days`` scored days violate (mlops-stacks: a metric threshold over N evaluation windows), and
not again for the same version until ``cooldown_days`` more days have been scored. Pure: the
monitor gathers the numbers, this decides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lstmops.monitor.settings import DecayRule


@dataclass(frozen=True)
class Day:
    origin: str
    error: float  # the champion's, in the rule's metric
    best_baseline: str | None
    baseline_error: float | None
    violates: bool
    why: str


@dataclass(frozen=True)
class Decision:
    fired: bool
    bad_days: int
    of_days: int
    reason: str
    last_origin: str | None  # the newest scored day the decision looked at

    def as_dict(self) -> dict:
        return asdict(self)


def judge(origin: str, error: float, baselines: dict[str, float], registered: float | None, rule: DecayRule) -> Day:
    """Whether one day violates, and why (the first threshold it crosses)."""
    best = min(baselines, key=baselines.get) if baselines else None
    reasons = []
    if rule.vs_baseline is not None and best is not None and error > (1 + rule.vs_baseline) * baselines[best]:
        reasons.append(f"{rule.metric} {error:.4g} > (1 + {rule.vs_baseline:g}) x {best} {baselines[best]:.4g}")
    if rule.vs_registered is not None and registered is not None and error > (1 + rule.vs_registered) * registered:
        reasons.append(f"{rule.metric} {error:.4g} > (1 + {rule.vs_registered:g}) x registered {registered:.4g}")
    return Day(origin, error, best, None if best is None else baselines[best], bool(reasons), "; ".join(reasons))


def decide(days: list[Day], rule: DecayRule, last_fired: str | None = None) -> Decision:
    """Fire when ``bad_days`` of the last ``of_days`` days violate (days in time order), unless the
    rule fired for this version fewer than ``cooldown_days`` scored days ago."""
    window = days[-rule.of_days :]
    bad = sum(d.violates for d in window)
    newest = window[-1].origin if window else None
    if len(window) < rule.bad_days:
        return Decision(False, bad, len(window), f"{len(window)} scored day(s): too few to judge", newest)
    if bad < rule.bad_days:
        return Decision(False, bad, len(window), f"{bad} of the last {len(window)} day(s) violate (fires at {rule.bad_days})", newest)
    if last_fired is not None:
        since = sum(d.origin > last_fired for d in days)
        if since < rule.cooldown_days:
            return Decision(False, bad, len(window), f"decayed, but fired {since} day(s) ago (cooldown {rule.cooldown_days})", newest)
    latest = next(d for d in reversed(window) if d.violates)
    return Decision(True, bad, len(window), f"{bad} of the last {len(window)} day(s) violate; latest {latest.origin}: {latest.why}", newest)
