"""What-if: how each recorded decision would come out under a candidate revision, against the current one.

Pure functions over what a decision recorded (each site's capacity class and ranking key, the outcome and
its non-policy reason) and the verdicts of the two revisions on the decision's own input. Only policy's
effect is replayed:
- capacity is held as it was at the decision (a site fits now, could fit later, or never could);
- a rejection for the deadline stands whatever the policy says; a rejection for the budget stands while
  the policy would choose the same site again (the budget check at another site is not replayed: such a
  change says it depends on the budget);
- sites are ranked as placement ranks them: price, then energy per GPU-hour, then the tenant's region
  preference, then site and pool ids.
A placement elsewhere than before also depends on capacity as it was: this job taking it could have left
less for later ones, which are not re-run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from contracts.events import RejectionCode

Verdicts = dict[str, dict[str, Any]]
Fit = Literal["now", "later", "never"]
EffectKind = Literal[
    "newly_allowed", "newly_denied", "moved", "newly_placed", "newly_unplaceable", "warnings_added"
]
EFFECT_KINDS: tuple[EffectKind, ...] = get_args(EffectKind)
NO_SINGLE_RULE = "(no single rule)"
# Outcomes whose reason is not the policy's and which stand under any revision.
HELD_CODES = frozenset({RejectionCode.DEADLINE_PASSED, RejectionCode.DEADLINE_UNREACHABLE})
BUDGET_CODE = RejectionCode.BUDGET_EXCEEDED
DEPENDS_ON_CAPACITY = "capacity as it was at the decision"
DEPENDS_ON_BUDGET = "the tenant's budget at the time, which is not replayed"


@dataclass(frozen=True)
class SiteFacts:
    """What placement recorded about one site of a decision, policy aside."""

    site_id: str
    fit: Fit
    # Price, energy per GPU-hour, 0 if in a preferred region else 1, site id, pool id; only for fit "now".
    rank: tuple[int, float, int, str, str] | None = None


@dataclass(frozen=True)
class RecordedDecision:
    job_id: str
    tenant_id: str
    decided_at: datetime
    revision: str
    outcome: Decided
    code: str | None  # the rejection's code
    site_id: str | None  # where it was placed
    sites: dict[str, SiteFacts]
    # The site a budget rejection was for (the one the policy chose).
    refused_site: str | None = None
    # When placement honoured a cancel of the job, if it did.
    cancelled_at: datetime | None = None


class Decided(StrEnum):
    """What placement made of a decision: the topic its answer went out on, jobs.<this>."""

    PLACED = "placed"
    QUEUED = "queued"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Outcome:
    state: Decided
    site_id: str | None = None
    code: str | None = None

    def describe(self) -> str:
        if self.state == Decided.PLACED:
            return f"placed on {self.site_id}"
        return f"{self.state} ({self.code})" if self.code else self.state


@dataclass(frozen=True)
class SiteChange:
    """How one site's verdict for the job differs between the two revisions."""

    site_id: str
    allowed_before: bool
    allowed_after: bool
    violations_added: tuple[str, ...] = ()
    violations_removed: tuple[str, ...] = ()
    warnings_added: tuple[str, ...] = ()
    warnings_removed: tuple[str, ...] = ()

    @property
    def rules(self) -> set[str]:
        return {
            *self.violations_added,
            *self.violations_removed,
            *self.warnings_added,
            *self.warnings_removed,
        }

    def describe(self) -> str:
        parts = [f"+{r} (deny)" for r in self.violations_added]
        parts += [f"-{r} (deny)" for r in self.violations_removed]
        parts += [f"+{r} (warning)" for r in self.warnings_added]
        parts += [f"-{r} (warning)" for r in self.warnings_removed]
        flip = ""
        if self.allowed_before != self.allowed_after:
            flip = "now allowed" if self.allowed_after else "now denied"
        return f"{self.site_id}: " + ", ".join(([flip] if flip else []) + (parts or ["no finding changed"]))


