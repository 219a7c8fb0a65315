"""Command-line entry point: `sovereign demo | run SERVICE | submit JOB.json | broker | contracts`."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from services.placement.logic import JobState
from services.registry import SERVICES
from services.shared.settings import Settings
from sovereign.replay import REPLAYABLE, replay


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "bootstrap_servers", None):
        settings = replace(settings, bootstrap_servers=args.bootstrap_servers)
    if getattr(args, "database_url", None):
        settings = replace(settings, database_url=args.database_url)
    if getattr(args, "data_dir", None):
        settings = replace(settings, data_dir=Path(args.data_dir))
    return settings


def _run(args: argparse.Namespace) -> int:
    from services.shared.logging import configure_logging
    from services.shared.runtime import serve_until_signalled

    configure_logging(args.service, os.environ.get("LOG_LEVEL", "INFO"))
    service = SERVICES[args.service].build(_settings(args))
    asyncio.run(serve_until_signalled(service))
    return 0


def _broker(args: argparse.Namespace) -> int:
    from services.shared.catalogue import load_catalogue
    from sovereign.embedded import serve_embedded_broker

    tenants = load_catalogue(Settings.from_env().catalogue_dir).tenants
    return serve_embedded_broker(args.port, args.partitions, tenants)


def _submit(args: argparse.Namespace) -> int:
    from sovereign.submit import submit

    return asyncio.run(submit(Path(args.job), _settings(args), args.timeout))


def _demo(args: argparse.Namespace) -> int:
    from sovereign.demo import run_demo

    return run_demo(
        jobs=args.jobs,
        seed=args.seed,
        time_scale=args.time_scale,
        wait_seconds=args.timeout,
        placement_workers=args.placement_workers,
    )


def _contracts(args: argparse.Namespace) -> int:
    from sovereign.contracts_export import export_contracts

    return export_contracts(check=args.check)


def _policy_test(args: argparse.Namespace) -> int:
    from sovereign.policy_commands import policy_test

    settings = Settings.from_env()
    return policy_test(Path(args.dir) if args.dir else settings.policy_dir, settings.catalogue_dir)


def _decisions_list(args: argparse.Namespace) -> int:
    from services.governance.queries import DecisionQuery
    from sovereign.decision_commands import list_decisions

    query = DecisionQuery(
        job_id=args.job,
        tenant_id=args.tenant,
        site_id=args.site,
        rule=args.rule,
        policy_revision=args.revision,
    )
    return list_decisions(_settings(args), query, args.limit)


def _decisions_verify(args: argparse.Namespace) -> int:
    from sovereign.decision_commands import verify_decisions

    return verify_decisions(_settings(args))


def _policy_publish(args: argparse.Namespace) -> int:
    from sovereign.policy_commands import policy_publish

    directory = Path(args.dir) if args.dir else Settings.from_env().policy_dir
    return asyncio.run(policy_publish(directory, _settings(args), args.by))


def _policy_diff(args: argparse.Namespace) -> int:
    from sovereign.policy_commands import policy_diff

    return policy_diff(args.old, args.new, _settings(args))


def _policy_what_if(args: argparse.Namespace) -> int:
    from services.governance.what_if import Scope
    from sovereign.policy_commands import policy_what_if

    scope = Scope(
        tenants=frozenset(args.tenant or ()),
        since=args.since,
        until=args.until,
        rules=frozenset(rule.upper() for rule in args.rule or ()),
    )
    return policy_what_if(args.against, _settings(args), args.current, scope, as_json=args.json)


def _moment(text: str) -> datetime:
    """A date (its start, UTC) or a date and time (UTC unless it has an offset)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or an ISO date and time"
        ) from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _period(text: str) -> str:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a month as YYYY-MM")
    return text


def _usage(args: argparse.Namespace) -> int:
    from sovereign.billing_commands import show_usage

    return show_usage(_settings(args), args.tenant, args.period)


