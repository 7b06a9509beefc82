"""The database side of one dispatch round: which clients have due work, and the claims.

Why a read first: most rounds (wake-ups, the polling fallback) find nothing to do. A plain read
answers "which of these clients have due messages, pinned to whom" without taking SQLite's
single write lock; the write transaction (`BEGIN IMMEDIATE`) runs only when there is something
to claim, and then claims for every ready phone of the round in one commit (DESIGN: batched
claims). The read costs the same however long the queue: one existence probe per client for
work any phone may take, and the phones with pinned work only for a client that has no other
(then its due messages are all pinned) — or, inside the write, once a claim has drained it.

Test messages (`zs_test_` keys) are claimed only by each client's built-in simulated device,
created here on first use; live devices never see them (`claim_due_messages(test=...)`). A
woken client's test messages are looked up with its live ones; the scan over every client runs
only with the fallback poll.

Reads that are not about the round's clients (`GlobalScan`) use `ix_messages_due_at_status`:
the next scheduled due time is one index seek and "which clients' messages became due since the
last scan" reads only those messages, however many are queued for later.
"""

from __future__ import annotations

import datetime as dt
import secrets as stdlib_secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Select, bindparam, case, or_, select, update
from sqlmodel import Session, col

from zimsend.server.accounts import credentials
from zimsend.server.compliance.policy import load as load_policy
from zimsend.server.compliance.quiet_hours import HOLD_REASON, QuietWindow, hold_for
from zimsend.server.devicelink.budgets import Budget, record_handed, rooms_for
from zimsend.server.storage import (
    Client,
    Database,
    Device,
    Message,
    MessageStatus,
    claim_due_messages,
)
from zimsend.server.storage.claims import ClaimedMessage, still_queued
from zimsend.server.storage.shapes import padded
from zimsend.server.storage.tables import table_of
from zimsend.v1 import common_pb2
from zimsend.v1 import device_link_pb2 as pb

__all__ = [
    "SIMULATED_DEVICE_NAME",
    "ClaimRequest",
    "GlobalScan",
    "RoundResult",
    "claim_round",
    "ensure_simulated_device",
    "send_command",
]

SIMULATED_DEVICE_NAME = "Simulated device (test keys)"
#: Test messages one simulated device takes per round.
SIMULATED_BATCH = 50
_ENCODINGS = {"GSM-7": common_pb2.GSM7, "UCS-2": common_pb2.UCS2}


@dataclass(frozen=True)
class ClaimRequest:
    """One ready phone of this replica and how many messages it may take now."""

    client_id: str
    device_id: str
    limit: int


@dataclass(frozen=True)
class GlobalScan:
    """The round's reads beyond its own clients (the dispatcher runs them at most every
    GLOBAL_SCAN_INTERVAL_S)."""

    #: Report the clients with messages that became due in `(since, now]` (None: skip).
    since: dt.datetime | None
    #: Claim every client's due test messages, not only the woken clients' (the poll).
    test_clients: bool


#: Every global read but "became due" (which needs the previous scan's time).
FULL_SCAN = GlobalScan(since=None, test_clients=True)


@dataclass
class RoundResult:
    #: device id -> SendCommands for the messages it claimed, in dispatch order.
    commands: dict[str, list[pb.SendCommand]] = field(default_factory=dict)
    #: simulated device id -> (client id, claimed test messages).
    simulated: dict[str, tuple[str, list[ClaimedMessage]]] = field(default_factory=dict)
    #: Devices with due live messages pinned to them, among the round's clients.
    pinned: set[str] = field(default_factory=set)
    #: With a GlobalScan: the earliest future `due_at` of any queued message (the scheduled
    #: timer; None: none), and the clients whose messages became due since `scan.since`.
    next_due: dt.datetime | None = None
    became_due: set[str] = field(default_factory=set)
    #: message id -> (due_at, request_id) of every live message claimed: the dispatcher's
    #: latency metric and log line.
    origins: dict[str, tuple[dt.datetime, str | None]] = field(default_factory=dict)
    #: device id -> seconds until it may be offered more: its send budget or cool-down
    #: stopped its claim (the dispatcher paces it until then instead of idling it).
    waits: dict[str, float] = field(default_factory=dict)