@dataclass(frozen=True)
class Effect:
    """One way a job's decision changes, and the rules that explain it. `single_rule` says whether any one
    of them alone explains it; when not, the rules only do together (or no finding changed at all)."""

    kind: EffectKind
    sites: tuple[str, ...]
    rules: tuple[str, ...]
    single_rule: bool

    def attribution(self) -> str:
        if self.single_rule:
            return ", ".join(self.rules)
        together = f": {' and '.join(self.rules)} together" if self.rules else ": no finding changed"
        return NO_SINGLE_RULE + together


@dataclass(frozen=True)
class JobChange:
    job_id: str
    tenant_id: str
    decided_at: datetime
    before: Outcome
    after: Outcome
    effects: tuple[Effect, ...]
    sites: tuple[SiteChange, ...]
    depends_on: tuple[str, ...] = ()
    # When the job would be placed somewhere it was not, and the current revision forbids that site: the
    # rules that forbid it.
    forbidden_by: tuple[str, ...] = ()

    @property
    def kinds(self) -> tuple[EffectKind, ...]:
        return tuple(effect.kind for effect in self.effects)


def _findings(verdict: dict[str, Any] | None, key: str) -> set[str]:
    return {finding["rule"] for finding in (verdict or {}).get(key, [])}


def _allowed(verdicts: Verdicts, site_id: str) -> bool:
    return bool(verdicts.get(site_id, {}).get("allowed"))


def policy_outcome(sites: dict[str, SiteFacts], verdicts: Verdicts) -> Outcome:
    """Placement's plan, capacity as recorded: the best-ranked allowed site that fits now; else queued when
    an allowed site could fit later; else rejected."""
    fitting = [
        facts
        for facts in sites.values()
        if facts.fit == "now" and facts.rank is not None and _allowed(verdicts, facts.site_id)
    ]
    if fitting:
        return Outcome(Decided.PLACED, min(fitting, key=lambda facts: facts.rank or ()).site_id)
    if not sites:
        return Outcome(Decided.QUEUED)  # no factory had offered capacity: no revision changes that
    allowed = [site_id for site_id in sites if _allowed(verdicts, site_id)]
    if not allowed:
        return Outcome(Decided.REJECTED, code=RejectionCode.NO_ALLOWED_SITE)
    if any(sites[site_id].fit == "later" for site_id in allowed):
        return Outcome(Decided.QUEUED)
    return Outcome(Decided.REJECTED, code=RejectionCode.NEVER_FITS)


def outcome_under(decision: RecordedDecision, verdicts: Verdicts) -> tuple[Outcome, tuple[str, ...]]:
    """The decision's outcome under these verdicts, with what the outcome depends on beyond them."""
    if decision.code in HELD_CODES:
        return Outcome(decision.outcome, decision.site_id, decision.code), ()
    planned = policy_outcome(decision.sites, verdicts)
    if decision.code == BUDGET_CODE and planned.state == Decided.PLACED:
        if planned.site_id == decision.refused_site:
            return Outcome(Decided.REJECTED, code=BUDGET_CODE), ()
        return planned, (DEPENDS_ON_BUDGET,)
    return planned, ()


def site_changes(before: Verdicts, after: Verdicts) -> list[SiteChange]:
    changes = []
    for site_id in sorted(set(before) | set(after)):
        old, new = before.get(site_id), after.get(site_id)
        change = SiteChange(
            site_id=site_id,
            allowed_before=_allowed(before, site_id),
            allowed_after=_allowed(after, site_id),
            violations_added=tuple(sorted(_findings(new, "violations") - _findings(old, "violations"))),
            violations_removed=tuple(sorted(_findings(old, "violations") - _findings(new, "violations"))),
            warnings_added=tuple(sorted(_findings(new, "warnings") - _findings(old, "warnings"))),
            warnings_removed=tuple(sorted(_findings(old, "warnings") - _findings(new, "warnings"))),
        )
        if change.rules or change.allowed_before != change.allowed_after:
            changes.append(change)
    return changes


