"""A client's sending policy: the defaults, reading it, and changing it (`/v1/settings`).

What is stored is what the client chose (`ClientPolicy`, None/absent for a default), so a
change of a default reaches every client that never chose; what the code uses is `Policy`,
with the defaults filled in and the quiet window parsed once. The send path reads a client's
policy once per accept transaction (`load`), the inbound path once per inbound SMS.

Validation collects every bad field into one INVALID_REQUEST naming them
(`opt_outs.stop_keywords[2]: must be 1-30 characters`), as every other request does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection
from sqlmodel import Session

from zimsend.server.errors import ErrorCode
from zimsend.server.sending.fields import Violations, shown
from zimsend.server.storage import Client, ClientPolicy, utcnow
from zimsend.server.storage.tables import table_of

from . import keywords
from .quiet_hours import QuietWindow, parse_clock, zone_named

__all__ = [
    "DEFAULT_QUIET_END",
    "DEFAULT_QUIET_START",
    "MAX_KEYWORDS",
    "MAX_KEYWORD_CHARS",
    "OptOutChange",
    "Policy",
    "QuietChange",
    "load",
    "max_send_attempts",
    "update",
]

DEFAULT_QUIET_START = "21:00"
DEFAULT_QUIET_END = "08:00"
MAX_KEYWORDS = 20
MAX_KEYWORD_CHARS = 30
#: The range of `clients.max_send_attempts` (the server setting's: config.Settings).
MIN_SEND_ATTEMPTS = 1
MAX_SEND_ATTEMPTS = 10
_UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class Policy:
    """A client's policy with the defaults filled in."""

    stop_keywords: tuple[str, ...] = keywords.DEFAULT_STOP
    start_keywords: tuple[str, ...] = keywords.DEFAULT_START
    exempt_otp: bool = False
    quiet_hours_enabled: bool = False
    quiet_hours_start: str = DEFAULT_QUIET_START
    quiet_hours_end: str = DEFAULT_QUIET_END
    quiet_hours_time_zone: str = ""
    updated_at: dt.datetime | None = None

    @property
    def quiet_window(self) -> QuietWindow | None:
        """The window to apply, None when quiet hours are off."""
        if not self.quiet_hours_enabled:
            return None
        zone = zone_named(self.quiet_hours_time_zone) if self.quiet_hours_time_zone else _UTC
        return QuietWindow(
            parse_clock(self.quiet_hours_start), parse_clock(self.quiet_hours_end), zone
        )


DEFAULTS = Policy()

_TABLE = table_of(ClientPolicy)
_BY_CLIENT = select(*_TABLE.columns).where(_TABLE.c.client_id == bindparam("client_id"))


def _from_row(row: Any) -> Policy:
    return Policy(
        stop_keywords=tuple(row.stop_keywords) if row.stop_keywords else keywords.DEFAULT_STOP,
        start_keywords=(
            tuple(row.start_keywords) if row.start_keywords else keywords.DEFAULT_START
        ),
        exempt_otp=row.exempt_otp,
        quiet_hours_enabled=row.quiet_hours_enabled,
        quiet_hours_start=row.quiet_hours_start,
        quiet_hours_end=row.quiet_hours_end,
        quiet_hours_time_zone=row.quiet_hours_time_zone or "",
        updated_at=row.updated_at,
    )


def load(connection: Connection | Session, client_id: str) -> Policy:
    """The client's policy (the defaults when it never changed any)."""
    if isinstance(connection, Session):
        stored = connection.get(ClientPolicy, client_id)
        return DEFAULTS if stored is None else _from_row(stored)
    row = connection.execute(_BY_CLIENT, {"client_id": client_id}).first()
    return DEFAULTS if row is None else _from_row(row)


@dataclass(frozen=True)
class OptOutChange:
    """The opt-out section of an UpdateSettings request (empty lists: the defaults)."""

    stop_keywords: list[str]
    start_keywords: list[str]
    exempt_otp: bool


@dataclass(frozen=True)
class QuietChange:
    """The quiet-hours section of an UpdateSettings request (empty strings: the defaults)."""

    enabled: bool
    start: str
    end: str
    fallback_time_zone: str


