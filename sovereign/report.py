"""The demo's closing report: placements per site, rejections and why, usage and bills per tenant."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from contracts.events import InvoiceIssued, JobRequest
from services.billing.check import CheckReport
from services.shared.domain.catalogue import Catalogue
from sovereign.explain import render_explanation
from sovereign.verification.invariants import Violation
from sovereign.verification.tracker import Tracker


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: set[int] | None = None) -> str:
    right = right or set()
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join(
        [
            "  " + line(cells[0]),
            "  " + "  ".join("-" * w for w in widths),
            *("  " + line(row) for row in cells[1:]),
        ]
    )


def won(amount: int) -> str:
    return f"{amount:,}"


def render_report(
    tracker: Tracker,
    requests: Sequence[JobRequest],
    catalogue: Catalogue,
    invoices: Sequence[InvoiceIssued],
    billing_check: CheckReport | None,
    dead_letters: int,
    decision_log: tuple[int, str | None] | None = None,
    violations: Sequence[Violation] | None = None,
    streams: tuple[Mapping[str, int], Sequence[Violation]] | None = None,
    unequal_bills: Sequence[Violation] = (),
) -> str:
    """`streams`: how many events each tenant's own stream carries, and what is wrong with them;
    `unequal_bills`: the bills that do not equal their usage at the locked prices (invariant 4)."""
    traces = {r.job_id: tracker.trace(r.job_id) for r in requests}
    by_job = {r.job_id: r for r in requests}
    sites = {o.site.site_id: o.site for o in catalogue.offers}
    out: list[str] = []
    # A job runs once, or again elsewhere after a failed run: placements and bills are per run.
    placed = [p for t in traces.values() for p in t.placed]
    rejected = [(by_job[j], t.rejected[0]) for j, t in traces.items() if t.rejected]
    billed = [b for t in traces.values() for b in t.billed]
    unfinished = [by_job[j] for j, t in traces.items() if t.terminal is None]

    out.append("== Outcome")
    out.append(
        f"  {len(requests)} job requests from {len({r.tenant_id for r in requests})} tenants: "
        f"{sum(1 for t in traces.values() if t.placed)} placed, {len(rejected)} rejected, "
        f"{sum(1 for t in traces.values() if t.terminal == 'billed')} billed, {len(unfinished)} unfinished"
    )
    failed_runs = [c for t in traces.values() for c in t.completed if c.status == "failed"]
    if failed_runs:
        retried = sum(1 for t in traces.values() if len(t.placed) > 1)
        ended_failed = sum(1 for t in traces.values() if t.state == "failed")
        out.append(
            f"  {len(failed_runs)} runs failed at their site; {retried} jobs were retried on another allowed "
            f"site, {ended_failed} ended failed (no attempts left), each run billed for what it completed"
        )
    waited = [j for j, t in traces.items() if t.queued and t.placed]
    cancelled = [t for t in traces.values() if t.cancelled]
    if cancelled:
        running = sum(1 for t in cancelled if t.placed)
        out.append(
            f"  {len(cancelled)} cancelled by their tenant ({running} while running, billed for the usage "
            f"reported until then)"
        )
    resubmitted = [t for t in traces.values() if len(t.requests) > 1]
    placed_once = sum(1 for t in resubmitted if len({p.attempt for p in t.placed}) == len(t.placed))
    out.append(
        f"  {len(waited)} waited in the queue for capacity before being placed; {len(resubmitted)} were "
        f"submitted twice and decided {'once each' if placed_once == len(resubmitted) else 'MORE THAN ONCE'}"
        "; "
        f"{tracker.duplicates} duplicate deliveries ignored; {dead_letters} dead letters"
    )

    out.append("\n== Placements per site")
    per_site: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    billed_by_run = {(b.job_id, b.attempt): b for b in billed}
    for p in placed:
        row = per_site[p.site_id]
        row[0] += 1
        row[1] += p.gpu_count
        if (p.job_id, p.attempt) in billed_by_run:
            row[2] += billed_by_run[p.job_id, p.attempt].gpu_seconds
            row[3] += billed_by_run[p.job_id, p.attempt].amount_krw
    out.append(
        table(
            ["site", "country", "operator", "runs", "GPUs", "GPU-hours", "billed KRW"],
            [
                [
                    s,
                    sites[s].country if s in sites else "?",
                    sites[s].operator if s in sites else "?",
                    v[0],
                    v[1],
                    f"{v[2] / 3600:,.1f}",
                    won(v[3]),
                ]
                for s, v in sorted(per_site.items(), key=lambda kv: -kv[1][3])
            ],
            right={3, 4, 5, 6},
        )
    )

    out.append("\n== Rejections, with the reason the tenant receives")
    for request, rejection in sorted(rejected, key=lambda rr: (rr[1].code.value, rr[0].tenant_id)):
        out.append(f"  {request.tenant_id:<20} {request.name[:58]:<58} [{rejection.code.value}]")
        out.append(f"      {rejection.reason}")
    rules = Counter(v.rule for p in placed for site in p.explanation.sites for v in site.violations)
    if rules:
        out.append("\n== Policy rules that excluded sites from placed jobs' choices (site exclusions)")
        out.append(table(["rule", "sites excluded"], sorted(rules.items()), right={1}))

    out.append("\n== Usage and bills per tenant")
    per_tenant: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for t in traces.values():
        for b in t.billed:
            row = per_tenant[b.tenant_id]
            row[0] += 1
            row[1] += b.gpu_seconds
            row[2] += sum(u.energy_wh for u in t.usage if u.attempt == b.attempt)
            row[3] += b.amount_krw
            row[4] += b.marketplace_fee_krw
    out.append(
        table(
            ["tenant", "runs billed", "GPU-hours", "energy kWh", "amount KRW", "marketplace fee KRW"],
            [
                [k, v[0], f"{v[1] / 3600:,.1f}", f"{v[2] / 1000:,.1f}", won(v[3]), won(v[4])]
                for k, v in sorted(per_tenant.items())
            ],
            right={1, 2, 3, 4, 5},
        )
    )

    if invoices:
        out.append("\n== Invoices issued at the end of the run (KRW; months in KST)")
        out.append(
            table(
                ["tenant", "month", "lines", "subtotal", "volume discount", "VAT 10%", "total"],
                [
                    [
                        i.tenant_id,
                        i.period,
                        len(i.lines),
                        won(i.subtotal_krw),
                        won(-i.volume_discount_krw),
                        won(i.vat_krw),
                        won(i.total_krw),
                    ]
                    for i in invoices
                ],
                right={2, 3, 4, 5, 6},
            )
        )

    example = next(
        (t.placed[0] for j, t in traces.items() if t.placed and by_job[j].csap_grade != "none"), None
    )
    if example:
        out.append(f"\n== Why one job went where it went: {example.job_name} ({example.tenant_id})")
        out.append(render_explanation(example.explanation))

    out.append("\n== Checks")
    exact = not unequal_bills
    out.append(
        f"  {'ok ' if not unfinished else 'FAIL'} every job request reached exactly one final outcome"
        + ("" if not unfinished else f" ({len(unfinished)} did not)")
    )
    out.append(
        f"  {'ok ' if exact else 'FAIL'} every bill equals its usage at the prices locked at placement "
        "(per GPU-hour or per token)"
    )
    if billing_check is not None:
        out.append(
            f"  {'ok ' if billing_check.ok else 'FAIL'} billing check: {billing_check.lines} usage lines and "
            f"{billing_check.invoices} invoices recompute exactly from stored usage; debits equal credits "
            f"over {billing_check.postings} postings"
        )
        out.extend(f"       {problem}" for problem in billing_check.problems[:5])
    if decision_log is not None:
        count, broken = decision_log
        complete = count >= len(tracker.decisions)
        out.append(
            f"  {'ok ' if broken is None and complete else 'FAIL'} the decision log holds {count} of "
            f"{len(tracker.decisions)} decisions and its hash chain verifies"
            + ("" if broken is None else f" (broken at {broken})")
        )
    if streams is not None:
        counts, problems = streams
        out.append(
            f"  {'ok ' if not problems else 'FAIL'} each tenant's own stream carries every event about its "
            "jobs and none about anyone else's: "
            + ", ".join(f"{tenant} {count}" for tenant, count in sorted(counts.items()))
        )
        out.extend(f"       {problem}" for problem in problems[:5])
    if violations is not None:
        out.append(
            f"  {'ok ' if not violations else 'FAIL'} the six invariants hold over every topic and the four "
            "services' databases"
        )
        out.extend(f"       {violation}" for violation in violations[:10])
    return "\n".join(out)
