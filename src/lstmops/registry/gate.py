"""The champion/challenger gate: promote a new version only if it is better where it matters.

Both models are scored the same way, from their TorchScript files (scaling inside), on the same
raw test windows of the data just ingested, in original units: the champion needs none of its
training code, and a change of scaling or history length between versions cannot bias the
comparison. Only data that **neither** version trained or validated on is scored: each version
records what it saw (``seen.*`` tags, ``seen.py``), and the task leaves out every test window,
sequence or character that either record covers; the naive baselines are scored on the same
items. A champion that records nothing cannot be scored fairly and blocks the promotion unless
forced. The challenger must also

- leave at least ``promote.min_unseen`` such items to score (else nothing is promoted),

- have passed validation and the export parity check (TorchScript == eager model),
- beat the best naive baseline on those windows,
- with ``promote.beat_baseline_in_backtest`` and where the backtest ran (``reports/backtest.json``),
  beat the best naive baseline on the mean over the backtest's folds too,
- beat the champion by ``promote.min_improvement`` (relative), if there is one,
- and with ``promote.require_significance``, beat it significantly: a one-sided Diebold–Mariano
  test on the two models' per-window losses of those windows (``stats.py``) with p below
  ``promote.significance`` (tasks whose ``GateInputs`` have no ``losses`` refuse the setting).

A champion that cannot read the new data (other features, horizon, too little history) blocks
the promotion unless forced. The verdict goes on the challenger version as ``gate.*`` tags and
into ``reports/gate.json`` (a DVC metric); the move itself is a recorded compare-and-set
(``trail.move_champion``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lstmops.registry.trail import CHALLENGER, PromotionConflict, champion_version, move_champion

if TYPE_CHECKING:
    from lstmops.tasks.base import GateInputs


@dataclass(frozen=True)
class Verdict:
    passed: bool
    promoted: bool
    reason: str
    metric: str
    challenger_version: int
    challenger_score: float
    champion_version: int | None
    champion_score: float | None
    improvement: float | None  # relative: (champion - challenger) / champion
    min_improvement: float
    best_baseline: str
    baseline_score: float
    data_md5: str
    forced: bool
    significance: float | None = None  # promote.significance when require_significance is on
    dm_pvalue: float | None = None  # one-sided Diebold-Mariano p: challenger better than champion
    # What was scored: test items (unit) of the data, how many neither version saw, which ones.
    unit: str = ""
    held_out: int = 0
    unseen: int = 0
    min_unseen: int = 0
    scored_on: str = ""
    backtest_score: float | None = None  # the mean over the backtest's folds, when required
    backtest_baseline_score: float | None = None

    def tags(self) -> dict[str, str]:
        return {f"gate.{k}": str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Evidence:
    """What the gate decides on (everything already measured, nothing loaded)."""

    metric: str
    min_improvement: float
    challenger: float | None  # None: nothing was left to score it on
    baselines: dict[str, float]
    champion: float | None  # None: no champion, or it could not score the data
    champion_problem: str | None  # why the champion could not score the new data
    validation: str
    parity_ok: bool
    significance: float | None = None  # None: significance not required
    dm_pvalue: float | None = None  # one-sided DM p (challenger better than champion); None: not run
    unseen: int = 0  # test items neither version trained or validated on (what was scored)
    min_unseen: int = 0  # promote.min_unseen
    unit: str = "windows"
    backtest: tuple[float, str, float] | None = None  # (challenger's mean, best baseline, its mean); None: not required


def decide(e: Evidence, force: bool = False) -> tuple[bool, str]:
    """(passed, reason). Pure: the rules of promotion in one place."""
    best = min(e.baselines, key=e.baselines.get)
    if e.validation == "failed":
        return False, "the data failed validation"
    if not e.parity_ok:
        return False, "the TorchScript export disagrees with the eager model"
    if e.unseen < e.min_unseen or e.challenger is None:
        return False, (f"too few test {e.unit} are new to both versions (neither trained nor validated on them): "
                       f"{e.unseen}, fewer than promote.min_unseen={e.min_unseen}; nothing promoted")  # fmt: skip
    if not e.challenger < e.baselines[best]:
        return False, f"{e.metric} {e.challenger:.4g} does not beat the best naive baseline {best} ({e.baselines[best]:.4g})"
    if e.backtest is not None and not e.backtest[0] < e.backtest[2]:
        mean, name, theirs = e.backtest
        return False, (f"backtest mean {e.metric} {mean:.4g} does not beat the best naive baseline {name} ({theirs:.4g}) "
                       "over the folds (promote.beat_baseline_in_backtest)")  # fmt: skip
    if e.champion_problem is not None:
        if force:
            return True, f"forced: the champion cannot score the new data ({e.champion_problem})"
        return False, f"the champion cannot score the new data ({e.champion_problem}); promote with --force"
    if e.champion is None:
        return True, f"first champion: {e.metric} {e.challenger:.4g} beats the best naive baseline {best} ({e.baselines[best]:.4g})"
    needed = e.champion * (1 - e.min_improvement)
    verdict = f"{e.metric} {e.challenger:.4g} vs champion {e.champion:.4g} (needs <= {needed:.4g}, margin {e.min_improvement:.1%})"
    if not e.challenger <= needed:
        return False, f"does not win: {verdict}"
    if e.significance is None or e.dm_pvalue is None:
        return True, f"wins: {verdict}"
    dm = f"DM p={e.dm_pvalue:.2g}"
    if not e.dm_pvalue < e.significance:
        return False, f"does not win: {verdict}, but not significantly better than the champion ({dm} >= {e.significance:g})"
    return True, f"wins: {verdict}, significantly better than the champion ({dm} < {e.significance:g})"


def forecast(model, raw: np.ndarray, test_origins: np.ndarray, history: int, batch: int = 512) -> np.ndarray:
    """(windows, horizon) forecasts from raw (rows, features) data, each from ``history`` rows."""
    import torch

    view = np.lib.stride_tricks.sliding_window_view(raw, history, axis=0).transpose(0, 2, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(test_origins), batch):
            chunk = test_origins[start : start + batch] - history
            out.append(model(torch.from_numpy(np.ascontiguousarray(view[chunk]))).numpy())
    return np.concatenate(out).astype(np.float64)


def champion_problem(
    model, features: list[str], horizon: int, first_origin: int, other: str = "the challenger"
) -> str | None:
    """Why the champion (any model) cannot be scored on this data, or None; ``other`` names what
    has the data's horizon."""
    theirs = list(getattr(model, "features", features))
    if theirs != features:
        return f"it reads features {theirs}, the data has {features}"
    their_horizon = getattr(model, "horizon", horizon)
    if their_horizon != horizon:
        return f"it forecasts {their_horizon} steps, {other} {horizon}"
    history = getattr(model, "input_steps", None)
    if history is not None and history > first_origin:
        return f"it needs {history} steps of history, a test window has only {first_origin}"
    return None


