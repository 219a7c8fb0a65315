"""The compliance officer's console over HTTP (issue 32, in part): officers sign in with argon2id-hashed
passwords, sessions and changes carry the protections the issue names, and the decision search pages
through governance's log. The browser tests (Playwright on Chromium) are still to come."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from services.governance import handlers as governance
from services.governance.console.accounts import (
    CONSOLE_TABLES,
    FAILED_SIGN_INS_ALLOWED,
    AccountError,
    FailedSignIn,
    OfficerRow,
    Role,
    SessionRow,
    add_officer,
    sign_in,
    signed_in,
)
from services.governance.console.app import PAGE_SIZE, SECURITY_HEADERS, SESSION_COOKIE, build_console
from services.governance.storage import TABLES as GOVERNANCE_TABLES
from services.shared.db import unit_of_work, utc_now
from tests.storage_support import decision_event, make_engine

PASSWORD = "correct horse battery"


@pytest.fixture
def engine(database_url: tuple[str, str]) -> Engine:
    engine = make_engine(database_url, "governance", [*GOVERNANCE_TABLES, *CONSOLE_TABLES])
    with unit_of_work(engine) as session:
        add_officer(session, "kim", Role.AUDITOR, PASSWORD)
    return engine


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def signed_in_client(engine: Engine, name: str = "kim", password: str = PASSWORD) -> TestClient:
    client = TestClient(build_console(engine), follow_redirects=False)
    form = client.get("/sign-in")
    answer = client.post("/sign-in", data={"name": name, "password": password, "csrf": csrf_of(form.text)})
    assert answer.status_code == 303, answer.text
    return client


def test_passwords_are_kept_as_argon2id_hashes_and_weak_or_odd_accounts_are_refused(engine: Engine) -> None:
    with Session(engine) as session:
        row = session.get(OfficerRow, "kim")
        assert (
            row is not None
            and row.password_hash.startswith("$argon2id$")
            and PASSWORD not in row.password_hash
        )
        for name, password in [("lee", "short"), ("kim", PASSWORD), (" lee", PASSWORD), ("", PASSWORD)]:
            with pytest.raises(AccountError):
                add_officer(session, name, Role.ANALYST, password)


def test_an_officer_signs_in_and_finds_decisions_page_by_page(engine: Engine) -> None:
    jobs = [uuid.uuid4() for _ in range(PAGE_SIZE + 3)]
    for index, job in enumerate(jobs):
        with unit_of_work(engine) as session:
            governance.on_policy_decision(session, decision_event(job, tenant="nia" if index % 2 else "mois"))
    client = signed_in_client(engine)
    cookie = client.cookies.jar
    session_cookie = next(c for c in cookie if c.name == SESSION_COOKIE)
    assert session_cookie.has_nonstandard_attr("HttpOnly")
    page = client.get("/decisions")
    assert page.status_code == 200 and "kim (auditor)" in page.text
    for header, value in SECURITY_HEADERS.items():
        assert page.headers[header] == value
    assert "<script" not in page.text  # no inline script for the policy to allow
    first = client.get("/api/decisions").json()
    assert len(first["decisions"]) == PAGE_SIZE and first["next_after"] == first["decisions"][-1]["seq"]
    rest = client.get("/api/decisions", params={"after": first["next_after"]}).json()
    assert len(rest["decisions"]) == 3 and rest["next_after"] is None
    assert {d["job_id"] for d in first["decisions"] + rest["decisions"]} == {str(j) for j in jobs}
    only_nia = client.get("/api/decisions", params={"tenant": "nia", "rule": "res-01"}).json()["decisions"]
    assert only_nia and all(d["tenant_id"] == "nia" and d["rules"] == ["RES-01"] for d in only_nia)
    by_job = client.get("/decisions", params={"job": str(jobs[7])})
    assert str(jobs[7]) in by_job.text and str(jobs[8]) not in by_job.text


def test_without_a_session_pages_send_to_sign_in_and_the_api_answers_401(engine: Engine) -> None:
    client = TestClient(build_console(engine), follow_redirects=False)
    assert client.get("/decisions").headers["location"] == "/sign-in"
    assert client.get("/api/decisions").status_code == 401
    client.cookies.set(SESSION_COOKIE, "forged")
    assert client.get("/api/decisions").status_code == 401


def test_a_wrong_password_or_name_is_refused_alike_and_guessing_is_stopped(engine: Engine) -> None:
    client = TestClient(build_console(engine), follow_redirects=False)
    for name in ("kim", "nobody"):
        form = client.get("/sign-in")
        answer = client.post("/sign-in", data={"name": name, "password": "wrong", "csrf": csrf_of(form.text)})
        assert answer.status_code == 401 and "do not sign in" in answer.text
        assert SESSION_COOKIE not in answer.cookies
    with unit_of_work(engine) as session:
        for _ in range(FAILED_SIGN_INS_ALLOWED):
            assert sign_in(session, "kim", "wrong") is None
        # Stopped now, even with the right password; after the window it signs in again.
        assert sign_in(session, "kim", PASSWORD) is None
        assert sign_in(session, "kim", PASSWORD, utc_now() + timedelta(minutes=16)) is not None


def test_a_sign_in_or_sign_out_without_its_csrf_token_is_refused(engine: Engine) -> None:
    client = TestClient(build_console(engine), follow_redirects=False)
    client.get("/sign-in")
    refused = client.post("/sign-in", data={"name": "kim", "password": PASSWORD, "csrf": "guessed"})
    assert refused.status_code == 403 and SESSION_COOKIE not in refused.cookies
    signed = signed_in_client(engine)
    page = signed.get("/decisions")
    assert signed.post("/sign-out", data={"csrf": "guessed"}).status_code == 403
    assert signed.get("/api/decisions").status_code == 200  # still signed in
    assert signed.post("/sign-out", data={"csrf": csrf_of(page.text)}).status_code == 303
    token = next(c.value for c in signed.cookies.jar if c.name == SESSION_COOKIE) if signed.cookies else None
    with Session(engine) as session:
        assert token is None or signed_in(session, token) is None


def test_a_session_expires(engine: Engine) -> None:
    with unit_of_work(engine) as session:
        started = sign_in(session, "kim", PASSWORD)
        assert started is not None
        assert signed_in(session, started.token) is not None
        assert signed_in(session, started.token, utc_now() + timedelta(hours=9)) is None
        assert sign_in(session, "kim", "wrong") is None
        # The next attempt, a day later, clears the expired session and the stale failure.
        assert sign_in(session, "kim", PASSWORD, utc_now() + timedelta(days=1)) is not None
        assert len(session.exec(select(SessionRow)).all()) == 1
        assert session.exec(select(FailedSignIn)).all() == []


def test_a_jobs_page_explains_every_site_of_each_of_its_decisions(engine: Engine) -> None:
    job = uuid.uuid4()
    event = decision_event(job, rule="PIPA-01")
    tokyo = event.data.sites[1]
    hostile = tokyo.violations[0].model_copy(update={"message": "tokyo is in JP <script>alert(1)</script>"})
    sites = [event.data.sites[0], tokyo.model_copy(update={"violations": [hostile]})]
    event = event.model_copy(update={"data": event.data.model_copy(update={"sites": sites})})
    with unit_of_work(engine) as session:
        governance.on_policy_decision(session, event)
    client = signed_in_client(engine)
    listing = client.get("/decisions")
    assert f'href="/jobs/{job}"' in listing.text
    page = client.get(f"/jobs/{job}")
    assert page.status_code == 200
    assert (
        "PIPA-01" in page.text and "tokyo is in JP" in page.text and "no rule found against it" in page.text
    )
    [decision] = client.get(f"/api/jobs/{job}").json()["decisions"]
    verdicts = {site["site_id"]: site for site in decision["site_verdicts"]}
    assert verdicts["tokyo"]["allowed"] is False and verdicts["seoul"]["allowed"] is True
    assert verdicts["tokyo"]["violations"][0] == {
        "rule": "PIPA-01",
        "message": "tokyo is in JP <script>alert(1)</script>",  # as logged: escaping is the page's
        "mode": "deny",
    }
    assert client.get(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get(f"/api/jobs/{uuid.uuid4()}").status_code == 404