def _keyword_list(v: Violations, name: str, values: list[str]) -> list[str] | None:
    if len(values) > MAX_KEYWORDS:
        v.add(
            ErrorCode.INVALID_REQUEST,
            name,
            f"must hold at most {MAX_KEYWORDS} keywords (got {len(values)})",
        )
        return None
    out: list[str] = []
    for i, raw in enumerate(values):
        word = " ".join(raw.split())
        if not 1 <= len(word) <= MAX_KEYWORD_CHARS:
            v.add(
                ErrorCode.INVALID_REQUEST,
                f"{name}[{i}]",
                f"must be 1-{MAX_KEYWORD_CHARS} characters, not blank (got {shown(raw)})",
            )
            continue
        if keywords.canonical(word) not in {keywords.canonical(w) for w in out}:
            out.append(word)
    return out or None


def check_opt_outs(v: Violations, change: OptOutChange) -> dict[str, Any]:
    """The columns an opt-out section sets, after recording what is wrong with it."""
    stop = _keyword_list(v, "opt_outs.stop_keywords", change.stop_keywords)
    start = _keyword_list(v, "opt_outs.start_keywords", change.start_keywords)
    both = {keywords.canonical(w) for w in stop or keywords.DEFAULT_STOP} & {
        keywords.canonical(w) for w in start or keywords.DEFAULT_START
    }
    if both:
        v.add(
            ErrorCode.INVALID_REQUEST,
            "opt_outs.start_keywords",
            f"must not repeat a stop keyword (both: {', '.join(sorted(both))})",
        )
    return {"stop_keywords": stop, "start_keywords": start, "exempt_otp": change.exempt_otp}


def check_quiet_hours(v: Violations, change: QuietChange) -> dict[str, Any]:
    """The columns a quiet-hours section sets, after recording what is wrong with it."""
    values: dict[str, Any] = {"quiet_hours_enabled": change.enabled}
    clocks: dict[str, dt.time] = {}
    for name, raw, default in (
        ("start", change.start, DEFAULT_QUIET_START),
        ("end", change.end, DEFAULT_QUIET_END),
    ):
        text = raw.strip() or default
        try:
            clocks[name] = parse_clock(text)
        except ValueError as exc:
            v.add(ErrorCode.INVALID_REQUEST, f"quiet_hours.{name}", str(exc))
            continue
        values[f"quiet_hours_{name}"] = clocks[name].strftime("%H:%M")
    if len(clocks) == 2 and clocks["start"] == clocks["end"]:
        v.add(
            ErrorCode.INVALID_REQUEST,
            "quiet_hours.end",
            f"must differ from start (both {clocks['start'].strftime('%H:%M')})",
        )
    zone = change.fallback_time_zone.strip()
    if zone:
        try:
            zone_named(zone)
        except ValueError as exc:
            v.add(ErrorCode.INVALID_REQUEST, "quiet_hours.fallback_time_zone", str(exc))
    values["quiet_hours_time_zone"] = zone or None
    return values


def max_send_attempts(session: Session, client_id: str, default: int) -> int:
    """The client's `clients.max_send_attempts`, or the server's `default`."""
    client = session.get(Client, client_id)
    stored = client.max_send_attempts if client is not None else None
    return stored if stored is not None else default


def update(
    session: Session,
    client_id: str,
    *,
    opt_outs: OptOutChange | None,
    quiet_hours: QuietChange | None,
    max_send_attempts: int | None = None,
    now: dt.datetime | None = None,
) -> Policy:
    """Validate and store the sections given; the policy now in force. Raises one
    INVALID_REQUEST listing every bad field, having written nothing."""
    v = Violations()
    values: dict[str, Any] = {}
    if opt_outs is not None:
        values.update(check_opt_outs(v, opt_outs))
    if quiet_hours is not None:
        values.update(check_quiet_hours(v, quiet_hours))
    if max_send_attempts is not None and not (
        MIN_SEND_ATTEMPTS <= max_send_attempts <= MAX_SEND_ATTEMPTS
    ):
        v.add(
            ErrorCode.INVALID_REQUEST,
            "max_send_attempts",
            f"must be {MIN_SEND_ATTEMPTS}-{MAX_SEND_ATTEMPTS} (got {max_send_attempts})",
        )
    v.raise_if_any()
    if max_send_attempts is not None:
        client = session.get(Client, client_id)
        assert client is not None  # the caller was authenticated as this client
        client.max_send_attempts = max_send_attempts
        session.add(client)
    if not values and max_send_attempts is None:
        return load(session, client_id)
    # Written even when only max_send_attempts changed, so update_time says when.
    row = session.get(ClientPolicy, client_id)
    if row is None:
        row = ClientPolicy(client_id=client_id)
    for name, value in values.items():
        setattr(row, name, value)
    row.updated_at = now or utcnow()
    session.add(row)
    session.flush()
    return _from_row(row)
