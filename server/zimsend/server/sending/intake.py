"""Accepting a send request: who may send it, when it should go, and the transaction that
queues it (SPEC.md §3, §5).

Every request goes through the same steps (`_accept_in`), inside a write transaction:

1. Idempotency first: a retry is answered from its record before anything else is checked,
   so a retry after a timeout replays even if, meanwhile, its `scheduled_at` has passed or
   its phone went offline.
2. Validation (`validation`), pure: every violation in one error. Then the client's policy
   (`compliance`, read once per client per transaction): RECIPIENT_OPTED_OUT when a recipient
   opted out, and quiet hours, which move a non-urgent message's due time to the end of its
   recipient's quiet window (`held_until`); messages that all wait skip step 3's availability
   checks, as scheduled ones do.
3. Devices: `X-Device-ID` must name one of the client's devices (INVALID_DEVICE_ID). An
   immediate live send needs that device online and enabled (DEVICE_OFFLINE, naming the
   phone's reason when it is connected but says it cannot send), or without a pin any online
   enabled phone (NO_DEVICE_AVAILABLE; a phone that cannot send is not online). Scheduled
   sends skip the availability checks (they wait for a device, and expire after the TTL if
   none comes). Test-key sends skip them too: the built-in simulated device takes them, and
   they are never pinned to a real phone (a sandbox message must not reach one).
4. The writes: every message (`queued`) and the idempotency record, or nothing. A caller
   that must write more rows with the messages (the OTP service: its `otps` row and the
   sealed text, which is bound to the new message id) passes `before_commit`; whatever it
   raises rolls the whole request back.

Between 3 and 4, backpressure: an immediate send is refused (RATE_LIMIT_EXCEEDED, 429 with
Retry-After) while a message ahead of it has been due for longer than
`queue_max_wait_seconds` (see `Intake._refuse_when_behind`).

Why a lane (`Intake.submit`): this is the hottest path of the server. One request per
transaction paid, per request, two hops to the database threads, three connection checkouts
and a commit, and the threads queued on SQLite's single write lock (`zimsend bench`: ~5 ms of
CPU per SendSms). The lane is one thread that takes every request waiting when it becomes
free and runs them all in one write transaction — group commit: the more requests wait, the
larger the batch and the cheaper each one. A request that fails (validation, availability)
has written nothing and fails alone; one that writes more than its messages (an idempotency
record, a `before_commit` hook) runs in a SAVEPOINT so that its failure rolls back only its
own rows. If the batch itself fails, each request is retried alone (`Intake.accept`), so one
request never fails another. The lane's thread, the retries and the answers are the shared
group-commit helper's (`storage.group_commit`: `ThreadLane`, `commit_each`).

Why Core statements built once (`_ONLINE`) and a Core insert: building SQLAlchemy
expressions, loading ORM objects and running the unit of work cost more CPU than SQLite
itself. The ORM stays where a caller needs it: a `before_commit` hook gets messages attached
to its session. The queue count behind `estimated_delivery` comes from `QueueGauge`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from google.protobuf.message import Message as ProtoMessage
from sqlalchemy import Connection, bindparam
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from zimsend.server import logs
from zimsend.server.accounts import credentials
from zimsend.server.compliance import opt_outs, quiet_hours
from zimsend.server.compliance.policy import Policy
from zimsend.server.compliance.policy import load as load_policy
from zimsend.server.config import Settings
from zimsend.server.errors import ApiError, ErrorCode, storage_unavailable
from zimsend.server.presence import is_connected, is_online
from zimsend.server.storage import Database, Device, Message, MessageStatus, get_for_client, utcnow
from zimsend.server.storage.group_commit import RETRY_ALONE, RetryAlone, ThreadLane, commit_each
from zimsend.server.storage.inserts import RowInsert
from zimsend.server.storage.tables import table_of

from . import idempotency
from .queue_gauge import Backlog, QueueGauge
from .validation import SendPlan

R = TypeVar("R", bound=ProtoMessage)
log = logs.get("zimsend.sending.intake")

#: Requests one lane transaction takes at most (the rest wait for the next one).
MAX_BATCH = 128


class Submission(NamedTuple):
    """Who sends, and the idempotency facts of the request (key None: no idempotency);
    `request_id` is stored with the messages (`auth.request_id`). Immutable; a named tuple
    rather than a frozen dataclass, built in a third of the time (one per send request)."""

    client_id: str
    test: bool
    device_header: str | None
    operation: str
    key: str | None = None
    request_hash: str = ""
    request_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    """What `build_response` gets: the rows just queued and the facts a response shows."""

    #: `Message` objects attached to the session when a `before_commit` hook will use them,
    #: else `QueuedMessage`s (the same attribute names).
    messages: list[Any]
    batch_id: str | None
    queued_at: dt.datetime
    estimated_delivery: dt.datetime
    plan: SendPlan


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """The answer to one request. `due_at` is when its messages become due (None when the
    response is an idempotent replay and nothing was written); `message_ids` are the
    messages it queued."""

    response: R
    due_at: dt.datetime | None
    message_ids: tuple[str, ...] = ()

    @property
    def created(self) -> bool:
        return self.due_at is not None


@dataclass
class _Request(Generic[R]):
    """One request waiting for (or inside) a lane transaction."""

    submission: Submission
    validate: Callable[[dt.datetime], SendPlan]
    build_response: Callable[[Accepted], R]
    response_type: type[R]
    before_commit: Callable[[Session, Accepted], None] | None = None

    @property
    def writes_more(self) -> bool:
        """Writes rows besides its messages (which can fail): needs its own SAVEPOINT."""
        return self.submission.key is not None or self.before_commit is not None


@dataclass
class _BatchState:
    """What the requests of one lane transaction share."""

    #: The transaction's connection (a request's SAVEPOINT runs on it too).
    connection: Connection
    #: Message rows of requests without a SAVEPOINT, inserted in one statement at the end.
    rows: list[QueuedMessage] = field(default_factory=list)
    #: The client's online phones (`_ONLINE`), read once per client per transaction.
    online: dict[str, list[Any]] = field(default_factory=dict)
    #: The client's sending policy (opt-out exemption, quiet hours), read once likewise.
    policies: dict[str, Policy] = field(default_factory=dict)
    #: Per client, its opted-out numbers among every recipient of the batch, read once at
    #: the start (`_prefetch_opt_outs`); a client absent here is looked up per request.
    opted_out: dict[str, set[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Availability:
    pinned: Device | None
    #: Devices, or rows with the same attribute names (`_ONLINE`: what is_online reads).
    online: list[Any]


_ONLINE = select(  # type: ignore[call-overload]  # sqlmodel types select() up to 4 columns
    Device.id,
    Device.online,
    Device.last_seen_at,
    Device.deleted_at,
    Device.send_interval_ms,
    Device.cannot_send_reason,
).where(
    Device.client_id == bindparam("client_id"),
    Device.online == True,  # noqa: E712 - SQL comparison
    Device.enabled == True,  # noqa: E712 - SQL comparison
    Device.is_simulated == False,  # noqa: E712 - SQL comparison
    col(Device.deleted_at).is_(None),
)


class QueuedMessage(NamedTuple):
    """A message row as the accept path inserts it (`_INSERT`), and what a response is built
    from: `Message`'s attribute names for the columns a new message sets. The columns left
    out are NULL in a new message."""

    id: str
    client_id: str
    batch_id: str | None
    to: str
    body: str
    priority: int
    status: str
    test: bool
    pinned_device_id: str | None
    sim_slot: int | None
    segments: int
    encoding: str
    attempts: int
    reroutes: int
    scheduled_at: dt.datetime | None
    due_at: dt.datetime
    expires_at: dt.datetime
    created_at: dt.datetime
    queued_at: dt.datetime
    meta: dict[str, Any] | None
    webhook_url: str | None
    request_id: str | None
    held_until: dt.datetime | None
    hold_reason: str | None


_INSERT = RowInsert(table_of(Message), QueuedMessage._fields)


class Intake:
    """The accept lane of one server process (see the module docstring).

    `submit` (async) queues a request for the lane's next transaction; `accept` runs one
    request in its own transaction in the calling thread (the OTP service, which does more
    work around it, and the lane's fallback). The thread starts on the first `submit`.
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.gauge = QueueGauge()
        self._lane: ThreadLane[_Request[Any], Outcome[Any]] = ThreadLane(
            "accept-lane", self._run_batch, max_batch=MAX_BATCH, on_crash=_internal_error
        )

    @property
    def transactions(self) -> int:
        """Lane transactions run so far (requests / transactions = the batching achieved)."""
        return self._lane.batches

    async def submit(
        self,
        submission: Submission,
        validate: Callable[[dt.datetime], SendPlan],
        build_response: Callable[[Accepted], R],
        response_type: type[R],
    ) -> Outcome[R]:
        self._refuse_while_storage_unavailable()
        outcome: Outcome[R] = await self._lane.submit(
            _Request(submission, validate, build_response, response_type)
        )
        return outcome

    def accept(
        self,
        submission: Submission,
        validate: Callable[[dt.datetime], SendPlan],
        build_response: Callable[[Accepted], R],
        response_type: type[R],
        *,
        before_commit: Callable[[Session, Accepted], None] | None = None,
    ) -> Outcome[R]:
        """Queue one request's messages in its own transaction (blocking)."""
        self._refuse_while_storage_unavailable()
        return self._accept_alone(
            _Request(submission, validate, build_response, response_type, before_commit)
        )

    def _refuse_while_storage_unavailable(self) -> None:
        """While the database cannot be written, a send is refused as such (503 UNAVAILABLE
        "storage …"), not with whatever the checks before its first write would say — phones
        cannot connect then either, so it was NO_DEVICE_AVAILABLE (issue 12 item 9)."""
        problem = self.db.availability.problem
        if problem is not None:
            raise storage_unavailable(problem)

    def close(self) -> None:
        """Stop the lane after the requests already waiting (idempotent)."""
        self._lane.close()

    # --- the lane ------------------------------------------------------------------------

    def _run_batch(self, batch: list[_Request[Any]]) -> list[Outcome[Any] | BaseException]:
        return commit_each(batch, self._accept_batch, self._accept_alone, name="accept lane")

    def _accept_batch(
        self, batch: Sequence[_Request[Any]]
    ) -> list[Outcome[Any] | BaseException | RetryAlone]:
        with self.db.write() as session:
            connection = session.connection()  # BEGIN (IMMEDIATE): wait for the write lock
            now = utcnow()
            batch_state = _BatchState(connection)
            plans = [_validated(request, now) for request in batch]
            _prefetch_opt_outs(connection, batch, plans, batch_state)
            results = [
                self._accept_in_batch(session, request, now, batch_state, plan)
                for request, plan in zip(batch, plans, strict=True)
            ]
            _INSERT.execute(connection, batch_state.rows)
        return results

    def _accept_in_batch(
        self,
        session: Session,
        request: _Request[Any],
        now: dt.datetime,
        batch: _BatchState,
        plan: SendPlan | Exception,
    ) -> Outcome[Any] | BaseException | RetryAlone:
        """One request inside the batch's transaction, its validation already done (`plan`);
        RETRY_ALONE: retry it alone afterwards."""
        if not request.writes_more:
            try:
                return self._accept_in(
                    session, request, now, batch, defer_insert=True, validated=plan
                )
            except ApiError as exc:
                return exc  # raised before its rows were queued: nothing of it is written
        try:
            with session.begin_nested():
                return self._accept_in(
                    session, request, now, batch, defer_insert=False, validated=plan
                )
        except IntegrityError:
            return RETRY_ALONE  # a concurrent request with its key won: `_accept_alone` replays it
        except Exception as exc:
            return exc

    def _accept_alone(self, request: _Request[R]) -> Outcome[R]:
        try:
            with self.db.write() as session:
                return self._accept_in(
                    session,
                    request,
                    utcnow(),
                    _BatchState(session.connection()),
                    defer_insert=False,
                )
        except IntegrityError:
            # A concurrent request with the same key committed first: answer as it did.
            submission = request.submission
            if submission.key is None:
                raise
            with self.db.session() as session:
                stored = _find(session, submission, utcnow())
            if stored is None:
                raise
            return Outcome(idempotency.replay(stored, request.response_type), None)

    def _accept_in(
        self,
        session: Session,
        request: _Request[R],
        now: dt.datetime,
        batch: _BatchState,
        *,
        defer_insert: bool,
        validated: SendPlan | Exception | None = None,
    ) -> Outcome[R]:
        """Steps 1-4 of the module docstring, inside the caller's write transaction.
        `defer_insert`: the messages' rows go to `batch.rows` (inserted by the caller).
        `validated`: what `request.validate(now)` gave (the lane validates a batch first)."""
        submission = request.submission
        connection = batch.connection
        if submission.key is not None:
            stored = _find(session, submission, now)
            if stored is not None:
                return Outcome(idempotency.replay(stored, request.response_type), None)
        if validated is None:
            plan = request.validate(now)
        elif isinstance(validated, Exception):
            raise validated
        else:
            plan = validated
        policy = batch.policies.get(submission.client_id)
        if policy is None:
            policy = batch.policies[submission.client_id] = load_policy(
                connection, submission.client_id
            )
        opt_outs.refuse_opted_out(
            connection,
            submission.client_id,
            plan,
            policy,
            operation=submission.operation,
            listed=batch.opted_out.get(submission.client_id),
        )
        base = plan.scheduled_at or now
        holds = _quiet_holds(policy, plan, base)
        # Messages that all wait for the end of quiet hours wait like scheduled ones: no
        # phone needs to be online now, and a backlog now does not concern them.
        immediate = plan.immediate and None in holds
        availability = _check_devices(
            session, connection, self.settings, submission, plan, now, batch, immediate=immediate
        )
        backlog = self.gauge.ahead(
            connection, submission.client_id, submission.test, plan.priority, base
        )
        if immediate:
            self._refuse_when_behind(backlog, now)
        dues = [hold or base for hold in holds]
        estimate = self._estimate(backlog.count, availability, min(dues, default=base))
        accepted = _queue(
            session,
            connection,
            self.settings,
            submission,
            plan,
            availability,
            estimate,
            now,
            holds,
            attach=request.before_commit is not None,
            pending=batch.rows if defer_insert else None,
        )
        if request.before_commit is not None:
            request.before_commit(session, accepted)
        response = request.build_response(accepted)
        if submission.key is not None:
            idempotency.store(
                session,
                client_id=submission.client_id,
                key=submission.key,
                operation=submission.operation,
                request_hash=submission.request_hash,
                response=response,
                now=now,
            )
        self.gauge.record(submission.client_id, submission.test, plan.priority, dues)
        return Outcome(response, min(dues, default=base), tuple(m.id for m in accepted.messages))

    def _refuse_when_behind(self, backlog: Backlog, now: dt.datetime) -> None:
        """Backpressure: refuse an immediate send while a message ahead of it has been due for
        longer than `queue_max_wait_seconds` — the client's phones are not keeping up, and
        accepting more would only grow a backlog nobody sees (`zimsend bench`, overload).
        Scheduled sends are never refused: they wait for their time anyway."""
        limit = self.settings.queue_max_wait_seconds
        if backlog.oldest_due is None:
            return
        waited = (now - backlog.oldest_due).total_seconds()
        if waited <= limit:
            return
        raise ApiError(
            ErrorCode.RATE_LIMIT_EXCEEDED,
            f"This client's phones are behind: {backlog.count} queued message(s) of the same "
            f"or a higher priority are due, the oldest for {waited:.0f} s (the limit is "
            f"{limit:g} s). Retry later, add or enable phones, lower their send_interval_ms, "
            "or schedule the message with scheduled_at.",
            retry_after_seconds=max(1.0, min(60.0, limit / 4)),
        )

    def _estimate(self, ahead: int, availability: _Availability, base: dt.datetime) -> dt.datetime:
        """When the first of these messages should go: its due time `base`, plus the `ahead`
        messages due before it at the same or a higher priority, paced by the devices that
        will share them."""
        default_ms = self.settings.default_send_interval_ms
        devices = availability.online
        intervals = [
            d.send_interval_ms if d.send_interval_ms is not None else default_ms for d in devices
        ] or [default_ms]
        # N phones at interval i drain one message every i / N on average.
        seconds = ahead * (sum(intervals) / len(intervals)) / 1000 / max(1, len(devices))
        return base + dt.timedelta(seconds=seconds)


def _internal_error(exc: BaseException) -> ApiError:
    """The answer of every request of a batch the lane could not run (a bug; it is logged)."""
    return ApiError(ErrorCode.INTERNAL, "Internal error; it was logged.")


def _validated(request: _Request[Any], now: dt.datetime) -> SendPlan | Exception:
    """The request's plan, or what its validation raised (raised again at the point of
    `Intake._accept_in` where it validates: after an idempotent replay)."""
    try:
        return request.validate(now)
    except Exception as exc:  # noqa: BLE001 - kept and raised in its request's turn
        return exc


def _prefetch_opt_outs(
    connection: Connection,
    batch: Sequence[_Request[Any]],
    plans: list[SendPlan | Exception],
    state: _BatchState,
) -> None:
    """Each client's opted-out numbers among all the batch's recipients, in one read per
    client instead of one per request (it was a tenth of the server's CPU under `zimsend
    bench`): sends do not change the list, so what is read at the start of the transaction
    holds for all of it."""
    recipients: dict[str, list[str]] = {}
    for request, plan in zip(batch, plans, strict=True):
        if isinstance(plan, SendPlan):
            recipients.setdefault(request.submission.client_id, []).extend(
                draft.to for draft in plan.drafts
            )
    for client_id, numbers in recipients.items():
        state.opted_out[client_id] = opt_outs.listed_among(connection, client_id, numbers)


def _find(session: Session, submission: Submission, now: dt.datetime) -> dict[str, Any] | None:
    assert submission.key is not None
    return idempotency.find(
        session,
        client_id=submission.client_id,
        key=submission.key,
        operation=submission.operation,
        request_hash=submission.request_hash,
        now=now,
    )


def _quiet_holds(policy: Policy, plan: SendPlan, base: dt.datetime) -> list[dt.datetime | None]:
    """Per message, the end of the recipient's quiet hours when it would be due inside them
    (`base`), else None. Urgent messages (OTPs are urgent) never wait."""
    window = policy.quiet_window
    return [quiet_hours.hold_for(window, draft.to, plan.priority, base) for draft in plan.drafts]


def _check_devices(
    session: Session,
    connection: Connection,
    settings: Settings,
    submission: Submission,
    plan: SendPlan,
    now: dt.datetime,
    batch: _BatchState,
    *,
    immediate: bool,
) -> _Availability:
    pinned: Device | None = None
    if submission.device_header:
        pinned = get_for_client(session, Device, submission.device_header, submission.client_id)
        # The simulated device only takes sandbox messages: a live one pinned there would wait
        # for nothing.
        foreign = pinned is None or pinned.deleted_at is not None
        if foreign or (pinned is not None and pinned.is_simulated and not submission.test):
            raise ApiError.invalid(
                ErrorCode.INVALID_DEVICE_ID,
                "X-Device-ID",
                "X-Device-ID does not name one of this client's devices; list them with "
                "GET /v1/devices, or send without X-Device-ID to let ZimSend choose",
            )
    if submission.test:
        return _Availability(None, [])  # the simulated device takes sandbox messages
    window = settings.offline_after_seconds
    if pinned is not None:
        available = pinned.enabled and is_online(pinned, now, window)
        if immediate and not available:
            raise ApiError(ErrorCode.DEVICE_OFFLINE, _unavailable(pinned, now, window))
        return _Availability(pinned, [pinned] if available else [])
    candidates = batch.online.get(submission.client_id)
    if candidates is None:
        candidates = batch.online[submission.client_id] = list(
            connection.execute(_ONLINE, {"client_id": submission.client_id})
        )
    online = [d for d in candidates if is_online(d, now, window)]
    if immediate and not online:
        raise ApiError(
            ErrorCode.NO_DEVICE_AVAILABLE,
            "No device of this client is online: start the ZimSend app on a phone (GET "
            "/v1/devices shows their status), or schedule the message with scheduled_at so it "
            "waits for a device",
        )
    return _Availability(None, online)


def _unavailable(device: Device, now: dt.datetime, window: float) -> str:
    """DEVICE_OFFLINE's message: why this device cannot take the message now."""
    if not device.enabled:
        why = "is disabled (enable it with PATCH /v1/devices/{device_id})"
    elif device.cannot_send_reason and is_connected(device, now, window):
        why = f"is connected but its phone cannot send: {device.cannot_send_reason}"
    else:
        why = "is offline: check that the phone is on, connected and running ZimSend"
    return (
        f"Device {device.id} {why}. Send without X-Device-ID, or schedule the message with "
        "scheduled_at so it waits for the device"
    )


def _queue(
    session: Session,
    connection: Connection,
    settings: Settings,
    submission: Submission,
    plan: SendPlan,
    availability: _Availability,
    estimate: dt.datetime,
    now: dt.datetime,
    holds: list[dt.datetime | None],
    *,
    attach: bool,
    pending: list[QueuedMessage] | None,
) -> Accepted:
    """Write the messages: attached ORM objects when a hook will work on them (`attach`);
    else plain rows (`QueuedMessage`) for one `RowInsert` — now, or appended to `pending` for
    the lane's one INSERT per batch (the same columns and values, without the ORM's
    per-object cost)."""
    base = plan.scheduled_at or now
    ttl = dt.timedelta(hours=settings.message_ttl_hours)
    expires_at = base + ttl
    batch_id = credentials.new_id("batch") if plan.kind != "single" else None
    pinned = availability.pinned.id if availability.pinned is not None else None
    client_id, test, request_id = submission.client_id, submission.test, submission.request_id
    priority, sim_slot, scheduled_at = plan.priority, plan.sim_slot, plan.scheduled_at
    webhook_url = plan.webhook_url
    rows = [
        QueuedMessage(
            credentials.new_id("msg"),
            client_id,
            batch_id,
            draft.to,
            draft.body,
            priority,
            MessageStatus.QUEUED,
            test,
            pinned,
            sim_slot,
            draft.segments,
            draft.encoding,
            0,  # attempts
            0,  # reroutes
            scheduled_at,
            base if hold is None else hold,  # due_at
            expires_at if hold is None else hold + ttl,
            now,  # created_at
            now,  # queued_at
            draft.meta,
            webhook_url,
            request_id,
            hold,  # held_until
            None if hold is None else quiet_hours.HOLD_REASON,
        )
        for draft, hold in zip(plan.drafts, holds, strict=True)
    ]
    messages: list[Any]
    if attach:
        messages = [Message(**row._asdict()) for row in rows]
        session.add_all(messages)
        session.flush()
    else:
        if pending is None:
            _INSERT.execute(connection, rows)
        else:
            pending.extend(rows)
        messages = rows
    return Accepted(messages, batch_id, now, estimate, plan)