def _invoice(args: argparse.Namespace) -> int:
    from sovereign.billing_commands import invoice_command

    if (args.period is None) == (args.invoice_id is None):
        print("error: give exactly one of --period and --invoice-id", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else None
    invoice_id = uuid.UUID(args.invoice_id) if args.invoice_id else None
    return invoice_command(
        _settings(args), args.tenant, args.period, invoice_id, args.issue, args.format, output
    )


def _billing_check(args: argparse.Namespace) -> int:
    from sovereign.billing_commands import billing_check

    return billing_check(_settings(args))


def _status(args: argparse.Namespace) -> int:
    from sovereign.status import status_command

    return status_command(_settings(args), args.service, args.this_host)


def _replay(args: argparse.Namespace) -> int:
    source = _settings(args)
    target = replace(source, data_dir=Path(args.into_data_dir), database_url=args.into_database_url)
    count = asyncio.run(replay(SERVICES[args.service].build, source, target))
    print(f"{args.service}: {count} events replayed into a fresh database")
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from sovereign.job_commands import list_jobs

    return list_jobs(_settings(args), args.state, args.tenant)


def _cancel(args: argparse.Namespace) -> int:
    from contracts import job_id_for
    from sovereign.submit import cancel

    job_id = uuid.UUID(args.job_id) if args.job_id else job_id_for(args.tenant, args.client_request_id)
    return asyncio.run(cancel(_settings(args), args.tenant, job_id, args.reason))


def _auditor_keygen(args: argparse.Namespace) -> int:
    from sovereign.auditor_commands import auditor_keygen

    return auditor_keygen(Path(args.dir), args.key_id)


def _attest_verify(args: argparse.Namespace) -> int:
    from sovereign.attest_commands import attest_verify

    events = Path(args.events) if args.events else None
    keyring = Path(args.keyring) if args.keyring else None
    return asyncio.run(attest_verify(events, keyring, args.month, _settings(args)))


def _acls(args: argparse.Namespace) -> int:
    from sovereign.acls import all_grants, render_table

    print(render_table(all_grants(Settings.from_env())), end="")
    return 0


def _kafka_init(args: argparse.Namespace) -> int:
    from sovereign.kafka_init import KafkaInitError, kafka_init

    settings = _settings(args)
    try:
        report = asyncio.run(kafka_init(settings, Path(args.secrets_dir), settings.topic_partitions))
    except (KafkaInitError, OSError, ValueError) as error:
        print(f"kafka-init failed: {error}", file=sys.stderr)
        return 1
    print(f"kafka-init: {report.topics} topics, {len(report.users)} SCRAM users, {report.acls} ACLs")
    if report.missing_passwords:
        print(f"no password file, so no login, for: {', '.join(report.missing_passwords)}", file=sys.stderr)
    return 0


def _keys_new(args: argparse.Namespace) -> int:
    from services.shared.signing import KeyRole, make_key

    if args.role == KeyRole.FACTORY and not args.site:
        print("error: a factory key needs at least one --site it speaks for", file=sys.stderr)
        return 2
    directory = Path(args.dir)
    try:
        make_key(directory, args.key_id, KeyRole(args.role), args.principal, args.site)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"private key {directory / f'{args.key_id}.key'} (keep it secret); "
        f"public key listed in {directory / 'keyring.json'}"
    )
    return 0


