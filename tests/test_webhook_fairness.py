"""A slow receiver holds up only its own deliveries (webhook_delivery/origins.py).

Each receiver origin has its own small pool and `PER_ORIGIN` turns: a receiver that never
answers occupies at most that many connections, and every other receiver's events still go
out at once. The first tests run the sender in-process against the recording connector (no
socket is opened); the last one is a real `zimsend worker` with two real receivers.
"""

from __future__ import annotations

import time

import pytest
import trio
from _processes import free_port
from _processes import zimsend_env as make_env
from _receivers import Receiver, start_worker, wait_until
from _webhooks import RecordingConnector, StubResolver, add_event, event_row, seed_client

from zimsend.server import webhook_endpoints
from zimsend.server.storage import Database
from zimsend.server.webhook_delivery.sender import PER_ORIGIN, AttemptOutcome, WebhookSender
from zimsend.server.webhook_delivery.transport import guarded_pools

FAST, SLOW = "93.184.215.1", "93.184.215.3"
HOSTS = {
    "fast.example.com": [FAST],
    "slow.example.com": [SLOW],
    "private.example.com": ["10.0.0.1"],
}
SECRET = "whsec_" + "A" * 43 + "="
TEST_PEPPER = "test-pepper-not-secret-0123456789"


def sender_for(
    connector: RecordingConnector,
    resolver: StubResolver | None = None,
    *,
    timeout: float = 5,
    max_wait: float | None = None,
) -> WebhookSender:
    transport = guarded_pools(
        per_origin=PER_ORIGIN, resolver=resolver or StubResolver(HOSTS), connector=connector
    )
    return WebhookSender(
        timeout=timeout, allow_insecure=False, transport=transport, max_wait=max_wait
    )


async def post(sender: WebhookSender, url: str, out: list[AttemptOutcome]) -> None:
    out.append(await sender.post(url, secret=SECRET, event_id="evt_0123456789abcdef", body=b"{}"))


def test_a_hanging_receiver_gets_per_origin_connections_and_others_are_not_held_up() -> None:
    async def main() -> None:
        connector = RecordingConnector(hang={SLOW})
        async with sender_for(connector, timeout=30) as sender, trio.open_nursery() as nursery:
            stuck: list[AttemptOutcome] = []
            for _ in range(3 * PER_ORIGIN):
                nursery.start_soon(post, sender, "https://slow.example.com/hook", stuck)
            await trio.sleep(0.2)
            assert connector.connects.count((SLOW, 443)) == PER_ORIGIN  # the rest wait their turn
            done: list[AttemptOutcome] = []
            with trio.fail_after(2):  # far less than the slow receiver's 30 s
                async with trio.open_nursery() as fast:
                    for _ in range(2 * PER_ORIGIN):
                        fast.start_soon(post, sender, "https://fast.example.com/hook", done)
            assert len(done) == 2 * PER_ORIGIN
            assert all(o.success for o in done)
            assert stuck == []
            assert connector.connects.count((SLOW, 443)) == PER_ORIGIN
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_no_turn_within_max_wait_fails_the_attempt_without_sending() -> None:
    async def main() -> None:
        connector = RecordingConnector(hang={SLOW})
        async with (
            sender_for(connector, timeout=30, max_wait=0.2) as sender,
            trio.open_nursery() as nursery,
        ):
            outcomes: list[AttemptOutcome] = []
            for _ in range(PER_ORIGIN + 2):
                nursery.start_soon(post, sender, "https://slow.example.com/hook", outcomes)
            await trio.sleep(0.6)
            assert len(outcomes) == 2
            assert all(
                not o.success and o.status is None and "not sent" in (o.error or "")
                for o in outcomes
            )
            assert connector.connects.count((SLOW, 443)) == PER_ORIGIN
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_every_origin_pool_checks_addresses_and_resolves_once_per_connection() -> None:
    answers = iter([[FAST], ["127.0.0.1"]])  # a rebinding DNS server's two answers
    resolver = StubResolver(
        lambda host, port: HOSTS[host] if host != "rebind.example.com" else next(answers)
    )

    async def main() -> None:
        connector = RecordingConnector()
        async with sender_for(connector, resolver) as sender:
            outcomes: list[AttemptOutcome] = []
            await post(sender, "https://private.example.com/", outcomes)
            await post(sender, "https://rebind.example.com/", outcomes)
        refused, rebind = outcomes
        assert not refused.success
        assert "10.0.0.1" in (refused.error or "")
        assert rebind.success
        assert connector.connects == [(FAST, 443)]
        assert resolver.calls == ["private.example.com", "rebind.example.com"]

    trio.run(main)


