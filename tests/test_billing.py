"""Billing against SQLite and PostgreSQL: invoices and late usage, tiers and VAT, budgets, token pricing,
tenant isolation, dedup keys that never hide other usage, and the recompute check."""

from __future__ import annotations

import csv
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from contracts.events import (
    InvoiceIssued,
    InvoiceIssuedEvent,
    UsageReported,
    UsageReportedEvent,
)
from services.billing import handlers as billing
from services.billing.check import check_billing
from services.billing.queries import ForeignTenantError, find_invoice, usage_report
from services.billing.rating import Rate, Usage, run_charge_krw, vat_krw
from services.billing.storage import TABLES, ChargeRow, InvoiceRow, PostingRow, UsageLineRow, ledger_imbalance
from services.shared.batch import PoisonMessage
from services.shared.db import create_service_engine, table_of, unit_of_work
from services.shared.domain.catalogue import load_catalogue
from services.shared.domain.money import charge_krw
from services.shared.inbox import ProcessedEvent
from services.shared.outbox import OutboxMessage
from services.shared.settings import REPO_ROOT, Settings
from sovereign.billing_commands import invoice_command
from tests.conftest import KEYRING, TEST_KEYS, completed_at_haenam, placed_at_haenam

TENANTS = load_catalogue(REPO_ROOT / "catalogue").tenants
MARCH = datetime(2027, 3, 10, tzinfo=UTC)


@pytest.fixture
def engine(database_url: tuple[str, str]) -> Engine:
    url, prefix = database_url
    tables = [table_of(OutboxMessage), table_of(ProcessedEvent), *TABLES]
    return create_service_engine(url, "billing", tables, schema_prefix=prefix)


CTX = billing.BillingContext(keyring=KEYRING, fee_bps=500, tenants=TENANTS)


def deliver(engine: Engine, *events: Any) -> None:
    handlers: dict[str, Any] = {
        "jobs.placed": billing.on_job_placed,
        "usage.reported": billing.on_usage_reported,
        "jobs.completed": billing.on_job_completed,
    }
    for event in events:
        with unit_of_work(engine) as session:
            handlers[event.type](CTX, session, event)


def usage(
    job_id: uuid.UUID, seq: int, gpu_seconds: int, tenant: str = "mois", when: datetime = MARCH, **fields: Any
) -> UsageReportedEvent:
    data = UsageReported(
        job_id=job_id,
        tenant_id=tenant,
        site_id="nacc-haenam",
        pool_id="nacc-haenam-b200",
        seq=seq,
        gpu_seconds=gpu_seconds,
        energy_wh=1,
        interval_start=when,
        interval_end=when,
        **fields,
    )
    return TEST_KEYS.factory.sign(
        UsageReportedEvent.create(
            source="factory/nacc-haenam", subject=tenant, data=data, event_id=uuid.uuid5(job_id, str(seq))
        )
    )


def issue(engine: Engine, tenant: str, period: str) -> InvoiceIssued:
    with unit_of_work(engine) as session:
        return billing.issue_invoice(CTX, session, tenant, period, datetime.now(UTC))


def test_out_of_order_and_repeated_usage_is_rated_once_and_balances(engine: Engine) -> None:
    job_id = uuid.uuid4()
    usages = [usage(job_id, seq, gs) for seq, gs in ((1, 1001), (2, 2003), (3, 999))]
    # Completion first, then usage out of order and repeated, the placement (and its price) last.
    deliver(
        engine,
        completed_at_haenam(job_id, 3),
        usages[2],
        usages[0],
        usages[2],
        TEST_KEYS.factory.sign(usages[0].model_copy(update={"id": uuid.uuid4()})),  # same interval, new id
        placed_at_haenam(job_id),
        usages[1],
        usages[1],
    )
    [billed] = [r for r in outbox_rows(engine) if r.topic == "jobs.billed"]
    amount = charge_krw(1001 + 2003 + 999, 7600)
    assert f'"amount_krw":{amount}'.encode() in billed.payload
    rated = [r for r in outbox_rows(engine) if r.topic == "billing.usage"]
    assert [r.payload.count(b'"seq":') for r in rated] == [1, 1, 1]
    with Session(engine) as session:
        charge = session.get(ChargeRow, (str(job_id), 1))
        assert charge is not None and charge.billed and charge.rated_amount_krw == amount
        assert ledger_imbalance(session) == 0
        receivable = session.exec(
            select(func.sum(PostingRow.amount_krw)).where(PostingRow.account == "receivable:tenant:mois")
        ).one()
        assert receivable == amount


def test_conflicting_usage_for_the_same_interval_is_poison(engine: Engine) -> None:
    job_id = uuid.uuid4()
    deliver(engine, usage(job_id, 1, 100))
    with pytest.raises(PoisonMessage, match="already reported"):
        deliver(engine, TEST_KEYS.factory.sign(usage(job_id, 1, 999).model_copy(update={"id": uuid.uuid4()})))