def load_version_model(client, name: str, version: int):
    """The TorchScript file a registered version records, checked against its sha256 (and
    signature) before it is loaded (``verify.py``); a file that fails is refused in one line."""
    import torch

    from lstmops.registry.verify import fetch_verified

    mv = client.get_model_version(name, str(version))
    with tempfile.TemporaryDirectory(prefix="lstmops-gate-") as tmp:
        return torch.jit.load(str(fetch_verified(mv, Path(tmp))), map_location="cpu")


def run_gate(
    client, name: str, challenger_version: int, scoring: Callable[[list[dict[str, str]]], GateInputs],
    validation: str, parity_ok: bool, data_md5: str, min_improvement: float, force: bool = False,
    significance: float | None = None, min_unseen: int = 0, seen: dict[str, str] | None = None,
    backtest: tuple[float, str, float] | None = None,
) -> Verdict:  # fmt: skip
    """Score, decide, tag the challenger and (if it passed) move the champion under the lock.

    ``scoring`` comes from the task (``Task.gate_inputs``): given the ``seen`` records of the
    versions compared (the challenger's and the champion's tags; ``seen``, the pipeline's own,
    for a challenger registered without them), the metric, the baselines' scores, how to score a
    TorchScript model on the test data none of them saw, and why a model cannot.
    ``significance``: also require a one-sided Diebold–Mariano p below it against the champion.
    ``min_unseen``: promote nothing when fewer test items than this are left to score.
    ``backtest``: (challenger's backtest mean, best baseline, its mean) when it must beat it there too.
    """
    from lstmops.registry.seen import of_version

    current = champion_version(client, name)
    records = [r for r in (of_version(client, name, challenger_version) or seen,) if r]
    rival = current is not None and current != challenger_version
    unknown = None  # why the champion's training data is unknown
    if rival:
        champion_seen = of_version(client, name, current)
        if champion_seen is None:
            unknown = f"version {current} records nothing of what it trained on (no seen.* tags), so no data is known to be new to it"
        else:
            records.append(champion_seen)
    inputs = scoring(records)
    metric, baselines = inputs.metric, inputs.baselines
    # The challenger's registered file, not the local export: the gate promotes what it scored.
    challenger_model = load_version_model(client, name, challenger_version)
    challenger = inputs.score(challenger_model) if inputs.unseen else None
    champ_score, dm_pvalue, problem = None, None, None
    if rival:
        model = load_version_model(client, name, current)
        problem = inputs.problem(model) or unknown
        if problem is None and inputs.unseen:
            champ_score = inputs.score(model)
            if significance is not None:
                dm_pvalue = significance_pvalue(inputs, model, challenger_model)
    evidence = Evidence(metric, min_improvement, challenger, baselines, champ_score, problem, validation, parity_ok,
                        significance, dm_pvalue, inputs.unseen, min_unseen, inputs.unit, backtest)  # fmt: skip
    already = current == challenger_version  # the gate ran again on the same version
    passed, reason = (True, "already the champion") if already else decide(evidence, force)
    promoted = False
    if passed and not already:
        try:
            move_champion(client, name, challenger_version, "gate", reason, expect_from=current)
            client.delete_registered_model_alias(name, CHALLENGER)
            promoted = True
        except PromotionConflict as exc:
            passed, reason = False, str(exc)
    best = min(baselines, key=baselines.get)
    rounded = lambda x: None if x is None else round(x, 6)  # noqa: E731
    verdict = Verdict(
        passed=passed, promoted=promoted, reason=reason, metric=metric, challenger_version=challenger_version,
        challenger_score=rounded(challenger), champion_version=current, champion_score=rounded(champ_score),
        improvement=None if champ_score is None or challenger is None else round((champ_score - challenger) / champ_score, 6),
        min_improvement=min_improvement, best_baseline=best, baseline_score=rounded(baselines[best]), data_md5=data_md5,
        forced=force and problem is not None, significance=significance,
        dm_pvalue=None if dm_pvalue is None else float(f"{dm_pvalue:.6g}"), unit=inputs.unit,
        held_out=inputs.held_out, unseen=inputs.unseen, min_unseen=min_unseen, scored_on=inputs.scored_on,
        backtest_score=None if backtest is None else backtest[0],
        backtest_baseline_score=None if backtest is None else backtest[2],
    )  # fmt: skip
    for key, value in verdict.tags().items():
        client.set_model_version_tag(name, str(challenger_version), key, value)
    return verdict


def significance_pvalue(scoring, champion, challenger) -> float:
    """One-sided Diebold–Mariano p that the challenger's expected per-window loss is below the
    champion's, on the gate's test windows (HAC lag horizon - 1: see ``stats.diebold_mariano``)."""
    from lstmops.errors import ConfigError, DataError
    from lstmops.stats import diebold_mariano

    if getattr(scoring, "losses", None) is None:
        raise ConfigError("promote.require_significance: this task's gate has no per-window losses to test")
    try:
        result = diebold_mariano(scoring.losses(champion), scoring.losses(challenger), scoring.horizon)
    except ValueError as exc:
        raise DataError(f"promote.require_significance: the Diebold-Mariano test cannot run ({exc})") from None
    return result.p_b_better
