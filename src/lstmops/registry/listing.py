"""Tables for `lstmops models` and `lstmops history`, read from the registry."""

from __future__ import annotations

from datetime import datetime, timezone

from lstmops.registry.trail import Move


def _gate(tags: dict[str, str]) -> str:
    if "gate.passed" not in tags:
        return "-"
    if tags.get("gate.promoted") == "True":
        return "promoted"
    return "passed" if tags["gate.passed"] == "True" else "not promoted"


def models_table(client, name: str) -> list[str]:
    """One line per version, newest first: aliases, test metric, gate verdict and its reason."""
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version))
    aliases: dict[str, list[str]] = {}  # search results carry no aliases; the registered model does
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    # The gate's metric (rmse for forecasters, bpc for language models), as the newest version says.
    metric = "test_" + next((v.tags["gate.metric"] for v in versions if "gate.metric" in v.tags), "rmse")
    lines = [f"{name}: {len(versions)} version(s)",
             f"  {'version':>7}  {'aliases':<20} {'created (UTC)':<17} {metric:>9} {'holdout':>9}  gate"]  # fmt: skip
    for v in versions:
        created = datetime.fromtimestamp(v.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        holdout = v.tags.get("gate.challenger_score", "-")
        verdict = _gate(v.tags)
        reason = f" ({v.tags['gate.reason']})" if "gate.reason" in v.tags else ""
        lines.append(
            f"  {v.version:>7}  {','.join(sorted(aliases.get(str(v.version), []))) or '-':<20} {created:<17} "
            f"{v.tags.get(metric, '-'):>9} {holdout:>9}  {verdict}{reason}"
        )
    return lines


def history_table(moves: list[Move]) -> list[str]:
    """Every champion move, newest first. A move whose alias change is not confirmed shows its
    state: ``intent`` (in flight, or its process died and no one has reconciled it yet) or
    ``aborted`` (the alias never moved); ``*`` marks a record settled by a later read."""
    if not moves:
        return ["no recorded moves of the champion alias"]
    lines = [f"  {'#':>3}  {'time (UTC)':<29} {'who':<24} {'kind':<18} {'from -> to':<11} why"]
    for m in reversed(moves):
        change = f"{m.from_version if m.from_version is not None else '-'} -> {m.to_version}"
        kind = m.kind if m.state == "committed" else f"{m.kind} ({m.state})"
        kind += "*" if m.reconciled else ""
        lines.append(f"  {m.seq:>3}  {m.time:<29} {m.actor:<24} {kind:<18} {change:<11} {m.reason}")
    if any(m.reconciled for m in moves):
        lines.append("  * settled by a later read: the process that moved it stopped between its record and the alias")
    return lines