def send_command(
    message: Message | ClaimedMessage, pepper: bytes, *, redelivery: bool
) -> pb.SendCommand:
    """The SendCommand for a claimed message. OTP texts are sealed in storage; only the phone
    gets the clear text."""
    body = message.body
    if message.sealed_body:
        body = credentials.decrypt_secret(pepper, message.sealed_body, bound_to=message.id)
    command = pb.SendCommand(
        command_id=credentials.new_id("cmd"),
        message_id=message.id,
        to=message.to,
        body=body,
        segments=message.segments,
        encoding=_ENCODINGS.get(message.encoding, common_pb2.ENCODING_UNSPECIFIED),
        priority=common_pb2.Priority.ValueType(message.priority),
        redelivery=redelivery,
    )
    if message.sim_slot is not None:
        command.sim_slot = message.sim_slot
    return command


# The round's reads, built once as Core statements: through the ORM each cost a few hundred
# microseconds of Python, and a connect storm runs up to 20 rounds a second.
_m = table_of(Message).c
_now: BindParameter[dt.datetime] = bindparam("now")
_due_now = (
    _m.status == MessageStatus.QUEUED.value,
    _m.due_at <= _now,
    or_(_m.expires_at.is_(None), _m.expires_at > _now),
)
_clients = _m.client_id.in_(bindparam("clients", expanding=True))
_c = table_of(Client).c


def _has_due(*conditions: ColumnElement[bool]) -> Select[Any]:
    """Which of some clients have a due message meeting `conditions`: one EXISTS probe per
    client, which stops at the client's first such message in `ix_messages_dispatch` order
    instead of reading all of them (the round's first read grew with the backlog:
    docs/benchmarks.md)."""
    probe = select(_m.id).where(_m.client_id == _c.id, *_due_now, *conditions)
    return select(_c.id).where(_c.id.in_(bindparam("clients", expanding=True)), probe.exists())


#: Clients among some with a due live message that any of their phones may take.
_UNPINNED_DUE = _has_due(_m.test.is_(False), _m.pinned_device_id.is_(None))
#: Clients among some with due test messages.
_TEST_DUE = _has_due(_m.test.is_(True))
#: (client, device) of the due live messages pinned to a phone, of some clients. Read only for
#: clients without unpinned due work (at the start of a round, or once a claim has drained it),
#: whose due messages are then all pinned: it reads what waits for its own phone, not the queue.
_PINNED_DUE = (
    select(_m.client_id, _m.pinned_device_id)
    .where(*_due_now, _m.test.is_(False), _clients, _m.pinned_device_id.is_not(None))
    .distinct()
)
#: Every client with due test messages (the poll).
_ANY_TEST_DUE = select(_m.client_id).where(*_due_now, _m.test.is_(True)).distinct().limit(100)
# Both time reads walk `ix_messages_due_at_status` from a due time on; `still_queued()` keeps
# SQLite's planner from reading the whole queue through the dispatch index instead.
_NEXT_DUE = select(_m.due_at).where(_m.due_at > _now, still_queued()).order_by(_m.due_at).limit(1)
_BECAME_DUE = (
    select(_m.client_id)
    .where(_m.due_at > bindparam("since"), _m.due_at <= _now, still_queued())
    .distinct()
)


