"""The outbox as the worker sees it, and the endpoints as the API manages them — on SQLite and
PostgreSQL alike (the `db` fixture), without processes."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from _webhooks import PEPPER, add_endpoint, add_event, event_row, seed_client
from sqlmodel import select

from zimsend.server import webhook_endpoints
from zimsend.server.accounts.credentials import decrypt_secret, new_id
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.storage import (
    DailyAggregate,
    Database,
    Message,
    OutboxStatus,
    WebhookEndpoint,
)
from zimsend.server.webhook_delivery.sender import AttemptOutcome
from zimsend.server.worker.outbox import (
    ClaimedEvent,
    claim_due_events,
    finish_event,
    record_attempt,
    release_claim,
    targets_of,
)
from zimsend.server.worker.retention import purge_expired, retention_cutoff

LEASE = dt.timedelta(seconds=30)
SCHEDULE = [0.0, 60.0, 300.0]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def claim(
    db: Database, token: str = "w1#1", limit: int = 10, at: dt.datetime | None = None
) -> list[ClaimedEvent]:
    return claim_due_events(db, token=token, limit=limit, lease=LEASE, now=at or now())


def ok(at: dt.datetime | None = None) -> AttemptOutcome:
    return AttemptOutcome(True, 200, 12, None, at or now())


def failed(at: dt.datetime | None = None) -> AttemptOutcome:
    return AttemptOutcome(False, 503, 7, "HTTP 503: the receiver must answer 2xx", at or now())


# --- ConfigureWebhook validation ----------------------------------------------------------


def test_configure_generates_a_whsec_secret_stored_encrypted(db: Database) -> None:
    client = seed_client(db)
    new = add_endpoint(
        db, client, "https://hooks.example.com/z", ["sms.sent", "sms.sent", "otp.verified"]
    )
    assert new.secret.startswith("whsec_")
    assert new.endpoint.id.startswith("wh_")
    assert new.endpoint.events == ["sms.sent", "otp.verified"]
    with db.session() as s:
        row = s.get(WebhookEndpoint, new.endpoint.id)
    assert row is not None
    assert new.secret not in row.secret_encrypted
    assert decrypt_secret(PEPPER, row.secret_encrypted, bound_to=row.id) == new.secret


def test_configure_names_every_bad_field(db: Database) -> None:
    client = seed_client(db)
    with pytest.raises(ApiError) as caught:
        webhook_endpoints.configure(
            db,
            PEPPER,
            client,
            url="https://hooks.example.com/",
            allow_insecure=False,
            events=["sms.sent", "sms.exploded", "webhook.test"],
            secret="short",
        )
    error = caught.value
    assert error.code == ErrorCode.INVALID_REQUEST
    assert {v.field for v in error.violations} == {"events[1]", "events[2]", "secret"}
    assert "sms.exploded" in error.message
    assert "16" in error.message


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://[::ffff:127.0.0.1]/",
        "https://2130706433/",
        "http://example.com/",
    ],
)
def test_configure_refuses_local_and_plain_urls_when_insecure_is_off(
    db: Database, url: str
) -> None:
    client = seed_client(db)
    with pytest.raises(ApiError) as caught:
        webhook_endpoints.configure(
            db, PEPPER, client, url=url, events=["sms.sent"], secret="", allow_insecure=False
        )
    assert caught.value.code == ErrorCode.INVALID_WEBHOOK_URL
    assert caught.value.violations[0].field == "url"


def test_configure_accepts_user_secrets_and_checks_whsec_ones(db: Database) -> None:
    client = seed_client(db)
    own = add_endpoint(
        db, client, "https://a.example.com/", secret="my-own-secret-of-32-characters!!"
    )
    assert own.secret == "my-own-secret-of-32-characters!!"
    with pytest.raises(ApiError, match="base64"):
        add_endpoint(db, client, "https://a.example.com/", secret="whsec_this*is*not*base64*at*all")
    with pytest.raises(ApiError, match="16 bytes"):
        add_endpoint(db, client, "https://a.example.com/", secret="whsec_c2hvcnRzaG9ydA==")


def test_endpoints_are_scoped_by_client(db: Database) -> None:
    mine, theirs = seed_client(db), seed_client(db)
    hook = add_endpoint(db, theirs, "https://a.example.com/").endpoint
    assert webhook_endpoints.list_endpoints(db, mine) == []
    for call in (webhook_endpoints.delete, webhook_endpoints.queue_test_event):
        with pytest.raises(ApiError) as caught:
            call(db, mine, hook.id)
        assert caught.value.code == ErrorCode.WEBHOOK_NOT_FOUND
    webhook_endpoints.delete(db, theirs, hook.id)
    assert webhook_endpoints.list_endpoints(db, theirs) == []


# --- claims ------------------------------------------------------------------------------


def test_a_claim_leases_due_events_once(db: Database) -> None:
    client = seed_client(db)
    first, second = add_event(db, client), add_event(db, client)
    add_event(db, client, at=now() + dt.timedelta(hours=1))  # not due yet
    claimed = claim(db)
    assert [e.id for e in claimed] == [first, second]
    assert all(e.attempt == 1 for e in claimed)
    assert claim(db, token="w2#1") == []
    row = event_row(db, first)
    assert row.status == OutboxStatus.DELIVERING
    assert row.claimed_by == "w1#1"


def test_an_expired_lease_is_taken_over_as_the_same_attempt(db: Database) -> None:
    client = seed_client(db)
    event_id = add_event(db, client)
    (mine,) = claim(db)
    later = now() + LEASE + dt.timedelta(seconds=1)
    (theirs,) = claim(db, token="w2#1", at=later)
    assert theirs.id == event_id
    assert theirs.attempt == mine.attempt == 1
    # The first worker's outcome arrives late: it must not overwrite the new owner's.
    assert (
        finish_event(db, mine, remaining=0, last_error=None, schedule=SCHEDULE, now=later) is None
    )
    assert event_row(db, event_id).claimed_by == "w2#1"
    assert (
        finish_event(db, theirs, remaining=0, last_error=None, schedule=SCHEDULE, now=later)
        == "delivered"
    )


def test_attempts_follow_the_schedule_then_fail(db: Database) -> None:
    client = seed_client(db)
    event_id = add_event(db, client)
    t = now()
    for attempt, delay in ((1, 60), (2, 300)):
        (event,) = claim(db, at=t)
        assert event.attempt == attempt
        assert (
            finish_event(db, event, remaining=1, last_error="x", schedule=SCHEDULE, now=t)
            == "pending"
        )
        row = event_row(db, event_id)
        assert row.next_attempt_at == t + dt.timedelta(seconds=delay)
        assert row.attempts == attempt
        assert claim(db, at=t + dt.timedelta(seconds=delay - 1)) == []
        t += dt.timedelta(seconds=delay)
    (event,) = claim(db, at=t)
    assert event.attempt == 3
    assert (
        finish_event(db, event, remaining=1, last_error="x", schedule=SCHEDULE, now=t) == "failed"
    )
    assert claim(db, at=t + dt.timedelta(days=1)) == []


def test_release_gives_the_event_back_at_once(db: Database) -> None:
    client = seed_client(db)
    add_event(db, client)
    (event,) = claim(db)
    release_claim(db, event, now())
    (again,) = claim(db, token="w2#1")
    assert again.id == event.id
    assert again.attempt == 1


@pytest.mark.postgres
def test_concurrent_claims_never_share_an_event(postgres_database_url: str) -> None:
    db = Database.from_url(postgres_database_url, pool_size=10)
    db.migrate()
    try:
        client = seed_client(db)
        for _ in range(200):
            add_event(db, client)
        start = threading.Barrier(8)

        def worker(n: int) -> list[str]:
            start.wait()
            got: list[str] = []
            while batch := claim(db, token=f"w{n}", limit=7):
                got += [e.id for e in batch]
            return got

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(worker, range(8)))
        everything = [e for r in results for e in r]
        assert len(everything) == len(set(everything)) == 200
        assert sum(1 for r in results if r) > 1  # they really ran side by side
    finally:
        db.dispose()


# --- targets -----------------------------------------------------------------------------


def test_targets_are_the_subscribed_active_endpoints(db: Database) -> None:
    client, other = seed_client(db), seed_client(db)
    sent = add_endpoint(db, client, "https://a.example.com/", ["sms.sent"])
    add_endpoint(db, client, "https://b.example.com/", ["sms.delivered"])
    gone = add_endpoint(db, client, "https://c.example.com/", ["sms.sent"])
    add_endpoint(db, other, "https://d.example.com/", ["sms.sent"])
    webhook_endpoints.delete(db, client, gone.endpoint.id)
    add_event(db, client, "sms.sent")
    (event,) = claim(db)
    targets = targets_of(db, PEPPER, event)
    assert [(t.url, t.webhook_id, t.secret) for t in targets] == [
        ("https://a.example.com/", sent.endpoint.id, sent.secret)
    ]


def test_a_message_webhook_url_replaces_the_endpoints(db: Database) -> None:
    client = seed_client(db)
    newest = add_endpoint(db, client, "https://a.example.com/", ["sms.delivered"])
    add_event(db, client, "sms.sent", webhook_url="https://override.example.com/x")
    (event,) = claim(db)
    (target,) = targets_of(db, PEPPER, event)
    assert target.url == "https://override.example.com/x"
    assert target.webhook_id is None
    assert target.secret == newest.secret  # signed with the client's newest endpoint secret


def test_a_message_webhook_url_without_any_secret_is_never_sent_unsigned(db: Database) -> None:
    client = seed_client(db)
    add_event(db, client, "sms.sent", webhook_url="https://override.example.com/x")
    (event,) = claim(db)
    (target,) = targets_of(db, PEPPER, event)
    assert target.secret is None
    assert "configure a webhook" in (target.problem or "")


def test_a_test_event_goes_to_its_endpoint_only(db: Database) -> None:
    client = seed_client(db)
    tested = add_endpoint(db, client, "https://a.example.com/", ["sms.sent"])
    add_endpoint(db, client, "https://b.example.com/", ["sms.sent"])
    queued = webhook_endpoints.queue_test_event(db, client, tested.endpoint.id)
    (event,) = claim(db)
    assert event.id == queued.id
    assert event.event_type == "webhook.test"
    assert [t.webhook_id for t in targets_of(db, PEPPER, event)] == [tested.endpoint.id]


def test_targets_that_answered_2xx_are_not_sent_the_event_again(db: Database) -> None:
    client = seed_client(db)
    a = add_endpoint(db, client, "https://a.example.com/", ["sms.sent"])
    b = add_endpoint(db, client, "https://b.example.com/", ["sms.sent"])
    add_event(db, client)
    (event,) = claim(db)
    ta, tb = sorted(targets_of(db, PEPPER, event), key=lambda t: t.url)
    record_attempt(db, event, ta, ok())
    record_attempt(db, event, tb, failed())
    finish_event(db, event, remaining=1, last_error="x", schedule=[0, 0, 0], now=now())
    (retry,) = claim(db)
    assert retry.attempt == 2
    assert [t.webhook_id for t in targets_of(db, PEPPER, retry)] == [b.endpoint.id]
    assert a.endpoint.id != b.endpoint.id


# --- logs and redelivery -----------------------------------------------------------------


def test_logs_are_newest_first_paged_and_filtered(db: Database) -> None:
    client = seed_client(db)
    hook = add_endpoint(db, client, "https://a.example.com/", ["sms.sent"])
    t0 = now()
    ids = [add_event(db, client) for _ in range(3)]
    for event in claim(db):
        (target,) = targets_of(db, PEPPER, event)
        record_attempt(db, event, target, failed(t0 + dt.timedelta(seconds=ids.index(event.id))))
    page = webhook_endpoints.list_logs(db, client, page=1, limit=2)
    assert [r.delivery.event_id for r in page.logs] == [ids[2], ids[1]]
    assert (page.total_items, page.total_pages) == (3, 2)
    second = webhook_endpoints.list_logs(db, client, page=2, limit=2)
    assert [r.delivery.event_id for r in second.logs] == [ids[0]]
    only = webhook_endpoints.list_logs(db, client, event_id=ids[1])  # page and limit not given
    assert [r.delivery.event_id for r in only.logs] == [ids[1]]
    assert only.per_page == 50
    by_hook = webhook_endpoints.list_logs(db, client, page=1, limit=10, webhook_id=hook.endpoint.id)
    assert by_hook.total_items == 3
    assert webhook_endpoints.list_logs(db, seed_client(db), page=1, limit=10).total_items == 0
    with pytest.raises(ApiError, match="limit"):
        webhook_endpoints.list_logs(db, client, page=1, limit=101)
    zeros: tuple[dict[str, Any], ...] = ({"page": 0}, {"limit": 0})
    for zero in zeros:  # issue 12 item 11: refused, not the default
        with pytest.raises(ApiError, match=rf"{next(iter(zero))}: must be 1"):
            webhook_endpoints.list_logs(db, client, **zero)


def test_message_events_name_their_message_and_the_logs_list_one_message_s(
    db: Database,
) -> None:
    """Issue 14's gap: `list_logs(message_id=)` gives that message's deliveries, each naming
    the message; device and test events name none; another client's answers nothing."""
    client, other = seed_client(db), seed_client(db)
    hook = add_endpoint(
        db, client, "https://a.example.com/", ["sms.sent", "sms.delivered", "device.disconnected"]
    )
    add_endpoint(db, other, "https://b.example.com/", ["sms.sent"])
    mine, next_one = new_id("msg"), new_id("msg")
    sent = add_event(db, client, "sms.sent", data={"message_id": mine, "status": "sent"})
    delivered = add_event(
        db, client, "sms.delivered", data={"message_id": mine, "status": "delivered"}
    )
    add_event(db, client, "sms.sent", data={"message_id": next_one, "status": "sent"})
    device = add_event(db, client, "device.disconnected", data={"device_id": "dev_1"})
    test = webhook_endpoints.queue_test_event(db, client, hook.endpoint.id).id
    add_event(db, other, "sms.sent", data={"message_id": mine, "status": "sent"})
    assert [event_row(db, e).message_id for e in (sent, delivered, device, test)] == [
        mine,
        mine,
        None,
        None,
    ]
    t0, order = now(), [sent, delivered]  # delivered's attempt is the newer one
    for event in claim(db):
        step = order.index(event.id) if event.id in order else 2
        for target in targets_of(db, PEPPER, event):
            record_attempt(db, event, target, ok(t0 + dt.timedelta(seconds=step)))

    page = webhook_endpoints.list_logs(db, client, message_id=mine)
    assert [(e.delivery.event_id, e.message_id) for e in page.logs] == [
        (delivered, mine),
        (sent, mine),
    ]
    assert page.total_items == 2
    everything = webhook_endpoints.list_logs(db, client)
    assert {e.delivery.event_id: e.message_id for e in everything.logs}[device] is None
    assert everything.total_items == 5
    paged = webhook_endpoints.list_logs(db, client, message_id=mine, limit=1, page=2)
    assert ([e.delivery.event_id for e in paged.logs], paged.total_items) == ([sent], 2)
    assert webhook_endpoints.list_logs(db, other, message_id=next_one).logs == []
    (theirs,) = webhook_endpoints.list_logs(db, other, message_id=mine).logs
    assert theirs.delivery.client_id == other
    assert webhook_endpoints.list_logs(db, client, message_id="msg_unknown").total_items == 0
    with pytest.raises(ApiError, match=r"message_id: must be a message id .* at most 64"):
        webhook_endpoints.list_logs(db, client, message_id="m" * 65)