def _auditor_sign(args: argparse.Namespace) -> int:
    from sovereign.auditor_commands import auditor_sign

    catalogue = Path(args.catalogue) if args.catalogue else Settings.from_env().catalogue_dir
    return auditor_sign(Path(args.key), args.key_id, catalogue, Path(args.out), args.skip)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sovereign", description="Sovereign AI job marketplace")
    commands = parser.add_subparsers(dest="command", required=True)

    def connection_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--bootstrap-servers", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)"
        )
        command.add_argument(
            "--database-url", help="SQLAlchemy URL (env DATABASE_URL); default: SQLite per service"
        )
        command.add_argument("--data-dir", help="where SQLite files live (env SOVEREIGN_DATA_DIR)")

    run = commands.add_parser("run", help="run one service until SIGTERM or Ctrl-C")
    run.add_argument("service", choices=sorted(SERVICES))
    connection_options(run)
    run.set_defaults(handler=_run)

    status = commands.add_parser(
        "status",
        help="each service's workers, consumer lag, outbox and dead letters; exit 1 if one is not ready",
    )
    status.add_argument("--service", choices=sorted(SERVICES), help="only this service")
    status.add_argument(
        "--this-host", action="store_true", help="only workers on this host (a container's health check)"
    )
    connection_options(status)
    status.set_defaults(handler=_status)

    replay = commands.add_parser(
        "replay", help="rebuild a service's database from its topics, read from offset zero"
    )
    replay.add_argument("service", choices=REPLAYABLE)
    replay.add_argument("--into-data-dir", required=True, help="where the fresh SQLite file is written")
    replay.add_argument("--into-database-url", help="a fresh database instead (e.g. PostgreSQL)")
    connection_options(replay)
    replay.set_defaults(handler=_replay)

    broker = commands.add_parser("broker", help="start the embedded Tansu broker and print its address")
    broker.add_argument("--port", type=int, default=None, help="default: a free loopback port")
    broker.add_argument("--partitions", type=int, default=4)
    broker.set_defaults(handler=_broker)

    submit = commands.add_parser("submit", help="submit a job request (JSON) and follow it to its outcome")
    submit.add_argument("job", help="path to a JSON job request; '-' reads standard input")
    submit.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the outcome")
    connection_options(submit)
    submit.set_defaults(handler=_submit)

    cancel = commands.add_parser("cancel", help="cancel a job at whatever stage it is")
    cancel.add_argument("--tenant", required=True)
    target = cancel.add_mutually_exclusive_group(required=True)
    target.add_argument("--job-id")
    target.add_argument("--client-request-id")
    cancel.add_argument("--reason", default="")
    connection_options(cancel)
    cancel.set_defaults(handler=_cancel)

    demo = commands.add_parser("demo", help="run the whole marketplace on embedded defaults and report")
    demo.add_argument("--jobs", type=int, default=48, help="how many job requests to submit")
    demo.add_argument("--seed", type=int, default=2027)
    demo.add_argument("--time-scale", type=float, default=14400.0, help="simulated seconds per real second")
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every outcome")
    demo.add_argument("--placement-workers", type=int, default=2)
    demo.set_defaults(handler=_demo)

    contracts = commands.add_parser("contracts", help="export pinned JSON Schemas and AsyncAPI documents")
    contracts.add_argument("--check", action="store_true", help="only report drift; write nothing")
    contracts.set_defaults(handler=_contracts)
    policy = commands.add_parser("policy", help="compliance officer's commands").add_subparsers(
        dest="policy_command", required=True
    )
    policy_test = policy.add_parser("test", help="run every Rego test and report the rules exercised")
    policy_test.add_argument("--dir", help="policy directory (default: policies/, env SOVEREIGN_POLICY_DIR)")
    policy_test.set_defaults(handler=_policy_test)
    publish = policy.add_parser("publish", help="test a revision in a child process, then publish it")
    publish.add_argument("--dir", help="policy directory (default: policies/)")
    publish.add_argument("--by", required=True, help="who publishes (recorded with the revision)")
    connection_options(publish)
    publish.set_defaults(handler=_policy_publish)
    diff = policy.add_parser("diff", help="which rules changed between two revisions (directories or ids)")
    diff.add_argument("old")
    diff.add_argument("new")
    connection_options(diff)
    diff.set_defaults(handler=_policy_diff)
    what_if = policy.add_parser(
        "what-if",
        help="replay recorded decisions under a candidate revision and the current one; exit 1 if the "
        "candidate would place a job somewhere a current rule forbids",
    )
    what_if.add_argument("--against", required=True, help="a policy directory or a published revision id")
    what_if.add_argument(
        "--current",
        help="the baseline revision (a directory or a published id); default: the latest published, "
        "else the policy directory (env SOVEREIGN_POLICY_DIR)",
    )
    what_if.add_argument("--tenant", action="append", help="only this tenant's jobs (repeatable)")
    what_if.add_argument("--since", type=_moment, help="only decisions made at or after this date or time")
    what_if.add_argument("--until", type=_moment, help="only decisions made before this date or time")
    what_if.add_argument(
        "--rule", action="append", help="only jobs for which this rule's findings change (repeatable)"
    )
    what_if.add_argument("--json", action="store_true", help="the report as JSON, for a review record")
    connection_options(what_if)
    what_if.set_defaults(handler=_policy_what_if)

    jobs = commands.add_parser("jobs", help="jobs by state; queued jobs with their position and reason")
    jobs.add_argument(
        "--state",
        choices=[state.value for state in JobState],
    )
    jobs.add_argument("--tenant", help="only this tenant's jobs")
    connection_options(jobs)
    jobs.set_defaults(handler=_jobs)

    usage = commands.add_parser(
        "usage", help="a tenant's usage in a month: by site and accelerator, budget left"
    )
    usage.add_argument("--tenant", required=True, help="who is asking: only its own records are shown")
    usage.add_argument("--period", required=True, type=_period, help="YYYY-MM (months in KST)")
    connection_options(usage)
    usage.set_defaults(handler=_usage)

    invoice = commands.add_parser("invoice", help="show, export or issue a tenant's monthly invoice")
    invoice.add_argument("--tenant", required=True, help="who is asking: only its own invoices are shown")
    invoice.add_argument("--period", type=_period, help="YYYY-MM")
    invoice.add_argument("--invoice-id", help="an invoice id instead of a period")
    invoice.add_argument("--issue", action="store_true", help="issue the draft: immutable afterwards")
    invoice.add_argument("--format", choices=["text", "json", "csv"], default="text")
    invoice.add_argument("--output", help="write to this file instead of standard output")
    connection_options(invoice)
    invoice.set_defaults(handler=_invoice)

    billing = commands.add_parser("billing", help="finance checks").add_subparsers(
        dest="billing_command", required=True
    )
    check = billing.add_parser(
        "check", help="recompute every charge and invoice from stored usage; prove debits equal credits"
    )
    connection_options(check)
    check.set_defaults(handler=_billing_check)

    attest = commands.add_parser("attest", help="the marketplace's placement attestations").add_subparsers(
        dest="attest_command", required=True
    )
    verify = attest.add_parser(
        "verify", help="check placement attestations offline, from jobs.placed events and the public keys"
    )
    verify.add_argument(
        "events",
        nargs="?",
        help="a jobs.placed event (JSON) or many (JSON lines), '-' for stdin; none: the topic",
    )
    verify.add_argument("--keyring", help="the keyring holding the marketplace's key (env SOVEREIGN_KEYRING)")
    verify.add_argument("--month", type=_period, help="only the placements of this month (YYYY-MM, KST)")
    connection_options(verify)
    verify.set_defaults(handler=_attest_verify)

    acls = commands.add_parser("acls", help="the Kafka ACLs each principal needs, derived from the code")
    acls.set_defaults(handler=_acls)

    kafka_init = commands.add_parser(
        "kafka-init",
        help="as the Kafka admin: every topic, a SCRAM credential per principal, the ACLs",
    )
    kafka_init.add_argument(
        "--secrets-dir",
        default="/run/secrets",
        help="where each principal's password is, as kafka-<principal> (default: compose's /run/secrets)",
    )
    connection_options(kafka_init)
    kafka_init.set_defaults(handler=_kafka_init)

    keys = commands.add_parser("keys", help="signing keys of tenants, factories and officers").add_subparsers(
        dest="keys_command", required=True
    )
    new_key = keys.add_parser("new", help="make an Ed25519 key pair and list its public key in keyring.json")
    new_key.add_argument("--dir", required=True, help="where to write KEY_ID.key and keyring.json")
    new_key.add_argument("--key-id", required=True)
    new_key.add_argument("--role", required=True, choices=["tenant", "factory", "officer", "marketplace"])
    new_key.add_argument("--principal", required=True, help="the tenant id, factory or officer name")
    new_key.add_argument("--site", action="append", default=[], help="a site a factory key speaks for")
    new_key.set_defaults(handler=_keys_new)

    auditor = commands.add_parser("auditor", help="an auditor's keys and signatures").add_subparsers(
        dest="auditor_command", required=True
    )
    keygen = auditor.add_parser("keygen", help="make an Ed25519 key pair and list its public key")
    keygen.add_argument("--dir", required=True, help="where to write KEY_ID.key and auditors.json")
    keygen.add_argument("--key-id", required=True)
    keygen.set_defaults(handler=_auditor_keygen)
    sign = auditor.add_parser("sign", help="sign the catalogue sites' attributes")
    sign.add_argument("--key", required=True, help="the auditor's private key (PEM)")
    sign.add_argument("--key-id", required=True)
    sign.add_argument("--catalogue", help="catalogue directory (default: catalogue/)")
    sign.add_argument("--out", required=True, help="attestations JSON for the factory agent")
    sign.add_argument("--skip", action="append", default=[], help="a site not to vouch for (repeatable)")
    sign.set_defaults(handler=_auditor_sign)

    decisions = commands.add_parser(
        "decisions", help="the auditor's view of the decision log"
    ).add_subparsers(dest="decisions_command", required=True)
    listing = decisions.add_parser("list", help="list logged decisions, filtered")
    for name in ("job", "tenant", "site", "rule", "revision"):
        listing.add_argument(f"--{name}", help=f"only decisions for this {name} (revision: a prefix)")
    listing.add_argument("--limit", type=int, default=200)
    connection_options(listing)
    listing.set_defaults(handler=_decisions_list)
    verify = decisions.add_parser(
        "verify", help="check the log's hash chain; non-zero if any entry was altered"
    )
    connection_options(verify)
    verify.set_defaults(handler=_decisions_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