def claim_round(
    db: Database,
    pepper: bytes,
    requests: list[ClaimRequest],
    now: dt.datetime,
    *,
    woken: Sequence[str] = (),
    scan: GlobalScan | None = FULL_SCAN,
    budgets: Budget | None = None,
    default_interval_ms: int | None = None,
) -> RoundResult:
    """Claim due messages for `requests` (already in least-loaded-first order) and for the
    simulated devices of `woken` clients with due test messages (every client's, with
    `scan.test_clients`). `scan=None` skips the global reads (`next_due` is then None and
    means "unknown"). With `budgets` (the server's default per-SIM budget, for phones paced at
    `default_interval_ms` or their own interval), each phone's
    claim stays within its send budget and cool-down (`budgets.py`), and is recorded in its
    ledger."""
    result = RoundResult()
    clients = sorted({r.client_id for r in requests}.union(woken))
    # client -> its phones with due messages pinned to them; known for the clients without
    # unpinned due work, and read for a client once a claim drains it.
    pinned: dict[str, set[str]] = {}
    with db.session() as session:
        read = session.connection().execute
        unpinned: set[str] = set()
        if clients:
            unpinned = set(read(_UNPINNED_DUE, {"now": now, "clients": padded(clients)}).scalars())
            _read_pinned(session, [c for c in clients if c not in unpinned], now, pinned)
        test_clients: set[str] = set()
        if woken:
            test_clients.update(
                read(_TEST_DUE, {"now": now, "clients": padded(sorted(woken))}).scalars()
            )
        if scan is not None:
            result.next_due = read(_NEXT_DUE, {"now": now}).scalar()
            if scan.since is not None:
                result.became_due = set(
                    read(_BECAME_DUE, {"now": now, "since": scan.since}).scalars()
                )
            if scan.test_clients:
                test_clients.update(read(_ANY_TEST_DUE, {"now": now}).scalars())
    live = [
        r for r in requests if r.client_id in unpinned or r.device_id in pinned.get(r.client_id, ())
    ]
    if not live and not test_clients:
        result.pinned = _devices(pinned)
        return result
    # A claim that returns fewer than its limit has taken every due message this device may
    # have; for its client only messages pinned elsewhere remain, so the client's next phones
    # are skipped unless something is pinned to them. Without this a round over 50 idle
    # phones ran 50 claims for one message (docs/benchmarks.md, `461536b`).
    drained: set[str] = set()
    with db.write(urgent=True) as session:  # every message's accept -> phone waits on this
        rooms = (
            {}
            if budgets is None
            else rooms_for(session, [r.device_id for r in live], now, budgets, default_interval_ms)
        )
        handed: list[tuple[str, list[ClaimedMessage]]] = []
        windows: dict[str, QuietWindow | None] = {}
        for request in live:
            if request.client_id in drained:
                if request.client_id not in pinned:
                    _read_pinned(session, [request.client_id], now, pinned)
                if request.device_id not in pinned[request.client_id]:
                    continue
            room = rooms.get(request.device_id)
            claimed = claim_due_messages(
                session,
                client_id=request.client_id,
                device_id=request.device_id,
                limit=request.limit,
                now=now,
                fits=None if room is None or room.unlimited else room.fits,
            )
            messages = _not_quiet(session, claimed, windows, now, result)
            if room is not None and room.limited:
                result.waits[request.device_id] = room.wait_s()  # not drained: over budget
            elif len(claimed) < request.limit:
                drained.add(request.client_id)
            if messages:
                _count_handed(session, request.device_id, len(messages), now)
                if room is not None:
                    handed.append((request.device_id, messages))
                result.commands[request.device_id] = [
                    send_command(m, pepper, redelivery=False) for m in messages
                ]
                for m in messages:
                    result.origins[m.id] = (m.due_at, m.request_id)
        record_handed(session, handed, now)
        for client_id in sorted(test_clients):
            device_id = ensure_simulated_device(session, client_id)
            messages = claim_due_messages(
                session,
                client_id=client_id,
                device_id=device_id,
                limit=SIMULATED_BATCH,
                now=now,
                test=True,
                any_pin=True,
            )
            if messages:
                result.simulated[device_id] = (client_id, messages)
    result.pinned = _devices(pinned)
    return result


