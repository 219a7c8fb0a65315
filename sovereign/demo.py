"""`sovereign demo`: the whole marketplace on embedded defaults, as separate processes, with a report.

The broker is Tansu, each service runs as its own process with its own SQLite file, the policies are the
Rego in policies/ on the in-process engine, and the tenants and sites come from the default catalogue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Table
from sqlmodel import Session, select

from contracts import TOPICS, dead_letter_topic, job_id_for
from contracts.events import InvoiceIssued, JobRequest, JobRequestedEvent
from services.billing.check import check_billing
from services.billing.handlers import BillingContext, issue_invoice
from services.billing.storage import TABLES as BILLING_TABLES
from services.billing.storage import InvoiceRow
from services.factory_agent.storage import TABLES as FACTORY_TABLES
from services.governance.queries import verify_log
from services.governance.storage import TABLES as GOVERNANCE_TABLES
from services.shared.db import create_service_engine, unit_of_work, utc_now
from services.shared.domain.catalogue import Tenant, load_catalogue
from services.shared.domain.signing import Keyring, Signer
from services.shared.embedded_broker import CLIENT_ENV, EmbeddedBroker
from services.shared.kafka import all_topics, consumer_group, ensure_topics
from services.shared.settings import REPO_ROOT, Settings
from sovereign.attest_commands import placements_on_topic, verify_placements
from sovereign.auditor_commands import auditor_keygen, auditor_sign
from sovereign.embedded import start_service
from sovereign.keys import ThrowawayKeys, throwaway_keys
from sovereign.options import Commands
from sovereign.report import render_report
from sovereign.slurm_demo import (
    SLURM_SITE,
    charges_at,
    slurm_accounting_report,
    slurm_cluster_for,
    slurm_jobs,
)
from sovereign.stack.slurm import LocalSlurm, not_installed
from sovereign.submit import cancel_event
from sovereign.verification.history import collect_history
from sovereign.verification.invariants import bills_unequal_to_usage, check, tenant_streams
from sovereign.verification.tracker import Tracker, following, wait_until
from sovereign.verification.watch import consumer_lag, partition_ends, produce
from sovereign.verification.workload import TEMPLATES, generate, request_events

RUN_DIR = REPO_ROOT / "var" / "demo"
Processes = list[tuple[str, subprocess.Popen[bytes]]]
T = TypeVar("T")
STOP_SECONDS = 15


def run_demo(
    jobs: int, seed: int, time_scale: float, wait_seconds: float, placement_workers: int, slurm: bool = False
) -> int:
    if slurm and (missing := not_installed()):
        print(f"The demo's Slurm mode cannot run: {missing}.", file=sys.stderr)
        return 2
    if RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)
    logs = RUN_DIR / "logs"
    logs.mkdir(parents=True)
    print(
        f"Sovereign AI job marketplace demo: {jobs} jobs, seed {seed}, 1 real second = "
        f"{time_scale / 3600:g} simulated hours. Logs in {logs.relative_to(REPO_ROOT)}/"
    )
    site_cluster: AbstractContextManager[LocalSlurm | None] = (
        slurm_cluster_for(SLURM_SITE) if slurm else contextlib.nullcontext()
    )
    with site_cluster as cluster, EmbeddedBroker(log_path=logs / "tansu.log") as broker:
        print(f"  broker   Tansu on {broker.bootstrap_servers} (memory storage)")
        tenants = load_catalogue(REPO_ROOT / "catalogue").tenants
        asyncio.run(ensure_topics(broker.bootstrap_servers, all_topics(tenants), Settings().topic_partitions))
        keys = RUN_DIR / "keys"
        # Throwaway auditor keys for this run; sk-aws-ulsan's attributes are left unvouched.
        auditor_keygen(keys, "kisa-demo-auditor")
        auditor_sign(
            keys / "kisa-demo-auditor.key",
            "kisa-demo-auditor",
            REPO_ROOT / "catalogue",
            keys / "attestations.json",
            ["sk-aws-ulsan"],
        )
        # Throwaway keys of the tenants, the factories and a compliance officer.
        demo_keys = throwaway_keys(
            keys,
            [template.tenant_id for template in TEMPLATES],
            load_catalogue(REPO_ROOT / "catalogue").site_ids,
        )
        env = {
            **os.environ,
            **demo_keys.service_env(),
            "SOVEREIGN_AUDITOR_KEYS": str(keys / "auditors.json"),
            "SOVEREIGN_SITE_ATTESTATIONS": str(keys / "attestations.json"),
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            **CLIENT_ENV,
            "SOVEREIGN_DATA_DIR": str(RUN_DIR / "data"),
            "SOVEREIGN_TIME_SCALE": str(time_scale),
            # A simulated hardware fault: a quarter of the runs at Haenam fail half-way and are retried.
            "SOVEREIGN_SITE_FAILURE_RATES": "nacc-haenam=0.25",
        }
        env.pop("DATABASE_URL", None)
        services = [(name, env) for name in ["placement"] * placement_workers]
        if cluster is None:
            services.append(("factory-agent", env))
        else:
            # Two factories' agents: the Slurm site's own, and the simulation of every other site.
            others = [site for site in load_catalogue(REPO_ROOT / "catalogue").site_ids if site != SLURM_SITE]
            services.append(("factory-agent", {**env, "SOVEREIGN_FACTORY_SITES": ",".join(others)}))
            services.append(("factory-agent", {**env, **cluster.agent_env(SLURM_SITE)}))
            print(f"  slurm    {SLURM_SITE} on a one-node Slurm cluster in {cluster.root}")
        services += [("billing", env), ("governance", env)]
        processes: Processes = []
        try:
            for index, (name, service_env) in enumerate(services):
                process = start_service(name, service_env, logs / f"{name}-{index}.log")
                processes.append((name, process))
                print(f"  service  {name:<14} pid {process.pid}")
            return asyncio.run(
                _drive(broker.bootstrap_servers, jobs, seed, wait_seconds, processes, demo_keys, cluster)
            )
        finally:
            _stop(processes)


def _stop(processes: Processes) -> None:
    for _, process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for _, process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


async def _drive(
    bootstrap: str,
    jobs: int,
    seed: int,
    wait_seconds: float,
    processes: Processes,
    keys: ThrowawayKeys,
    cluster: LocalSlurm | None,
) -> int:
    catalogue = load_catalogue(REPO_ROOT / "catalogue")
    requests = generate(jobs, seed)
    job_ids = {r.job_id for r in requests}
    started = time.monotonic()
    async with following(bootstrap, Tracker()) as tracker:
        print("\nWaiting for the AI factories to offer capacity ...")
        await wait_until(lambda: len(tracker.sites_offered) >= len(catalogue.offers) or _died(processes), 60)
        if _died(processes):
            return _report_crash(processes)
        # Placement must have taken in every offer, or its first decisions would see only part of the market.
        if not await _caught_up(bootstrap, "placement", "capacity.offered", processes):
            return _report_crash(processes)
        print(
            f"  {len(tracker.sites_offered)} sites offered capacity "
            f"({sum(len(o.pools) for o in catalogue.offers)} GPU pools), and placement has taken them in"
        )
        events = request_events(requests, keys.tenants)
        # Tenants retry: three requests are submitted twice; the marketplace must place each only once.
        retries = [
            (
                keys.tenants[e.subject].sign(type(e).create(source=e.source, subject=e.subject, data=e.data)),
                key,
            )
            for e, key in events[:3]
        ]
        # An impostor who can write to the topic: a request in mois's name, signed with hanbit-ai's key.
        impostor = requests[0].model_copy(update={"tenant_id": "mois", "client_request_id": "impostor"})
        forged = keys.tenants["hanbit-ai"].sign(
            JobRequestedEvent.create(source="tenant/mois", subject="mois", data=impostor)
        )
        await produce(bootstrap, [*events, *retries, (forged, str(impostor.job_id))], idempotent=False)
        print(
            f"Submitted {len(requests)} job requests from {len({r.tenant_id for r in requests})} tenants "
            f"(+{len(retries)} resubmissions, +1 forged in mois's name) over Kafka.\n"
        )
        last = ""
        # The public agency changes its mind about one pretraining run once it is running.
        to_cancel = next(r for r in requests if r.tenant_id == "nia")
        cancel_sent = False
        while time.monotonic() - started < wait_seconds and not tracker.all_terminal(job_ids):
            if _died(processes):
                return _report_crash(processes)
            if not cancel_sent and tracker.trace(to_cancel.job_id).started:
                await cancel(bootstrap, to_cancel, "budget reallocated", keys.tenants[to_cancel.tenant_id])
                print(f"  cancelling {to_cancel.name!r} ({to_cancel.tenant_id}) while it runs", flush=True)
                cancel_sent = True
            states = tracker.states(job_ids)
            line = (
                f"  [{time.monotonic() - started:5.1f}s] queued {states['queued']:>3}"
                f" | placed {states['placed']:>3}"
                f" | running {states['running']:>3} | completed {states['completed']:>3}"
                f" | billed {states['billed']:>3} | rejected {states['rejected']:>3}"
                f" | cancelled {states['cancelled']:>3} | retrying {states['retrying']:>3}"
                f" | failed {states['failed']:>3}"
            )
            if line.split("]")[1] != last:
                print(line, flush=True)
                last = line.split("]")[1]
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.5)  # let the last events in flight arrive
        dead_letters = await _count_dead_letters(bootstrap)
        # The key's own tenant is told (on its stream); the job in mois's name is never taken on.
        answer = tracker.trace(job_id_for("hanbit-ai", impostor.client_request_id))
        forged_refused = await wait_until(lambda: bool(answer.refused), within=10)
        forged_refused &= not tracker.trace(impostor.job_id).placed
        told = "; ".join(refusal.reason for refusal in answer.refused)
        print(f"\nThe forged request, refused to hanbit-ai: {told if forged_refused else 'NOT REFUSED'}\n")
        # Governance logs decisions asynchronously: let it take in every decision before checking its chain.
        await _caught_up(bootstrap, "governance", "policy.decisions", processes, within=30)
        # Finance closes the books: every tenant's draft invoices are issued, then everything is recomputed.
        invoices = _issue_all_invoices(catalogue.tenants)
        billing = _read_service_database(
            "billing", BILLING_TABLES, lambda s: check_billing(s, catalogue.tenants)
        )
        settings = Settings(bootstrap_servers=bootstrap, data_dir=RUN_DIR / "data", idempotent_producer=False)
        history = await collect_history(settings)
        violations = check(history)
        streams = {tenant: len(records) for tenant, records in history.tenant_streams.items()}
        print(
            render_report(
                tracker,
                requests,
                catalogue,
                invoices,
                billing,
                dead_letters,
                _decision_log(),
                violations,
                (streams, tenant_streams(history)),
                bills_unequal_to_usage(history),
            )
        )
        print("\n== Placement attestations, checked offline from jobs.placed and the public keys")
        attested = verify_placements(await placements_on_topic(settings), Keyring.load(keys.keyring), None)
        finished = tracker.all_terminal(job_ids) and not violations and attested == 0 and forged_refused
        if cluster is not None:
            print(f"\n== Slurm at {SLURM_SITE}: each run's Slurm job (sacct) and its bill")
            runs = _read_service_database("billing", BILLING_TABLES, partial(charges_at, SLURM_SITE)) or []
            submitted = _read_service_database("factory-agent", FACTORY_TABLES, slurm_jobs) or {}
            report, exact = slurm_accounting_report(runs, submitted, cluster.accounted_gpu_seconds())
            print(report)
            finished &= exact
        print(f"\nDemo {'completed' if finished else 'INCOMPLETE'} in {time.monotonic() - started:.1f}s.")
        return 0 if finished else 1


async def cancel(bootstrap: str, request: JobRequest, reason: str, signer: Signer) -> None:
    event = cancel_event(request.tenant_id, request.job_id, reason, signer)
    await produce(bootstrap, [(event, str(request.job_id))], idempotent=False)


def _died(processes: Processes) -> bool:
    return any(process.poll() is not None for _, process in processes)


def _report_crash(processes: Processes) -> int:
    for index, (name, process) in enumerate(processes):
        if process.poll() is not None:
            log = RUN_DIR / "logs" / f"{name}-{index}.log"
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(
                f"\nservice {name} exited with code {process.returncode}; last lines of {log}:",
                file=sys.stderr,
            )
            print("\n".join(tail), file=sys.stderr)
    return 2


async def _count_dead_letters(bootstrap: str) -> int:
    ends = await partition_ends(bootstrap, [dead_letter_topic(t) for t in TOPICS])
    return sum(ends.values())


async def _caught_up(
    bootstrap: str, service: str, topic: str, processes: Processes, within: float = 60
) -> bool:
    """Wait until the service's consumer group has committed every message on the topic."""
    for _ in range(int(within / 0.2)):
        if _died(processes):
            return False
        if not await consumer_lag(bootstrap, consumer_group(service), topic):
            return True
        await asyncio.sleep(0.2)
    return False