def test_idle_origins_pools_are_closed_and_their_number_is_bounded() -> None:
    async def main() -> None:
        pools = guarded_pools(
            per_origin=2,
            resolver=StubResolver(lambda h, p: [FAST]),
            connector=RecordingConnector(),
            max_origins=2,
            idle_seconds=0.3,
        )
        async with WebhookSender(timeout=5, allow_insecure=False, transport=pools) as sender:
            outcomes: list[AttemptOutcome] = []
            for name in ("a", "b", "c", "d"):
                await post(sender, f"https://{name}.example.com/", outcomes)
                assert len(pools) <= 3  # beyond 2, the least recently used idle ones go
            await trio.sleep(0.4)
            await post(sender, "https://e.example.com/", outcomes)
            assert len(pools) == 1  # the others were idle for idle_seconds: closed
            assert all(o.success for o in outcomes)
        assert len(pools) == 0

    trio.run(main)


@pytest.mark.slow
def test_a_slow_receiver_does_not_hold_up_another_one(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A real worker and two real receivers: one never answers (5 s timeout), the other gets
    its events at once, while the first holds exactly its `PER_ORIGIN` connections."""
    data_dir = tmp_path_factory.mktemp("fair-data")
    logs_dir = tmp_path_factory.mktemp("fair-logs")
    env = make_env(
        data_dir,
        TEST_PEPPER,
        ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
        ZIMSEND_WEBHOOK_TIMEOUT_SECONDS="5",
    )
    db = Database.from_url(f"sqlite:///{data_dir / 'zimsend.db'}")
    db.migrate()
    client_id = seed_client(db)
    secret, ports = "fairness-test-secret-0123456789", {"slow": free_port(), "fast": free_port()}
    for name, event in (("slow", "sms.sent"), ("fast", "sms.delivered")):
        webhook_endpoints.configure(
            db,
            TEST_PEPPER.encode(),
            client_id,
            url=f"http://127.0.0.1:{ports[name]}/hooks",
            events=[event],
            secret=secret,
            allow_insecure=True,
        )
    with (
        Receiver(logs_dir, secret=secret, port=ports["slow"], mode="hang", name="slow") as slow,
        Receiver(logs_dir, secret=secret, port=ports["fast"], name="fast") as fast,
        start_worker(env, logs_dir, "fair"),
    ):
        stuck = [add_event(db, client_id, "sms.sent") for _ in range(2 * PER_ORIGIN)]
        slow.wait_for(lambda r: len(r) >= PER_ORIGIN, what="the slow receiver's connections")
        started = time.monotonic()
        events = [add_event(db, client_id, "sms.delivered") for _ in range(20)]
        records = fast.wait_for(
            lambda r: len(r) >= len(events),
            timeout=4.5,
            what="every event at the fast receiver before a slow timeout",
        )
        took = time.monotonic() - started
        wait_until(
            lambda: all(event_row(db, e).status == "delivered" for e in events),
            timeout=4.5 - took,
            what="the fast receiver's events delivered",
        )
        assert len(slow.records()) == PER_ORIGIN  # the others wait for that origin's turns
        assert all(event_row(db, e).status == "delivering" for e in stuck)
    assert sorted(r["event_id"] for r in records) == sorted(events)
    assert all(r["verified"] for r in records)
    db.dispose()
