"""Plain-text rendering of a placement explanation: every site, its policy verdict and capacity facts."""

from __future__ import annotations

from contracts.events import Explanation, SiteAssessment


def site_line(site: SiteAssessment) -> str:
    if site.rank is not None:
        verdict = f"#{site.rank} {site.pool_id} at {site.price_krw_per_gpu_hour:,} KRW/GPU-h"
    elif not site.policy_allowed:
        verdict = "denied: " + "; ".join(f"{v.rule} {v.message}" for v in site.violations)
    else:
        verdict = "no fit: " + "; ".join(site.capacity_reasons)
    warnings = "".join(f"\n      warning {w.rule} ({w.mode}): {w.message}" for w in site.warnings)
    exempted = "".join(
        f"\n      exempted {e.rule} until {e.expires} by {e.approver} ({e.reason}): {e.message}"
        for e in site.exempted
    )
    return f"    {site.site_id:<22} {verdict}{warnings}{exempted}"


def render_explanation(explanation: Explanation) -> str:
    lines = [
        f"  {explanation.summary}",
        f"  decision {explanation.decision_id}, policy revision {explanation.policy_revision[:12]}",
    ]
    ordered = sorted(
        explanation.sites, key=lambda s: (s.rank is None, s.rank or 0, not s.policy_allowed, s.site_id)
    )
    lines += [site_line(site) for site in ordered]
    return "\n".join(lines)