def test_late_usage_after_issue_becomes_an_adjustment_on_the_next_invoice(engine: Engine) -> None:
    job_id = uuid.uuid4()
    deliver(engine, placed_at_haenam(job_id), usage(job_id, 1, 3600 * 8))
    march = issue(engine, "mois", "2027-03")
    assert march.subtotal_krw == 8 * 7600 and march.vat_krw == vat_krw(8 * 7600)
    assert march.total_krw == march.subtotal_krw - march.volume_discount_krw + march.vat_krw
    with pytest.raises(billing.InvoiceError, match="was issued"):
        issue(engine, "mois", "2027-03")
    # Still dated in March, but March is issued: carried by April as adjustments, delivered out of order.
    deliver(
        engine,
        usage(job_id, 3, 1800),
        usage(job_id, 2, 3600),
        usage(job_id, 2, 3600),
        completed_at_haenam(job_id, 3),
    )
    with Session(engine) as session:
        tenant = TENANTS["mois"]
        still = find_invoice(session, tenant, "2027-03")
        april = find_invoice(session, tenant, "2027-04")
    assert still is not None and still.status == "issued" and still.invoice == march
    assert april is not None and april.status == "draft"
    [adjustment] = april.invoice.lines
    assert adjustment.adjustment and adjustment.usage_period == "2027-03"
    total = charge_krw(3600 * 8 + 3600 + 1800, 7600)
    assert march.subtotal_krw + april.invoice.subtotal_krw == total
    with Session(engine) as session:
        report = check_billing(session, TENANTS)
    assert report.ok, report.problems
    assert report.lines == 3 and report.invoices == 2


def test_tiers_vat_and_tokens_on_an_issued_invoice(engine: Engine) -> None:
    big, serving = uuid.uuid4(), uuid.uuid4()
    token_rate: dict[str, Any] = {
        "price_krw_per_million_input_tokens": 300,
        "price_krw_per_million_output_tokens": 1500,
    }
    deliver(
        engine,
        placed_at_haenam(big, price=2100),
        usage(big, 1, 2000 * 3600),  # 2,000 GPU-hours: 1,000 at 0 and 1,000 at 3 percent off
        placed_at_haenam(serving, price=4300, **token_rate),
        usage(serving, 1, 3600, input_tokens=7_200_000, output_tokens=1_440_000),
    )
    invoice = issue(engine, "mois", "2027-03")
    gpu_hours = 2000 * 2100
    tokens = run_charge_krw(Usage(3600, 7_200_000, 1_440_000), Rate(4300, 300, 1500))
    assert tokens == 4320
    assert invoice.subtotal_krw == gpu_hours + tokens
    assert invoice.volume_discount_krw == gpu_hours * 150 // 10_000  # blended 1.5 percent, tokens excluded
    assert invoice.vat_krw == vat_krw(invoice.net_krw)
    assert {line.charge_model for line in invoice.lines} == {"gpu_hour", "tokens"}
    assert all(line.policy_revision for line in invoice.lines)
    [issued_row] = [r for r in outbox_rows(engine) if r.topic == "invoices.issued"]
    assert InvoiceIssuedEvent.model_validate_json(issued_row.payload).data == invoice
    with Session(engine) as session:
        assert check_billing(session, TENANTS).ok


def test_a_factory_cannot_bill_a_run_placed_at_another_site(engine: Engine) -> None:
    """Its key lists its own sites and validly signs for them: usage and ends it reports for a run placed
    elsewhere are refused, and the run's own site still bills it."""
    job_id = uuid.uuid4()
    deliver(engine, placed_at_haenam(job_id))
    elsewhere = usage(job_id, 1, 3600).data.model_copy(update={"site_id": "skt-gasan"})
    forged_usage = TEST_KEYS.factory.sign(
        UsageReportedEvent.create(source="factory/skt-gasan", subject="mois", data=elsewhere)
    )
    done = completed_at_haenam(job_id, 1)
    forged_end = TEST_KEYS.factory.sign(
        done.model_copy(
            update={"id": uuid.uuid4(), "data": done.data.model_copy(update={"site_id": "skt-gasan"})}
        )
    )
    for forged in (forged_usage, forged_end):
        with pytest.raises(PoisonMessage, match=f"run 1 of job {job_id} is at nacc-haenam, not at skt-gasan"):
            deliver(engine, forged)
    deliver(engine, usage(job_id, 1, 1800), done)
    [billed] = [r for r in outbox_rows(engine) if r.topic == "jobs.billed"]
    assert f'"amount_krw":{charge_krw(1800, 7600)}'.encode() in billed.payload


def outbox_rows(engine: Engine) -> list[OutboxMessage]:
    with Session(engine) as session:
        return list(session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))))


