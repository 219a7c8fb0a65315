"""A worker's memory of site verdicts, so that a decision evaluates only the sites it has not judged before.

A site's verdict is a pure function of the revision, the job's attributes that some rule reads (the
policy's own completeness.needs), the tenant's document, the site's document and the day: the policies
compare the time only with the end of a calendar day (24:00 KST). A decision looks up each site under
that key, evaluates the sites it misses in one call and keeps their verdicts; `cached_sites` says which
verdicts came from memory. Nothing is kept across revisions, and a site whose document changes (a new
offer) has a new key. Equality with fresh evaluation is a property test (tests/test_verdict_cache.py).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic_core

from services.shared.domain.money import KST
from services.shared.domain.policy import OutOfTime, PolicyEngine, declared_reads
from services.shared.domain.signing import canonical_json

# About 500 bytes a verdict: a worker keeps at most some tens of megabytes.
CAPACITY = 100_000
# The times the policy takes as valid (evidence.timestamp_ns): any other `now` is evaluated afresh, so an
# input the policy finds incomplete never shares a key with one it does not.
RFC3339 = re.compile(
    r"[0-9-]{10}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)
YEARS = range(1970, 2262)


def site_digest(site: Any) -> str:
    """The digest of a site's document as the policy reads it (its canonical JSON): the key its verdicts are
    remembered under, and the id of its snapshot on market.sites, which decisions refer to."""
    return hashlib.sha256(canonical_json(site)).hexdigest()


def day_of(now: Any) -> tuple[str, bool] | None:
    """The KST calendar day of an RFC 3339 time, and whether it is that day's first instant (a time compared
    with the end of the day before is past it only after that instant); None if it is not such a time."""
    if not isinstance(now, str) or not RFC3339.fullmatch(now):
        return None
    try:
        moment = datetime.fromisoformat(now)
    except ValueError:
        return None
    if moment.year not in YEARS:
        return None
    local = moment.astimezone(KST)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return local.date().isoformat(), local == midnight


@dataclass(frozen=True)
class CachedDecision:
    verdicts: dict[str, dict[str, Any]]
    cached_sites: frozenset[str]


class VerdictCache:
    """Site verdicts of one revision, kept per worker. A revision whose bundle declares no reads is
    evaluated afresh every time."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._revision: str | None = None
        self._job_reads: frozenset[str] | None = None
        # Oldest first: the one evicted when the cache is full.
        self._verdicts: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()

    def decide(
        self,
        engine: PolicyEngine,
        policy_input: dict[str, Any],
        site_digests: Mapping[str, str] | None = None,
        out_of_time: OutOfTime | None = None,
    ) -> CachedDecision:
        """The engine's verdicts for the input's sites, those judged before under the same key from memory.
        `site_digests` (each site's `site_digest`, computed once per market) saves hashing every site."""
        if engine.revision != self._revision:
            self._revision = engine.revision
            self._verdicts = OrderedDict()
            reads = declared_reads(engine.bundle)
            self._job_reads = frozenset(reads.get("job", ())) if reads is not None else None
        sites = policy_input.get("sites")
        request = self._request_key(policy_input)
        if request is None or not isinstance(sites, dict):
            return CachedDecision(engine.decide(policy_input, out_of_time), frozenset())
        digests = site_digests or {}
        keys = {
            site_id: (request, site_id, digests.get(site_id) or site_digest(site))
            for site_id, site in sites.items()
        }
        verdicts: dict[str, dict[str, Any]] = {}
        missed: dict[str, Any] = {}
        for site_id, key in keys.items():
            verdict = self._verdicts.get(key)
            if verdict is None:
                missed[site_id] = sites[site_id]
            else:
                verdicts[site_id] = verdict
        cached = frozenset(verdicts)
        if missed:
            fresh = engine.decide({**policy_input, "sites": missed}, out_of_time)
            for site_id in missed:
                verdict = fresh.get(site_id)
                if verdict is not None:  # a site the policy said nothing about is denied by the caller
                    verdicts[site_id] = verdict
                    self._remember(keys[site_id], verdict)
        return CachedDecision(verdicts, cached)

    def _request_key(self, policy_input: dict[str, Any]) -> str | None:
        """Everything of the input but its sites that a verdict depends on, as one string; None when the
        input is not one the key can describe (it is then evaluated afresh)."""
        job, day = policy_input.get("job"), day_of(policy_input.get("now"))
        if self._job_reads is None or not isinstance(job, dict) or day is None:
            return None
        rest = {k: v for k, v in policy_input.items() if k not in {"job", "sites", "now"}}
        read = {name: job[name] for name in sorted(self._job_reads) if name in job}
        return pydantic_core.to_json([read, rest, day]).decode()

    def _remember(self, key: tuple[str, str, str], verdict: dict[str, Any]) -> None:
        if len(self._verdicts) >= self.capacity:
            self._verdicts.popitem(last=False)
        self._verdicts[key] = verdict