def _denied_by(changes: Sequence[SiteChange]) -> Effect | None:
    """Sites newly denied: each rule newly violated there denies the site alone."""
    flipped = [c for c in changes if c.allowed_before and not c.allowed_after]
    if not flipped:
        return None
    rules = sorted({rule for c in flipped for rule in c.violations_added})
    single = all(c.violations_added for c in flipped)
    return Effect("newly_denied", tuple(c.site_id for c in flipped), tuple(rules), single)


def _allowed_by(changes: Sequence[SiteChange]) -> Effect | None:
    """Sites newly allowed: one rule explains a site only if it was the only one to stop denying it."""
    flipped = [c for c in changes if not c.allowed_before and c.allowed_after]
    if not flipped:
        return None
    rules = sorted({rule for c in flipped for rule in c.violations_removed})
    single = all(len(c.violations_removed) == 1 for c in flipped)
    return Effect("newly_allowed", tuple(c.site_id for c in flipped), tuple(rules), single)


def _outcome_effect(
    kind: EffectKind, by_site: dict[str, SiteChange], denied_at: Iterable[str], allowed_at: Iterable[str]
) -> Effect:
    """A change of outcome caused by sites newly denied (each rule newly violated there is enough) and
    sites newly allowed (a rule is enough only if it was the one rule that stopped denying the site)."""
    denied = [by_site[s] for s in denied_at if s in by_site and not by_site[s].allowed_after]
    allowed = [by_site[s] for s in allowed_at if s in by_site and by_site[s].allowed_after]
    rules = {r for c in denied for r in c.violations_added} | {
        r for c in allowed for r in c.violations_removed
    }
    single = any(c.violations_added for c in denied) or any(len(c.violations_removed) == 1 for c in allowed)
    return Effect(kind, tuple(c.site_id for c in [*denied, *allowed]), tuple(sorted(rules)), single)


def _unplaceable_effect(by_site: dict[str, SiteChange], lost: Iterable[str]) -> Effect:
    """Every site that could take the job now is denied: one rule explains that only if it denies them
    all."""
    denied = [by_site[s] for s in lost if s in by_site and not by_site[s].allowed_after]
    rules = sorted({r for c in denied for r in c.violations_added})
    common = set.intersection(*(set(c.violations_added) for c in denied)) if denied else set()
    return Effect("newly_unplaceable", tuple(c.site_id for c in denied), tuple(rules), bool(common))


def _price(decision: RecordedDecision, site_id: str | None) -> int | None:
    facts = decision.sites.get(site_id or "")
    return facts.rank[0] if facts and facts.rank else None