def test_budget_thresholds_fire_once_each(engine: Engine) -> None:
    job_id = uuid.uuid4()
    # globex-sg: an 80,000,000 KRW monthly cap with alerts at 50, 80 and 100 percent.

    def hours_for(krw: int) -> int:  # GPU-seconds that cost this much at 7,600 KRW/GPU-h
        return krw * 3600 // 7600

    deliver(
        engine,
        placed_at_haenam(job_id, tenant="globex-sg"),
        usage(job_id, 1, hours_for(30_000_000), "globex-sg"),
    )
    deliver(engine, usage(job_id, 2, hours_for(15_000_000), "globex-sg"))  # 45 M: past 50 percent
    deliver(engine, usage(job_id, 2, hours_for(15_000_000), "globex-sg"))  # a repeat: no second alert
    deliver(engine, usage(job_id, 3, hours_for(40_000_000), "globex-sg"))  # 85 M: past 80 and 100
    alerts = [r for r in outbox_rows(engine) if r.topic == "billing.budget"]
    assert [b'"threshold_percent":50' in a.payload for a in alerts] == [True, False, False]
    assert [b'"threshold_percent":100' in a.payload for a in alerts] == [False, False, True]
    with Session(engine) as session:
        report = usage_report(session, TENANTS["globex-sg"], "2027-03")
    assert report.budget is not None and report.budget.left_krw < 0
    assert [row.site_id for row in report.rows] == ["nacc-haenam"]


def test_a_tenant_reads_only_its_own_records(engine: Engine) -> None:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    deliver(
        engine, placed_at_haenam(mine), usage(mine, 1, 3600), placed_at_haenam(theirs, tenant="hanil-bank")
    )
    deliver(engine, usage(theirs, 1, 7200, tenant="hanil-bank"))
    theirs_invoice = issue(engine, "hanil-bank", "2027-03")
    with Session(engine) as session:
        own = usage_report(session, TENANTS["mois"], "2027-03")
        assert own.invoice is not None and all(line.job_id == mine for line in own.invoice.invoice.lines)
        assert sum(row.gpu_seconds for row in own.rows) == 3600
        with pytest.raises(ForeignTenantError):
            find_invoice(session, TENANTS["mois"], invoice_id=theirs_invoice.invoice_id)


def test_a_dedup_key_reused_for_other_usage_is_refused_not_swallowed(engine: Engine) -> None:
    job_id, other = uuid.uuid4(), uuid.uuid4()
    first = usage(job_id, 1, 3600)
    deliver(engine, placed_at_haenam(job_id), first)
    # The same (source, id) claiming to be another tenant's interval: never counted as a duplicate.
    forged = TEST_KEYS.factory.sign(
        usage(other, 1, 7200, tenant="hanil-bank").model_copy(update={"id": first.id})
    )
    with pytest.raises(PoisonMessage, match="already identifies other usage"):
        deliver(engine, forged)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(UsageLineRow)).one() == 1


def test_amounts_beyond_32_bits_are_stored_whole(engine: Engine) -> None:
    """A month of a 2,048-GPU run at 7,600 KRW/GPU-h bills about 11 billion won: more than a 32-bit integer
    holds (PostgreSQL's INTEGER refused it, and the usage went to the dead letters)."""
    job_id = uuid.uuid4()
    month = 2048 * 30 * 24 * 3600  # GPU-seconds, itself beyond 2^31
    deliver(engine, placed_at_haenam(job_id), usage(job_id, 1, month), completed_at_haenam(job_id, 1))
    amount = charge_krw(month, 7600)
    assert amount > 2**31 and month > 2**31
    with Session(engine) as session:
        charge = session.get(ChargeRow, (str(job_id), 1))
        assert charge is not None and charge.billed and charge.rated_amount_krw == amount
        invoice = session.exec(select(InvoiceRow).where(InvoiceRow.tenant_id == "mois")).one()
        assert invoice.subtotal_krw == amount
        assert ledger_imbalance(session) == 0


def test_invoice_exports_and_refusals_from_the_command_line(
    engine: Engine, database_url: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = uuid.uuid4()
    deliver(engine, placed_at_haenam(job_id), usage(job_id, 1, 7200))
    url, prefix = database_url
    settings = Settings(database_url=url, database_schema_prefix=prefix)
    assert invoice_command(settings, "mois", "2027-03", None, True, "csv", tmp_path / "m.csv") == 0
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [r["kind"] for r in rows] == ["line", "subtotal", "volume_discount", "vat", "total"]
    assert rows[0]["job_id"] == str(job_id) and rows[0]["amount_krw"] == str(2 * 7600)
    assert int(rows[-1]["amount_krw"]) == 2 * 7600 + vat_krw(2 * 7600)
    assert invoice_command(settings, "mois", "2027-03", None, False, "json", tmp_path / "m.json") == 0
    exported = InvoiceIssued.model_validate_json((tmp_path / "m.json").read_text())
    assert exported.total_krw == int(rows[-1]["amount_krw"])
    assert invoice_command(settings, "mois", "2027-03", None, True, "text", None) == 1  # issued already
    assert invoice_command(settings, "hanil-bank", None, exported.invoice_id, False, "text", None) == 3
    assert "refused" in capsys.readouterr().err
