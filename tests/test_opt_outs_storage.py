"""The suppression list and the client policy in the storage layer, on SQLite and PostgreSQL:
one event per change of state (also when the same STOP is applied twice), numbers scoped by
client, keyword texts from inbound SMS, the policy's validation, and a resend to a number that
opted out since it failed."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from _sms import insert_message, new_account
from conftest import TEST_PEPPER
from sqlmodel import col, select

from zimsend.server.compliance import opt_outs, policy
from zimsend.server.config import Settings
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.sending import one_message
from zimsend.server.storage import Database, OutboxEvent, utcnow

PEPPER = TEST_PEPPER.encode()
NUMBER = "+33612345678"
PARIS = ZoneInfo("Europe/Paris")


def _events(db: Database, client_id: str) -> list[tuple[str, dict[str, object]]]:
    with db.session() as session:
        rows = session.exec(
            select(OutboxEvent)
            .where(col(OutboxEvent.client_id) == client_id)
            .order_by(col(OutboxEvent.created_at))
        ).all()
        return [(r.event_type, dict(r.payload)) for r in rows if r.event_type.startswith("sms.opt")]


def _inbound(db: Database, client_id: str, sender: str, body: str, n: int) -> str | None:
    with db.write() as session:
        return opt_outs.apply_inbound(
            session,
            client_id=client_id,
            device_id="device_x",
            sender=sender,
            body=body,
            inbound_id=f"in_{n}",
            now=utcnow(),
        )


def _listed(db: Database, client_id: str) -> list[str]:
    with db.session() as session:
        page = opt_outs.list_page(session, client_id, page=1, limit=100, phone_number=None)
        return [row.phone_number for row in page.rows]


def test_stop_and_start_write_one_event_per_change(db: Database) -> None:
    client = new_account(db, PEPPER).client_id
    assert _inbound(db, client, NUMBER, "Stop", 1) == "stop"
    assert _inbound(db, client, NUMBER, "STOP", 2) == "stop"  # already listed: no event
    assert _listed(db, client) == [NUMBER]
    assert _inbound(db, client, NUMBER, "hello", 3) is None
    assert _inbound(db, client, NUMBER, "unstop", 4) == "start"
    assert _inbound(db, client, NUMBER, "start", 5) == "start"  # not listed: no event
    assert _listed(db, client) == []
    events = _events(db, client)
    assert [kind for kind, _ in events] == ["sms.opted_out", "sms.opted_in"]
    assert events[0][1]["keyword"] == "Stop"
    assert events[0][1]["inbound_id"] == "in_1"
    assert events[1][1]["keyword"] == "unstop"


def test_a_sender_that_is_not_an_international_number_cannot_opt_out(db: Database) -> None:
    client = new_account(db, PEPPER).client_id
    assert _inbound(db, client, "ACME", "STOP", 1) is None
    assert _inbound(db, client, "0612345678", "STOP", 2) is None
    assert _listed(db, client) == []


def test_lists_are_per_client(db: Database) -> None:
    one, two = (new_account(db, PEPPER, name).client_id for name in ("one", "two"))
    _inbound(db, one, NUMBER, "STOP", 1)
    assert _listed(db, two) == []
    with db.write() as session:
        assert opt_outs.remove(session, two, NUMBER, source=opt_outs.API) is False
    assert _listed(db, one) == [NUMBER]


def test_a_resend_to_a_number_that_opted_out_since_is_refused(
    db: Database, settings: Settings
) -> None:
    client = new_account(db, PEPPER).client_id
    failed = insert_message(
        db, client, to=NUMBER, status="failed", failed_at=utcnow(), error_code="NETWORK_ERROR"
    )
    _inbound(db, client, NUMBER, "ARRÊT", 1)
    with pytest.raises(ApiError) as refused:
        one_message.resend(db, settings, client, failed)
    assert refused.value.code == ErrorCode.RECIPIENT_OPTED_OUT
    assert [v.field for v in refused.value.violations] == ["to"]
    _inbound(db, client, NUMBER, "START", 2)
    assert one_message.resend(db, settings, client, failed).status == "queued"


def test_a_resend_inside_quiet_hours_is_held(db: Database, settings: Settings) -> None:
    client = new_account(db, PEPPER).client_id
    failed = insert_message(db, client, to=NUMBER, status="failed", failed_at=utcnow())
    now = dt.datetime.now(dt.UTC)
    with db.write() as session:  # the window is this hour in Paris
        later = now + dt.timedelta(hours=1)
        policy.update(
            session,
            client,
            opt_outs=None,
            quiet_hours=policy.QuietChange(
                True,
                now.astimezone(PARIS).strftime("%H:00"),
                later.astimezone(PARIS).strftime("%H:00"),
                "",
            ),
        )
    resent = one_message.resend(db, settings, client, failed)
    assert resent.hold_reason == "quiet_hours"
    assert resent.held_until is not None
    assert resent.due_at == resent.held_until
    assert now < resent.held_until <= now + dt.timedelta(hours=1)


def test_policy_changes_are_validated_whole_and_stored(db: Database) -> None:
    client = new_account(db, PEPPER).client_id
    with db.write() as session, pytest.raises(ApiError) as bad:
        policy.update(
            session,
            client,
            opt_outs=policy.OptOutChange(["x" * 31], [], False),
            quiet_hours=policy.QuietChange(True, "8", "08:00", "Nowhere/Town"),
            max_send_attempts=11,
        )
    fields = [v.field for v in bad.value.violations]
    assert fields == [
        "opt_outs.stop_keywords[0]",
        "quiet_hours.start",
        "quiet_hours.fallback_time_zone",
        "max_send_attempts",
    ]
    with db.session() as session:
        assert policy.load(session, client) == policy.DEFAULTS
    with db.write() as session:
        stored = policy.update(
            session,
            client,
            opt_outs=policy.OptOutChange(["Halt", "HALT"], [], True),
            quiet_hours=None,
            max_send_attempts=2,
        )
    assert stored.stop_keywords == ("Halt",)
    assert stored.start_keywords == ("START", "UNSTOP")
    assert stored.exempt_otp is True
    with db.write() as session:
        later = policy.update(
            session,
            client,
            opt_outs=None,
            quiet_hours=None,
            max_send_attempts=4,
            now=utcnow() + dt.timedelta(seconds=5),
        )
    assert stored.updated_at is not None
    assert later.updated_at is not None
    assert later.updated_at > stored.updated_at  # update_time moves for max_send_attempts too
    assert later.stop_keywords == ("Halt",)
    with db.session() as session:
        assert policy.max_send_attempts(session, client, 3) == 4
        with db.engine.connect() as connection:
            assert policy.load(connection, client) == later


def test_the_same_stop_applied_at_once_by_several_writers_writes_one_event(db: Database) -> None:
    """Two replicas may store the same number's STOP (two phones, or a replay) at the same
    moment: the insert's ON CONFLICT makes exactly one of them write `sms.opted_out`."""
    from concurrent.futures import ThreadPoolExecutor

    client = new_account(db, PEPPER).client_id
    with ThreadPoolExecutor(max_workers=8) as pool:
        said = list(pool.map(lambda n: _inbound(db, client, NUMBER, "STOP", n), range(16)))
    assert said == ["stop"] * 16
    assert [kind for kind, _ in _events(db, client)] == ["sms.opted_out"]
    assert _listed(db, client) == [NUMBER]