def replay(
    decision: RecordedDecision, before: Verdicts, after: Verdicts, tenant_has_budget: bool = False
) -> JobChange | None:
    """The job's change from `before` (the current revision's verdicts) to `after` (the candidate's), or
    None when no verdict of the job changes."""
    changes = site_changes(before, after)
    if not changes:
        return None
    by_site = {change.site_id: change for change in changes}
    old, _ = outcome_under(decision, before)
    new, depends = outcome_under(decision, after)
    effects = [e for e in (_allowed_by(changes), _denied_by(changes)) if e is not None]
    if old.state == Decided.PLACED and new.state == Decided.PLACED and old.site_id != new.site_id:
        effects.append(_outcome_effect("moved", by_site, [old.site_id or ""], [new.site_id or ""]))
    elif old.state != Decided.PLACED and new.state == Decided.PLACED:
        refused = [decision.refused_site] if decision.refused_site else []
        effects.append(_outcome_effect("newly_placed", by_site, refused, [new.site_id or ""]))
    elif old.state == Decided.PLACED and new.state != Decided.PLACED:
        could_take_it = [s for s, f in decision.sites.items() if f.fit == "now" and _allowed(before, s)]
        effects.append(_unplaceable_effect(by_site, could_take_it))
    at_new_site = by_site.get(new.site_id or "") if new.state == Decided.PLACED else None
    if at_new_site is not None and at_new_site.warnings_added:
        effects.append(Effect("warnings_added", (at_new_site.site_id,), at_new_site.warnings_added, True))
    if not effects:
        return None  # only warnings went away, or findings changed and no site's verdict did
    if decision.cancelled_at is not None and (old.state, old.site_id) != (new.state, new.site_id):
        # The cancel stands: the job ends cancelled either way, after running (or waiting) until then.
        depends = (*depends, f"the cancel at {decision.cancelled_at:%Y-%m-%d %H:%M} UTC, which stands")
    forbidden: tuple[str, ...] = ()
    if new.state == Decided.PLACED and new.site_id != old.site_id:
        depends = (*depends, DEPENDS_ON_CAPACITY)
        old_price, new_price = _price(decision, old.site_id), _price(decision, new.site_id)
        costs_more = old_price is None or (new_price is not None and new_price > old_price)
        if tenant_has_budget and costs_more and DEPENDS_ON_BUDGET not in depends:
            depends = (*depends, DEPENDS_ON_BUDGET)
        if not _allowed(before, new.site_id or ""):
            forbidden = tuple(sorted(_findings(before.get(new.site_id or ""), "violations")))
    return JobChange(
        job_id=decision.job_id,
        tenant_id=decision.tenant_id,
        decided_at=decision.decided_at,
        before=old,
        after=new,
        effects=tuple(effects),
        sites=tuple(changes),
        depends_on=depends,
        forbidden_by=forbidden,
    )


def recorded_decision(
    job_id: str,
    tenant_id: str,
    decided_at: datetime,
    revision: str,
    outcome: str,
    code: str | None,
    site_id: str | None,
    explanation: dict[str, Any],
    cancelled_at: datetime | None = None,
) -> RecordedDecision | None:
    """The decision as placement recorded it, or None if it was recorded before placement recorded each
    site's capacity class and ranking inputs (explanations before jobs.placed 1.5)."""
    sites: dict[str, SiteFacts] = {}
    refused_site = None
    for assessment in explanation.get("sites", []):
        fit = assessment.get("fit")
        if fit is None:
            return None
        rank = None
        if fit == "now":
            rank = (
                assessment["price_krw_per_gpu_hour"],
                assessment["energy_kwh_per_gpu_hour"],
                0 if assessment["region_preferred"] else 1,
                assessment["site_id"],
                assessment["pool_id"],
            )
        sites[assessment["site_id"]] = SiteFacts(assessment["site_id"], fit, rank)
        if assessment.get("rank") == 1:
            refused_site = assessment["site_id"]
    return RecordedDecision(
        job_id=job_id,
        tenant_id=tenant_id,
        decided_at=decided_at,
        revision=revision,
        outcome=Decided(outcome),
        code=code,
        site_id=site_id,
        sites=sites,
        refused_site=refused_site if code == BUDGET_CODE else None,
        cancelled_at=cancelled_at,
    )


@dataclass(frozen=True)
class Scope:
    """Which recorded decisions a what-if replays: by tenant, by when they were decided, and by rule (a job
    is kept only if one of these rules' findings changes for it)."""

    tenants: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    rules: frozenset[str] = frozenset()

    def includes(self, tenant_id: str, decided_at: datetime) -> bool:
        return (
            (not self.tenants or tenant_id in self.tenants)
            and (self.since is None or decided_at >= self.since)
            and (self.until is None or decided_at < self.until)
        )

    def keeps(self, change: JobChange) -> bool:
        return not self.rules or any(self.rules & site.rules for site in change.sites)

    def as_json(self) -> dict[str, Any]:
        return {
            "tenants": sorted(self.tenants),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "rules": sorted(self.rules),
        }