def test_redeliver_requeues_a_failed_event_with_a_fresh_schedule(db: Database) -> None:
    client = seed_client(db)
    event_id = add_event(db, client)
    (event,) = claim(db)
    with pytest.raises(ApiError, match="delivering"):
        webhook_endpoints.redeliver(db, client, event_id)
    finish_event(db, event, remaining=1, last_error="x", schedule=[0], now=now())
    assert event_row(db, event_id).status == "failed"
    with pytest.raises(ApiError) as caught:
        webhook_endpoints.redeliver(db, seed_client(db), event_id)
    assert caught.value.code == ErrorCode.EVENT_NOT_FOUND
    webhook_endpoints.redeliver(db, client, event_id)
    (again,) = claim(db)
    assert again.id == event_id
    assert again.attempt == 1


# --- retention ---------------------------------------------------------------------------


def test_retention_cutoff_is_the_start_of_the_first_retained_day() -> None:
    t = dt.datetime(2025, 4, 10, 15, 45, tzinfo=dt.UTC)
    assert retention_cutoff(t, 90) == dt.datetime(2025, 1, 10, tzinfo=dt.UTC)


def test_retention_deletes_old_messages_and_keeps_the_aggregates(db: Database) -> None:
    client = seed_client(db)
    t = now()
    old, edge = t - dt.timedelta(days=95), retention_cutoff(t, 90) + dt.timedelta(minutes=1)
    with db.write() as s:
        for mid, created in (("msg_old", old), ("msg_edge", edge), ("msg_new", t)):
            s.add(
                Message(
                    id=mid,
                    client_id=client,
                    to="+33612345678",
                    body="hi",
                    status="delivered",
                    due_at=created,
                    created_at=created,
                )
            )
        s.add(DailyAggregate(client_id=client, day=old.date(), sent=1, delivered=1))
    old_event = add_event(db, client, at=old)
    (event,) = claim(db)
    finish_event(db, event, remaining=0, last_error=None, schedule=SCHEDULE, now=t)
    counts = purge_expired(db, t, retention_days=90)
    assert counts["messages"] == 1
    assert counts["outbox_events"] == 1
    with db.session() as s:
        assert s.get(Message, "msg_old") is None
        assert s.get(Message, "msg_edge") is not None
        assert s.get(Message, "msg_new") is not None
        assert len(list(s.exec(select(DailyAggregate)))) == 1
    assert purge_expired(db, t, retention_days=90)["messages"] == 0
    assert old_event == event.id
