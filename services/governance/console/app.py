"""The compliance officer's console: server-rendered pages and a JSON API over governance's database,
for signed-in officers only. Every response forbids inline script and framing (Content-Security-Policy);
every change (signing in and out) carries a CSRF token; session cookies are HttpOnly and SameSite=Strict
(and Secure when served behind TLS)."""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations, and those naming the
# dependencies defined inside build_console are only resolvable where they are written.
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from sqlmodel import Session

from services.governance.console.accounts import Role, SignedIn, sign_in, sign_out, signed_in
from services.governance.queries import DecisionQuery, find_decisions, summarize
from services.governance.storage import DecisionLogEntry, DecisionOutcome
from services.shared.db import unit_of_work

HERE = Path(__file__).parent
SESSION_COOKIE = "console_session"
SIGN_IN_CSRF_COOKIE = "console_sign_in_csrf"
PAGE_SIZE = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SignInNeeded(Exception):
    """A page asked for without a session: the browser is sent to sign in, an API client gets 401."""


def build_console(engine: Engine, secure_cookies: bool = False) -> FastAPI:
    app = FastAPI(title="Sovereign marketplace: compliance officer's console", docs_url=None, redoc_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @contextmanager
    def transaction() -> Iterator[Session]:
        with unit_of_work(engine) as session:
            yield session

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(SignInNeeded)
    async def to_sign_in(request: Request, _: SignInNeeded) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        return RedirectResponse("/sign-in", status_code=303)

    def officer(request: Request) -> SignedIn:
        with transaction() as session:
            current = signed_in(session, request.cookies.get(SESSION_COOKIE))
        if current is None:
            raise SignInNeeded
        return current

    def auditor(current: Annotated[SignedIn, Depends(officer)]) -> SignedIn:
        if not current.officer.role.may(Role.AUDITOR):
            raise HTTPException(403, "auditors and above only")
        return current

    @app.get("/sign-in", response_class=HTMLResponse)
    def sign_in_page(request: Request) -> Response:
        csrf = secrets.token_urlsafe(32)
        response = templates.TemplateResponse(request, "sign_in.html", {"csrf": csrf, "failed": False})
        _set_cookie(response, SIGN_IN_CSRF_COOKIE, csrf, secure_cookies)
        return response

    @app.post("/sign-in", response_class=HTMLResponse)
    def sign_in_action(
        request: Request,
        name: Annotated[str, Form()],
        password: Annotated[str, Form()],
        csrf: Annotated[str, Form()],
    ) -> Response:
        expected = request.cookies.get(SIGN_IN_CSRF_COOKIE)
        if not expected or not secrets.compare_digest(expected, csrf):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: load the sign-in page again")
        with transaction() as session:
            started = sign_in(session, name, password)
        if started is None:
            fresh = secrets.token_urlsafe(32)
            refused = templates.TemplateResponse(
                request, "sign_in.html", {"csrf": fresh, "failed": True}, status_code=401
            )
            _set_cookie(refused, SIGN_IN_CSRF_COOKIE, fresh, secure_cookies)
            return refused
        response = RedirectResponse("/decisions", status_code=303)
        _set_cookie(response, SESSION_COOKIE, started.token, secure_cookies)
        response.delete_cookie(SIGN_IN_CSRF_COOKIE)
        return response

    @app.post("/sign-out")
    def sign_out_action(
        current: Annotated[SignedIn, Depends(officer)], csrf: Annotated[str, Form()]
    ) -> Response:
        _require_csrf(current, csrf)
        with transaction() as session:
            sign_out(session, current.token)
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/decisions", status_code=303)

    @app.get("/decisions", response_class=HTMLResponse)
    def decisions_page(
        request: Request, current: Annotated[SignedIn, Depends(auditor)], after: int = 0
    ) -> Response:
        query = _query(request)
        with transaction() as session:
            rows = [_summary(entry) for entry in find_decisions(session, query, PAGE_SIZE, after)]
        following = rows[-1]["seq"] if len(rows) == PAGE_SIZE else None
        filters = {k: v for k, v in request.query_params.items() if k != "after" and v}
        return templates.TemplateResponse(
            request,
            "decisions.html",
            {"officer": current, "rows": rows, "filters": filters, "following": following},
        )

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, current: Annotated[SignedIn, Depends(auditor)], job_id: str) -> Response:
        with transaction() as session:
            decisions = _job_decisions(session, job_id)
        return templates.TemplateResponse(
            request,
            "job.html",
            {"officer": current, "job_id": job_id, "decisions": decisions},
            status_code=200 if decisions else 404,
        )

    @app.get("/api/jobs/{job_id}")
    def job_api(_: Annotated[SignedIn, Depends(auditor)], job_id: str) -> dict[str, Any]:
        with transaction() as session:
            decisions = _job_decisions(session, job_id)
        if not decisions:
            raise HTTPException(404, f"no decision is logged for job {job_id}")
        return {"job_id": job_id, "decisions": decisions}

    @app.get("/api/decisions")
    def decisions_api(
        request: Request, _: Annotated[SignedIn, Depends(auditor)], after: int = 0
    ) -> dict[str, Any]:
        with transaction() as session:
            rows = [_summary(entry) for entry in find_decisions(session, _query(request), PAGE_SIZE, after)]
        return {"decisions": rows, "next_after": rows[-1]["seq"] if len(rows) == PAGE_SIZE else None}

    return app


def _query(request: Request) -> DecisionQuery:
    value = request.query_params.get
    return DecisionQuery(
        job_id=value("job") or None,
        tenant_id=value("tenant") or None,
        site_id=value("site") or None,
        rule=(value("rule") or "").upper() or None,
        policy_revision=value("revision") or None,
    )


def _summary(entry: DecisionLogEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "decision_id": entry.decision_id,
        "decided_at": entry.decided_at.isoformat(),
        "job_id": entry.job_id,
        "tenant_id": entry.tenant_id,
        "policy_revision": entry.policy_revision,
        **asdict(summarize(entry)),
    }


def _job_decisions(session: Session, job_id: str) -> list[dict[str, Any]]:
    """Every decision logged for the job, oldest first: each site's verdict with every finding (rule, mode,
    message; exemptions with their approver and expiry), and what placement did with it."""
    decisions = []
    for entry in find_decisions(session, DecisionQuery(job_id=job_id)):
        outcome = session.get(DecisionOutcome, entry.decision_id)
        decisions.append(
            {
                **_summary(entry),
                "engine": entry.content["decision"].get("engine"),
                "site_verdicts": entry.content["decision"]["sites"],
                "outcome": None
                if outcome is None
                else {"outcome": outcome.outcome, "site_id": outcome.site_id, "code": outcome.code},
            }
        )
    return decisions


def _require_csrf(current: SignedIn, csrf: str) -> None:
    if not secrets.compare_digest(current.csrf_token, csrf):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")


def _set_cookie(response: Response, name: str, value: str, secure: bool) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", secure=secure, path="/")