def _read_service_database(service: str, tables: list[Table], read: Callable[[Session], T]) -> T | None:
    """Read one service's SQLite file after the run; None if the service never wrote one."""
    path: Path = RUN_DIR / "data" / f"{service}.db"
    if not path.exists():
        return None
    engine = create_service_engine(f"sqlite:///{path}", service, tables)
    try:
        with Session(engine) as session:
            return read(session)
    finally:
        engine.dispose()


def _decision_log() -> tuple[int, str | None] | None:
    def check(session: Session) -> tuple[int, str | None]:
        verification = verify_log(session)
        problems = [gap.describe() for gap in verification.gaps]
        if (broken := verification.broken) is not None:
            problems.insert(0, f"entry {broken.seq}: {broken.reason}")
        return verification.entries, "; ".join(problems) or None

    return _read_service_database("governance", GOVERNANCE_TABLES, check)


def _issue_all_invoices(tenants: dict[str, Tenant]) -> list[InvoiceIssued]:
    path = RUN_DIR / "data" / "billing.db"
    if not path.exists():
        return []
    engine = create_service_engine(f"sqlite:///{path}", "billing", BILLING_TABLES)
    context = BillingContext(fee_bps=Settings().marketplace_fee_bps, tenants=tenants)
    try:
        with unit_of_work(engine) as session:
            drafts = [
                (i.tenant_id, i.period)
                for i in session.exec(select(InvoiceRow).where(InvoiceRow.status == "draft"))
            ]
            return [
                issue_invoice(context, session, tenant, period, utc_now())
                for tenant, period in sorted(drafts)
            ]
    finally:
        engine.dispose()


def register(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="run the whole marketplace on embedded defaults and report")
    demo.add_argument("--jobs", type=int, default=48, help="how many job requests to submit")
    demo.add_argument("--seed", type=int, default=2027)
    demo.add_argument("--time-scale", type=float, default=14400.0, help="simulated seconds per real second")
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every outcome")
    demo.add_argument("--placement-workers", type=int, default=2)
    demo.add_argument(
        "--slurm",
        action="store_true",
        help=f"run {SLURM_SITE}'s jobs on a local Slurm cluster (Debian's Slurm 22.05), not the simulation",
    )
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    return run_demo(
        jobs=args.jobs,
        seed=args.seed,
        time_scale=args.time_scale,
        wait_seconds=args.timeout,
        placement_workers=args.placement_workers,
        slurm=args.slurm,
    )
