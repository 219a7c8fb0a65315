"""The console's officers and their sessions, kept in governance's database: passwords as argon2id hashes,
sessions as the hash of a random token (the cookie holds the token), each with its own CSRF token, and
sign-in attempts counted per officer so that guessing is slow."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Field, Session, SQLModel, col, delete, func, select

from services.shared.db import as_utc, table_of, utc_now

SESSION_LIFETIME = timedelta(hours=8)
# At most this many failed sign-ins per officer name within the window; further attempts are refused
# unread until it has passed.
FAILED_SIGN_INS_ALLOWED = 5
FAILED_SIGN_IN_WINDOW = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 12
NAME_LENGTH = 64

_HASHER = PasswordHasher()  # argon2id, with the library's recommended cost
# Verified against when no officer has the name, so that an unknown name takes as long as a wrong password.
_UNKNOWN_OFFICER = _HASHER.hash(secrets.token_hex(16))


class Role(StrEnum):
    """What an officer may do: each role may do what the ones before it may."""

    AUDITOR = "auditor"  # read the log, decisions and revisions
    ANALYST = "analyst"  # also run what-if
    PUBLISHER = "publisher"  # also publish and approve

    def may(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


class OfficerRow(SQLModel, table=True):
    __tablename__ = "console_officers"

    name: str = Field(primary_key=True, max_length=NAME_LENGTH)
    role: str = Field(max_length=16)
    password_hash: str
    created_at: datetime = Field(default_factory=utc_now)


class SessionRow(SQLModel, table=True):
    __tablename__ = "console_sessions"

    token_hash: str = Field(primary_key=True, max_length=64)
    officer: str = Field(index=True, max_length=NAME_LENGTH)
    csrf_token: str = Field(max_length=64)
    expires_at: datetime


class FailedSignIn(SQLModel, table=True):
    __tablename__ = "console_failed_sign_ins"

    id: int | None = Field(default=None, primary_key=True)
    officer: str = Field(index=True, max_length=NAME_LENGTH)
    at: datetime = Field(default_factory=utc_now)


CONSOLE_TABLES = [table_of(OfficerRow), table_of(SessionRow), table_of(FailedSignIn)]


class AccountError(ValueError):
    """An officer account that cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class Officer:
    name: str
    role: Role


@dataclass(frozen=True)
class SignedIn:
    officer: Officer
    token: str  # for the cookie, never stored
    csrf_token: str


def add_officer(session: Session, name: str, role: Role, password: str) -> Officer:
    if not name or len(name) > NAME_LENGTH or not name.isprintable() or name.strip() != name:
        raise AccountError(f"an officer's name is 1 to {NAME_LENGTH} printable characters, not {name!r}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if session.get(OfficerRow, name) is not None:
        raise AccountError(f"officer {name!r} exists already")
    session.add(OfficerRow(name=name, role=role.value, password_hash=_HASHER.hash(password)))
    return Officer(name, role)


def sign_in(session: Session, name: str, password: str, now: datetime | None = None) -> SignedIn | None:
    """A new session for the officer if the password is theirs; None otherwise, or when too many attempts
    have failed for that name lately (the password is then not even checked)."""
    now = now or utc_now()
    name = name[:NAME_LENGTH]
    # What no longer counts goes at every attempt, so that neither table grows without end.
    session.execute(delete(SessionRow).where(col(SessionRow.expires_at) <= now))
    session.execute(delete(FailedSignIn).where(col(FailedSignIn.at) <= now - FAILED_SIGN_IN_WINDOW))
    failures = session.exec(
        select(func.count())
        .select_from(FailedSignIn)
        .where(FailedSignIn.officer == name, col(FailedSignIn.at) > now - FAILED_SIGN_IN_WINDOW)
    ).one()
    if failures >= FAILED_SIGN_INS_ALLOWED:
        return None
    row = session.get(OfficerRow, name)
    try:
        _HASHER.verify(row.password_hash if row else _UNKNOWN_OFFICER, password)
    except (VerificationError, InvalidHashError):
        session.add(FailedSignIn(officer=name, at=now))
        return None
    if row is None:
        return None
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        SessionRow(
            token_hash=_digest(token), officer=row.name, csrf_token=csrf, expires_at=now + SESSION_LIFETIME
        )
    )
    session.execute(delete(FailedSignIn).where(col(FailedSignIn.officer) == name))
    return SignedIn(Officer(row.name, Role(row.role)), token, csrf)


def signed_in(session: Session, token: str | None, now: datetime | None = None) -> SignedIn | None:
    """The session a cookie's token opens, if it is one and has not expired."""
    if not token:
        return None
    row = session.get(SessionRow, _digest(token))
    if row is None or as_utc(row.expires_at) <= (now or utc_now()):
        return None
    officer = session.get(OfficerRow, row.officer)
    if officer is None:
        return None
    return SignedIn(Officer(officer.name, Role(officer.role)), token, row.csrf_token)


def sign_out(session: Session, token: str) -> None:
    session.execute(delete(SessionRow).where(col(SessionRow.token_hash) == _digest(token)))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
