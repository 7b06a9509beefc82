"""The SMS service's database work on both engines (SQLite and PostgreSQL), without a server.

The gRPC tests run against SQLite; what could behave differently on PostgreSQL is checked here
on both: the idempotency race (unique constraint + replay under READ COMMITTED), the SQL
grouping by UTC day for stats, case-insensitive search with literal wildcards, keyset export
and the conditional UPDATEs of cancel/resend.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlmodel import func, select

from zimsend.server import accounts
from zimsend.server.accounts import credentials
from zimsend.server.config import Settings
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.sending import (
    history,
    idempotency,
    intake,
    one_message,
    stats,
    validation,
    views,
)
from zimsend.server.sending.fields import Violations
from zimsend.server.storage import DailyAggregate, Database, Message, utcnow
from zimsend.v1 import sms_pb2 as pb

UTC = dt.UTC


@pytest.fixture
def client_id(db: Database) -> str:
    return accounts.create_client(db, "engines").id


def send(
    db: Database,
    settings: Settings,
    client_id: str,
    request: pb.SendSmsRequest,
    key: str | None = None,
) -> tuple[pb.SendSmsResponse, bool]:
    submission = intake.Submission(
        client_id=client_id,
        test=True,
        device_header=None,
        operation="SendSms",
        key=key,
        request_hash=idempotency.request_hash(
            request, operation="SendSms", device_id=None, test=True
        )
        if key
        else "",
    )
    outcome = intake.Intake(db, settings).accept(
        submission,
        lambda now: validation.validate_send(request, now, allow_insecure_webhooks=False),
        views.send_response,
        pb.SendSmsResponse,
    )
    return outcome.response, outcome.created


def count(db: Database, client_id: str) -> int:
    with db.session() as session:
        return int(
            session.exec(
                select(func.count()).select_from(Message).where(Message.client_id == client_id)
            ).one()
        )


def insert(
    db: Database, client_id: str, created: str, status: str = "delivered", body: str = "x"
) -> str:
    when = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    message = Message(
        id=credentials.new_id("msg"),
        client_id=client_id,
        to="+33612345678",
        body=body,
        status=status,
        created_at=when,
        queued_at=when,
        due_at=when,
    )
    with db.write() as session:
        session.add(message)
    return message.id


def test_concurrent_requests_with_one_key_commit_once(
    db: Database, settings: Settings, client_id: str
) -> None:
    request = pb.SendSmsRequest(to="+33612345678", message="race")
    barrier = threading.Barrier(20)

    def attempt(_: int) -> tuple[pb.SendSmsResponse, bool]:
        barrier.wait()
        return send(db, settings, client_id, request, key="same-key")

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(attempt, range(20)))
    assert sum(created for _, created in outcomes) == 1
    assert len({reply.SerializeToString() for reply, _ in outcomes}) == 1
    assert count(db, client_id) == 1


def test_the_accept_lane_batches_and_each_request_keeps_its_own_outcome(
    db: Database, settings: Settings, client_id: str
) -> None:
    """Many sends in flight share lane transactions (group commit), yet a bad request fails
    alone, one idempotency key commits once, and a reused key with another body is refused."""
    lane = intake.Intake(db, settings)

    def submission(request: pb.SendSmsRequest, key: str | None = None) -> intake.Submission:
        return intake.Submission(
            client_id=client_id,
            test=True,
            device_header=None,
            operation="SendSms",
            key=key,
            request_hash=idempotency.request_hash(
                request, operation="SendSms", device_id=None, test=True
            )
            if key
            else "",
        )

    def submit(
        request: pb.SendSmsRequest, key: str | None = None
    ) -> Awaitable[intake.Outcome[pb.SendSmsResponse]]:
        return lane.submit(
            submission(request, key),
            lambda now: validation.validate_send(request, now, allow_insecure_webhooks=False),
            views.send_response,
            pb.SendSmsResponse,
        )

    good = [pb.SendSmsRequest(to="+33612345678", message=f"lane {i}") for i in range(60)]
    bad = pb.SendSmsRequest(to="+33 12", message="bad number")
    keyed = pb.SendSmsRequest(to="+33612345678", message="keyed")
    other_body = pb.SendSmsRequest(to="+33612345678", message="another body")

    async def main() -> list[Any]:
        calls = [submit(r) for r in good[:30]] + [submit(bad)]
        calls += [submit(keyed, key="lane-key") for _ in range(5)] + [submit(r) for r in good[30:]]
        results = await asyncio.gather(*calls, return_exceptions=True)
        late = await asyncio.gather(submit(other_body, key="lane-key"), return_exceptions=True)
        return [*results, *late]

    try:
        results = asyncio.run(main())
    finally:
        lane.close()
    plain = results[:30] + results[36:66]
    assert all(isinstance(r, intake.Outcome) and r.created for r in plain)
    assert len({r.response.message_id for r in plain}) == 60
    refused = results[30]
    assert isinstance(refused, ApiError)
    assert refused.code == ErrorCode.INVALID_PHONE_NUMBER
    keyed_outcomes = results[31:36]
    assert sum(o.created for o in keyed_outcomes) == 1
    assert len({o.response.SerializeToString() for o in keyed_outcomes}) == 1
    reused = results[66]
    assert isinstance(reused, ApiError)
    assert reused.code == ErrorCode.IDEMPOTENCY_KEY_REUSED
    assert count(db, client_id) == 61
    assert lane.transactions < len(results) - 1  # requests shared transactions


def test_the_accept_lane_refuses_opted_out_recipients_request_by_request(
    db: Database, settings: Settings, client_id: str
) -> None:
    """The lane reads each client's opt-outs once per batch for all its requests: a request to
    a listed number (alone, in a bulk, or keyed in its own SAVEPOINT) is refused naming it, the
    requests beside it in the same transaction go through, and another client's list does not
    count."""
    from zimsend.server.compliance import opt_outs

    other = accounts.create_client(db, "engines other").id
    listed, free = "+33698765432", "+33612345678"
    with db.write() as session:
        opt_outs.add(session, client_id, listed, source=opt_outs.API)
    lane = intake.Intake(db, settings)

    def submit(who: str, request: Any, key: str | None = None) -> Awaitable[intake.Outcome[Any]]:
        bulk = isinstance(request, pb.SendBulkSmsRequest)
        operation = "SendBulkSms" if bulk else "SendSms"
        check = validation.validate_bulk if bulk else validation.validate_send
        response = views.bulk_response(pb.SendBulkSmsResponse) if bulk else views.send_response
        return lane.submit(
            intake.Submission(
                client_id=who,
                test=True,
                device_header=None,
                operation=operation,
                key=key,
                request_hash=idempotency.request_hash(
                    request, operation=operation, device_id=None, test=True
                )
                if key
                else "",
            ),
            lambda now: check(request, now, allow_insecure_webhooks=False),
            response,
            pb.SendBulkSmsResponse if bulk else pb.SendSmsResponse,
        )

    async def main() -> list[Any]:
        calls = [
            submit(client_id, pb.SendSmsRequest(to=free, message=f"ok {i}")) for i in range(20)
        ]
        calls += [
            submit(client_id, pb.SendSmsRequest(to=listed, message="refused")),
            submit(client_id, pb.SendBulkSmsRequest(recipients=[free, listed], message="b")),
            submit(client_id, pb.SendSmsRequest(to=listed, message="keyed"), key="opt-key"),
            submit(other, pb.SendSmsRequest(to=listed, message="other client")),
        ]
        calls += [
            submit(client_id, pb.SendSmsRequest(to=free, message=f"ok {i}")) for i in range(20, 40)
        ]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    try:
        results = asyncio.run(main())
    finally:
        lane.close()
    accepted = results[:20] + results[24:]
    assert all(isinstance(r, intake.Outcome) and r.created for r in accepted)
    single, bulk, keyed = results[20:23]
    for refused in (single, bulk, keyed):
        assert isinstance(refused, ApiError)
        assert refused.code == ErrorCode.RECIPIENT_OPTED_OUT
    assert isinstance(bulk, ApiError)
    assert [v.field for v in bulk.violations] == ["recipients[1]"]
    assert isinstance(results[23], intake.Outcome)
    assert results[23].created
    assert count(db, client_id) == 40
    assert count(db, other) == 1


def test_a_reused_key_with_another_body_is_refused(
    db: Database, settings: Settings, client_id: str
) -> None:
    send(db, settings, client_id, pb.SendSmsRequest(to="+33612345678", message="a"), key="k")
    with pytest.raises(ApiError) as info:
        send(db, settings, client_id, pb.SendSmsRequest(to="+33612345678", message="b"), key="k")
    assert info.value.code == ErrorCode.IDEMPOTENCY_KEY_REUSED
    assert count(db, client_id) == 1


def test_stats_group_by_utc_day(db: Database, settings: Settings, client_id: str) -> None:
    recent = utcnow().replace(hour=0, minute=30, second=0, microsecond=0) - dt.timedelta(days=2)
    late = recent.replace(hour=23, minute=59, second=59)
    for when, status in [
        (recent, "delivered"),
        (late, "sent"),
        (late, "failed"),
        (late + dt.timedelta(seconds=1), "delivered"),
        (late, "queued"),
    ]:
        insert(db, client_id, when.isoformat(), status)
    with db.write() as session:
        session.add(
            DailyAggregate(client_id=client_id, day=dt.date(2000, 1, 1), sent=3, delivered=2)
        )
    start = dt.datetime(1999, 12, 1, tzinfo=UTC)
    result = stats.compute(db, settings, client_id, start, utcnow(), None)
    assert [(d.isoformat(), c.sent, c.delivered, c.failed) for d, c in result.by_day()] == [
        ("2000-01-01", 3, 2, 0),
        (recent.date().isoformat(), 2, 1, 1),
        ((recent + dt.timedelta(days=1)).date().isoformat(), 1, 1, 0),
    ]
    assert (result.total_sent, result.delivered, result.failed, result.pending) == (6, 4, 1, 1)


def test_search_is_case_insensitive_and_literal(
    db: Database, settings: Settings, client_id: str
) -> None:
    now = utcnow().isoformat()
    plain = insert(db, client_id, now, body="Votre CODE promo")
    percent = insert(db, client_id, now, body="50% off_today")
    v = Violations()

    def found(text: str) -> set[str]:
        flt = history.message_filter(v, settings, client_id, search=text)
        return {m.id for m in history.list_messages(db, flt, history.Page(1, 50)).rows}

    assert found("code") == {plain}
    assert found("%") == {percent}
    assert found("f_t") == {percent}
    assert found("o_f") == set()  # "_" is not a wildcard
    assert found("/") == set()  # nor is the escape character special
    assert not v


def test_export_keyset_walks_ties_once(db: Database, settings: Settings, client_id: str) -> None:
    same = "2025-03-01T00:00:00Z"
    ids = sorted(insert(db, client_id, same) for _ in range(7))
    flt = history.MessageFilter(client_id=client_id, since=dt.datetime(2000, 1, 1, tzinfo=UTC))
    seen: list[str] = []
    after = None
    while True:
        chunk = history.export_chunk(db, flt, after, 3)
        seen += [m.id for m in chunk]
        if len(chunk) < 3:
            break
        after = (chunk[-1].created_at, chunk[-1].id)
    assert seen == ids


def test_cancel_and_resend_are_conditional(
    db: Database, settings: Settings, client_id: str
) -> None:
    message_id = insert(db, client_id, utcnow().isoformat(), status="queued")
    assert one_message.cancel(db, settings, client_id, message_id).status == "cancelled"
    with pytest.raises(ApiError) as info:
        one_message.cancel(db, settings, client_id, message_id)
    assert info.value.code == ErrorCode.CANNOT_CANCEL_MESSAGE
    failed = insert(db, client_id, utcnow().isoformat(), status="failed")
    assert one_message.resend(db, settings, client_id, failed).attempts == 1
    with pytest.raises(ApiError) as info:
        one_message.resend(db, settings, client_id, failed)
    assert info.value.code == ErrorCode.CANNOT_RESEND_MESSAGE