def _read_pinned(
    session: Session, clients: list[str], now: dt.datetime, pinned: dict[str, set[str]]
) -> None:
    """Note in `pinned` the phones each of `clients` has due messages pinned to."""
    if not clients:
        return
    for client_id in clients:
        pinned[client_id] = set()
    rows = session.connection().execute(_PINNED_DUE, {"now": now, "clients": padded(clients)})
    for client_id, device_id in rows:
        pinned[client_id].add(device_id)


def _devices(pinned: dict[str, set[str]]) -> set[str]:
    return set().union(*pinned.values())


def _not_quiet(
    session: Session,
    claimed: list[ClaimedMessage],
    windows: dict[str, QuietWindow | None],
    now: dt.datetime,
    result: RoundResult,
) -> list[ClaimedMessage]:
    """The claimed messages that may leave now. A non-urgent one whose recipient is inside its
    client's quiet hours (turned on, or begun, after it was accepted: accept holds the others)
    goes back to the queue until the window ends, as accept would have held it, and the
    round's `next_due` says when. `windows` memoises each client's window for the round."""
    if not claimed:
        return claimed
    client_id = claimed[0].client_id
    if client_id not in windows:
        windows[client_id] = load_policy(session.connection(), client_id).quiet_window
    window = windows[client_id]
    if window is None:
        return claimed
    leaving: list[ClaimedMessage] = []
    for message in claimed:
        hold = hold_for(window, message.to, message.priority, now)
        if hold is None:
            leaving.append(message)
            continue
        ttl = (message.expires_at - message.due_at) if message.expires_at else None
        session.connection().execute(
            _HOLD,
            {
                "h_id": message.id,
                "h_hold": hold,
                "h_reason": HOLD_REASON,
                "h_expires": None if ttl is None else hold + ttl,
            },
        )
        if result.next_due is None or hold < result.next_due:
            result.next_due = hold
    return leaving


_HOLD = (
    update(table_of(Message))
    .where(_m.id == bindparam("h_id"))
    .values(
        status=MessageStatus.QUEUED.value,
        device_id=None,
        processing_at=None,
        due_at=bindparam("h_hold"),
        held_until=bindparam("h_hold"),
        hold_reason=bindparam("h_reason"),
        expires_at=bindparam("h_expires"),
    )
)


#: Pacing and daily-cap state of a device, in the claim's transaction (built once).
_d = table_of(Device).c
_COUNT_HANDED = (
    update(table_of(Device))
    .where(_d.id == bindparam("h_device_id"))
    .values(
        last_send_at=bindparam("h_now"),
        sent_on_day=case(
            (_d.sent_day == bindparam("h_today"), _d.sent_on_day + bindparam("h_count")),
            else_=bindparam("h_count"),
        ),
        sent_day=bindparam("h_today"),
    )
)


def _count_handed(session: Session, device_id: str, count: int, now: dt.datetime) -> None:
    """Pacing and daily-cap state of a device, in the claim's transaction."""
    session.connection().execute(
        _COUNT_HANDED,
        {
            "h_device_id": device_id,
            "h_now": now,
            "h_today": now.astimezone(dt.UTC).date(),
            "h_count": count,
        },
    )


def ensure_simulated_device(session: Session, client_id: str) -> str:
    """The client's built-in simulated device, created on first use. It has no usable
    password (its hash is not an HMAC), so no phone can ever connect as it."""
    existing = session.scalar(
        select(col(Device.id))
        .where(
            col(Device.client_id) == client_id,
            col(Device.is_simulated).is_(True),
            col(Device.deleted_at).is_(None),
        )
        .order_by(col(Device.created_at))
        .limit(1)
    )
    if existing is not None:
        return str(existing)
    device = Device(
        id=credentials.new_id("device"),
        client_id=client_id,
        name=SIMULATED_DEVICE_NAME,
        password_hash="!unusable-" + stdlib_secrets.token_hex(16),
        is_simulated=True,
        model="ZimSend simulated device",
        app_version="built-in",
        android_version="sandbox",
        send_interval_ms=0,
    )
    session.add(device)
    session.flush()
    return device.id