EVERY_JOB = Scope()


@dataclass(frozen=True)
class Limit:
    """Decisions a what-if could not replay faithfully, and why; never skipped silently."""

    reason: str
    job_ids: tuple[str, ...]


# What a replay always assumes, stated in every report.
ASSUMPTIONS = (
    "capacity is held as it was at each decision; a job placed elsewhere could have left less for later "
    "jobs, which are not re-run",
    "a rejection for the deadline stands; a rejection for the budget stands while the same site would be "
    "chosen, and a job that would go elsewhere depends on the budget at the time",
    "each job's latest decision is replayed, on its own input (its time, its sites' documents)",
)


@dataclass(frozen=True)
class WhatIfReport:
    current: str
    candidate: str
    scope: Scope
    replayed: int
    changes: list[JobChange]
    limits: list[Limit] = field(default_factory=list)

    @property
    def forbidden(self) -> list[JobChange]:
        """Jobs the candidate would place somewhere a rule of the current revision forbids."""
        return [change for change in self.changes if change.forbidden_by]

    def by_kind(self) -> dict[EffectKind, int]:
        counts = dict.fromkeys(EFFECT_KINDS, 0)
        for change in self.changes:
            for kind in change.kinds:
                counts[kind] += 1
        return counts

    def by_rule(self) -> dict[str, dict[EffectKind, int]]:
        """For each rule, the jobs whose effects it is named in; "(no single rule)" counts the effects no
        one rule explains alone."""
        counts: dict[str, dict[EffectKind, int]] = defaultdict(lambda: dict.fromkeys(EFFECT_KINDS, 0))
        for change in self.changes:
            for effect in change.effects:
                for rule in effect.rules if effect.single_rule else (*effect.rules, NO_SINGLE_RULE):
                    counts[rule][effect.kind] += 1
        return dict(sorted(counts.items()))

    def by_tenant(self) -> dict[str, dict[EffectKind, int]]:
        counts: dict[str, dict[EffectKind, int]] = defaultdict(lambda: dict.fromkeys(EFFECT_KINDS, 0))
        for change in self.changes:
            for kind in change.kinds:
                counts[change.tenant_id][kind] += 1
        return dict(sorted(counts.items()))

    def as_json(self) -> dict[str, Any]:
        return {
            "current_revision": self.current,
            "candidate_revision": self.candidate,
            "scope": self.scope.as_json(),
            "replayed": self.replayed,
            "changed": len(self.changes),
            "newly_placed_where_a_current_rule_forbids": len(self.forbidden),
            "summary": {"by_kind": self.by_kind(), "by_rule": self.by_rule(), "by_tenant": self.by_tenant()},
            "jobs": [_change_json(change) for change in self.changes],
            "not_replayed": [
                {"reason": limit.reason, "job_ids": list(limit.job_ids)} for limit in self.limits
            ],
            "assumptions": list(ASSUMPTIONS),
        }


def _change_json(change: JobChange) -> dict[str, Any]:
    return {
        "job_id": change.job_id,
        "tenant_id": change.tenant_id,
        "decided_at": change.decided_at.isoformat(),
        "before": change.before.describe(),
        "after": change.after.describe(),
        "effects": [
            {
                "kind": effect.kind,
                "sites": list(effect.sites),
                "rules": list(effect.rules),
                "single_rule": effect.single_rule,
            }
            for effect in change.effects
        ],
        "sites": [
            {
                "site_id": site.site_id,
                "allowed_before": site.allowed_before,
                "allowed_after": site.allowed_after,
                "violations_added": list(site.violations_added),
                "violations_removed": list(site.violations_removed),
                "warnings_added": list(site.warnings_added),
                "warnings_removed": list(site.warnings_removed),
            }
            for site in change.sites
        ],
        "depends_on": list(change.depends_on),
        "forbidden_by_current_rules": list(change.forbidden_by),
    }
