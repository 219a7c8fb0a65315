"""What-if: how a recorded decision would come out under candidate policies. Pure functions over the
decision's recorded verdicts, the capacity facts in its explanation, and the candidate's verdicts.

Capacity is taken as it was when the job was decided: a site "fits" if the explanation named a pool for it.
The new choice is the cheapest allowed fitting site (price, then site id; the energy tie-break is not
recorded in the explanation, so exact price ties may be resolved differently from placement).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

ChangeKind = Literal["no_longer_placed", "site_changed", "newly_placeable", "new_warnings"]
Verdicts = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Change:
    job_id: str
    tenant_id: str
    kind: ChangeKind
    before: str
    after: str
    rules: tuple[str, ...]


def _rules(verdict: dict[str, Any] | None, key: str) -> set[str]:
    return {finding["rule"] for finding in (verdict or {}).get(key, [])}


def _choice(fitting: dict[str, int], allowed: set[str]) -> str | None:
    candidates = sorted((price, site) for site, price in fitting.items() if site in allowed)
    return candidates[0][1] if candidates else None


def replay(
    job_id: str,
    tenant_id: str,
    old: Verdicts,
    new: Verdicts,
    explanation: dict[str, Any],
    outcome: str,
    placed_site: str | None,
) -> Change | None:
    fitting = {
        s["site_id"]: s["price_krw_per_gpu_hour"]
        for s in explanation.get("sites", [])
        if s.get("pool_id") is not None
    }
    new_allowed = {site for site, verdict in new.items() if verdict.get("allowed")}
    new_site = _choice(fitting, new_allowed)

    def newly_denied(site: str) -> set[str]:
        return _rules(new.get(site), "violations") - _rules(old.get(site), "violations")

    def no_longer_denied(site: str) -> set[str]:
        return _rules(old.get(site), "violations") - _rules(new.get(site), "violations")

    if outcome == "placed" and placed_site is not None:
        before = f"placed on {placed_site}"
        if new_site is None:
            return Change(
                job_id,
                tenant_id,
                "no_longer_placed",
                before,
                "no allowed site with capacity",
                tuple(sorted(newly_denied(placed_site))),
            )
        if new_site != placed_site:
            rules = newly_denied(placed_site) | no_longer_denied(new_site)
            return Change(
                job_id, tenant_id, "site_changed", before, f"placed on {new_site}", tuple(sorted(rules))
            )
        added = _rules(new.get(placed_site), "warnings") - _rules(old.get(placed_site), "warnings")
        if added:
            return Change(
                job_id, tenant_id, "new_warnings", before, before + " with new warnings", tuple(sorted(added))
            )
        return None
    if new_site is not None:
        return Change(
            job_id,
            tenant_id,
            "newly_placeable",
            outcome,
            f"placed on {new_site}",
            tuple(sorted(no_longer_denied(new_site))),
        )
    return None


@dataclass(frozen=True)
class WhatIfReport:
    replayed: int
    changes: list[Change]

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for change in self.changes:
            counts[change.kind] += 1
        return dict(counts)

    def by_rule(self) -> dict[str, list[Change]]:
        grouped: dict[str, list[Change]] = defaultdict(list)
        for change in self.changes:
            for rule in change.rules or ("(no single rule)",):
                grouped[rule].append(change)
        return dict(sorted(grouped.items()))


def summarise(replayed: int, changes: Iterable[Change | None]) -> WhatIfReport:
    return WhatIfReport(replayed, [change for change in changes if change is not None])
