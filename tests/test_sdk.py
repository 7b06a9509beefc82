"""The Python SDK (`zimsend.client`) against the real stack: a real server behind the real
Envoy, a real simulated phone connected through Envoy's phone port, a real worker delivering
webhooks to a real receiver (node). Both clients (`ZimSend`, `AsyncZimSend`) over both
transports (REST, gRPC) give the same typed answers.

Acceptance of issue 15 item 1: a send waits for `delivered` (blocking and asyncio), a 429 is
retried after `Retry-After`, a send whose answer was lost on a cut connection is retried and
creates one message, and the webhook helper verifies a real delivery and rejects a tampered one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from _devices import CuttingProxy, outbox_lines, start_agent, wait_for
from _processes import run_zimsend
from conftest import Stack

from zimsend.client import (
    AsyncZimSend,
    Batch,
    ConflictError,
    Device,
    InboundSms,
    InvalidRequestError,
    Message,
    MessageStatus,
    NotFoundError,
    OtpError,
    Page,
    RateLimitError,
    RestTransport,
    Retries,
    SentMessage,
    SmsEventData,
    WebhookVerificationError,
    ZimSend,
    ZimSendError,
    verify_webhook,
)

TRANSPORTS = ["rest", "grpc"]


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    data_dir = tmp_path_factory.mktemp("zimsend-data")
    return make_env(
        data_dir,
        TEST_PEPPER,
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
        ZIMSEND_WEBHOOK_RETRY_SCHEDULE_SECONDS="[0,1,2]",
    )


def _client(stack: Stack, **options: Any) -> ZimSend:
    return ZimSend(
        api_key=stack.api_key, client_id=stack.client_id, base_url=stack.base_url, **options
    )


class Phone(NamedTuple):
    """The module's device and the outbox file its simulated phone writes what it sends to."""

    device_id: str
    outbox: Path


@pytest.fixture(scope="module")
def phone(
    stack: Stack, zimsend_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Phone]:
    """A device made with the SDK, its real agent connected through Envoy's phone port."""
    with _client(stack) as zs:
        created = zs.devices.create("sdk phone")
        zs.devices.update(created.device_id, send_interval_ms=0)
        workdir = tmp_path_factory.mktemp("phone")
        agent = start_agent(
            zimsend_env,
            stack.envoy.device_target,
            stack.client_id,
            created.device_id,
            created.device_password,
            workdir,
            "--delivery-delay",
            "0.2",
            "--send-delay",
            "0.05",
        )
        with agent:
            wait_for(
                lambda: zs.devices.get(created.device_id).status == "online", 30, "phone online"
            )
            yield Phone(created.device_id, workdir / "outbox.jsonl")


def _tomorrow() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


# --- Sending and waiting --------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only zimsend-client and zimsend-protos (and what they
    depend on), installed from the working tree like a user's `pip install`."""
    venv = tmp_path_factory.mktemp("client-only") / "venv"
    uv = Path(sys.executable).with_name("uv")
    subprocess.run([str(uv), "venv", "-q", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [
        str(uv),
        "pip",
        "install",
        "-q",
        "--python",
        str(python),
        str(ROOT / "protos"),
        str(ROOT / "clients"),
    ]
    # The uv cache normally has every wheel (the workspace was synced); else ask the index.
    if subprocess.run([*install, "--offline"], capture_output=True, timeout=300).returncode:
        subprocess.run(install, check=True, timeout=600)
    return python


@pytest.mark.slow
def test_the_sdk_alone_sends_and_waits_for_delivered(
    stack: Stack, phone: Phone, client_only_python: Path
) -> None:
    """Issue 15's acceptance, literally: `from zimsend.client import ZimSend` where only the
    client distribution is installed (no zimsend.server, no SQLModel), blocking and asyncio."""
    script = textwrap.dedent("""
        import asyncio, json, sys
        from zimsend.client import AsyncZimSend, ZimSend
        base, client_id, key = sys.argv[1:4]
        with ZimSend(api_key=key, client_id=client_id, base_url=base) as zs:
            sent = zs.sms.send("+33612345640", "Bonjour depuis le SDK")
            done = zs.sms.wait(sent.message_id, timeout=30, interval=0.2)

        async def main():
            async with AsyncZimSend(api_key=key, client_id=client_id, base_url=base) as azs:
                sent = await azs.sms.send("+33612345641", "Bonjour depuis asyncio")
                return await azs.sms.wait(sent.message_id, timeout=30, interval=0.2)

        adone = asyncio.run(main())
        try:
            import zimsend.server
            server = True
        except ImportError:
            server = False
        # (not trio: httpcore imports it to sniff the async library when it is installed)
        loaded = [m for m in ("sqlmodel", "sqlalchemy", "pydantic") if m in sys.modules]
        print(json.dumps({"sync": done.status, "async": adone.status, "server": server,
                          "loaded": loaded}))
    """)
    done = subprocess.run(
        [str(client_only_python), "-c", script, stack.base_url, stack.client_id, stack.api_key],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "sync": "delivered",
        "async": "delivered",
        "server": False,
        "loaded": [],
    }


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_send_waits_for_delivered(stack: Stack, phone: Phone, transport: str) -> None:
    device_id, outbox = phone
    with _client(stack, transport=transport) as zs:
        sent = zs.sms.send(
            "+33612345601",
            f"Votre commande est arrivée ({transport})",
            metadata={"order": "A-1"},
            priority="high",
        )
        assert isinstance(sent, SentMessage)
        assert sent.status is MessageStatus.QUEUED
        assert sent.to == "+33612345601"
        assert sent.segments == 1
        assert sent.encoding == "GSM7"
        assert sent.priority == "high"
        assert isinstance(sent.queued_at, dt.datetime)
        assert sent.queued_at.tzinfo is not None
        done = zs.sms.wait(sent.message_id, timeout=30, interval=0.2)
    assert isinstance(done, Message)
    assert done.status == "delivered"
    assert done.device_id == device_id
    assert done.delivered_at is not None
    assert done.metadata == {"order": "A-1"}
    assert [line["message_id"] for line in outbox_lines(outbox)].count(sent.message_id) == 1


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_async_client_sends_and_waits_for_delivered(
    stack: Stack, phone: Phone, transport: str
) -> None:
    async def main() -> tuple[Message, list[Message]]:
        async with AsyncZimSend(
            api_key=stack.api_key,
            client_id=stack.client_id,
            base_url=stack.base_url,
            transport=transport,
        ) as zs:
            sent = await zs.sms.send("+33612345602", f"Rendez-vous demain ({transport})")
            batch = await zs.sms.send_bulk(
                ["+33612345603", "+33612345604"], "Bulk async", scheduled_at=_tomorrow()
            )
            done = await zs.sms.wait(sent.message_id, timeout=30, interval=0.2)
            history = [m async for m in zs.sms.iter_history(to="+33612345604", page_size=1)]
            for item in batch.messages:
                await zs.sms.cancel(item.message_id)
            return done, history

    done, history = asyncio.run(main())
    assert done.status == MessageStatus.DELIVERED
    assert history
    assert all(m.to == "+33612345604" for m in history)


# --- Retries --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_429_is_retried_after_retry_after(stack: Stack, zimsend_env: dict[str, str]) -> None:
    """A client limited to 3 requests a minute: the 4th call is refused with Retry-After (the
    seconds to the next minute), the SDK waits that long and the same call then succeeds."""
    created = run_zimsend(["admin", "create-client", "--name", "limited"], zimsend_env)
    client_id = created["client_id"]
    key = run_zimsend(["admin", "create-key", "--client-id", client_id], zimsend_env)["api_key"]
    run_zimsend(
        ["admin", "set-rate-limit", "--client-id", client_id, "--per-minute", "3"], zimsend_env
    )
    seen: list[tuple[float, int, str | None]] = []

    def record(response: httpx.Response) -> None:
        seen.append((time.monotonic(), response.status_code, response.headers.get("retry-after")))

    # Start early in a minute's window, so the wait is long enough to measure yet bounded.
    while dt.datetime.now().second > 50:
        time.sleep(0.5)
    http = httpx.Client(event_hooks={"response": [record]})
    transport = RestTransport(stack.base_url, client=http)
    with ZimSend(
        api_key=key,
        client_id=client_id,
        base_url=stack.base_url,
        transport=transport,
        retries=Retries(max_retries=2, max_wait=70),
    ) as zs:
        for _ in range(3):
            zs.auth_test()
        info = zs.auth_test()  # refused once, then admitted in the next window
    assert info.client_id == client_id
    statuses = [status for _, status, _ in seen]
    assert statuses == [200, 200, 200, 429, 200], seen
    refused_at, _, retry_after = seen[3]
    assert retry_after is not None
    assert int(retry_after) >= 1
    assert seen[4][0] - refused_at >= float(retry_after) - 0.2
    http.close()

    # With retries off the refusal is a typed error carrying SPEC's code and Retry-After.
    with ZimSend(api_key=key, client_id=client_id, base_url=stack.base_url, retries=0) as zs:

        def exhaust() -> None:
            for _ in range(4):  # the retried call already counts in this window
                zs.auth_test()

        with pytest.raises(RateLimitError) as refused:
            exhaust()
    assert refused.value.code == "RATE_LIMIT_EXCEEDED"
    assert refused.value.http_status == 429
    assert refused.value.retry_after
    assert refused.value.retry_after >= 1


@pytest.mark.slow
def test_a_send_retried_after_a_cut_connection_creates_one_message(stack: Stack) -> None:
    proxy = CuttingProxy(stack.base_url.split("://", 1)[1].rstrip("/"))
    to = "+33612345609"
    try:
        with ZimSend(
            api_key=stack.api_key,
            client_id=stack.client_id,
            base_url=f"http://{proxy.address}",
            timeout=10,
            retries=Retries(max_retries=3, backoff=0.1),
        ) as zs:
            before = zs.sms.history(to=to).pagination.total_items
            proxy.lose_answers = 1
            sent = zs.sms.send(to, "Paiement reçu, merci", scheduled_at=_tomorrow())
            assert proxy.lose_answers == 0, "the first answer must have been lost"
            assert proxy.accepted >= 2, "the retry must have used a new connection"
            page = zs.sms.history(to=to)
            assert page.pagination.total_items == before + 1
            assert page.items[0].message_id == sent.message_id
            zs.sms.cancel(sent.message_id)

            # Without a key, the same cut on a call that is not safe to repeat is raised.
            proxy.lose_answers = 1
            with pytest.raises(ZimSendError) as lost:
                zs.devices.create("never retried")
            assert lost.value.code == "CONNECTION_ERROR"
    finally:
        proxy.close()


# --- Every endpoint, both transports --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_endpoint_returns_typed_results(stack: Stack, phone: Phone, transport: str) -> None:
    device_id, _ = phone
    with _client(stack, transport=transport) as zs:
        assert zs.auth_test().client_id == stack.client_id
        assert zs.auth_test(device_id=device_id).device_status == "online"

        # SMS: bulk, personalized, history pages, stats, cancel, export, inbox.
        to = "+3361234" + ("5610" if transport == "rest" else "5620")
        batch = zs.sms.send_bulk([to, to], "Soldes", scheduled_at=_tomorrow())
        assert isinstance(batch, Batch)
        assert batch.total_recipients == 2
        personal = zs.sms.send_personalized(
            [{"to": to, "message": "Bonjour Ada", "metadata": {"row": 1}}], scheduled_at=_tomorrow()
        )
        ids = [m.message_id for m in batch.messages + personal.messages]
        first = zs.sms.history(to=to, limit=2)
        assert isinstance(first, Page)
        assert first.pagination.total_items == 3
        assert first.has_more
        assert len(first.items) == 2
        assert sorted(m.message_id for m in zs.sms.iter_history(to=to, page_size=1)) == sorted(ids)
        stats = zs.sms.stats()
        assert stats.pending >= 3
        assert stats.period_to is not None
        cancelled = [zs.sms.cancel(i) for i in ids]
        assert all(c.status == "cancelled" for c in cancelled)
        assert zs.sms.status(ids[0]).cancelled_at is not None
        csv_text = b"".join(zs.sms.export(status="cancelled")).decode()
        assert ids[0] in csv_text
        assert csv_text.rstrip().splitlines()[-1].startswith("# end of")
        lines = b"".join(zs.sms.export(format="jsonl", status="cancelled")).decode().splitlines()
        assert json.loads(lines[-1])["end_of_export"] is True
        assert isinstance(zs.sms.inbox(limit=5), Page)

        # Typed errors with SPEC's code and HTTP status, whichever transport.
        with pytest.raises(NotFoundError) as missing:
            zs.sms.status("msg_0000000000000000")
        assert (missing.value.code, missing.value.http_status) == ("MESSAGE_NOT_FOUND", 404)
        with pytest.raises(InvalidRequestError) as bad:
            zs.sms.send_bulk(["+33612345678", "+33 12"], "x", scheduled_at=_tomorrow())
        assert bad.value.code == "INVALID_PHONE_NUMBER"
        assert bad.value.http_status == 400
        assert [v.field for v in bad.value.violations] == ["recipients[1]"]
        zs.sms.send(to, "a", scheduled_at=_tomorrow(), idempotency_key=f"k-{transport}")
        with pytest.raises(ConflictError):
            zs.sms.send(to, "b", scheduled_at=_tomorrow(), idempotency_key=f"k-{transport}")

        # OTP: a wrong code is an answer, not an error; an unknown OTP is OtpError.
        otp = zs.otp.send("+33612345699")
        verdict = zs.otp.verify(otp.otp_id, "000000")
        assert verdict.valid is False
        assert verdict.attempts_remaining == 2
        with pytest.raises(OtpError) as unknown:
            zs.otp.verify("otp_0000000000000000", "123456")
        assert unknown.value.code == "OTP_NOT_FOUND"

        # Devices.
        made = zs.devices.create(f"spare {transport}")
        assert made.pairing_uri.startswith("zimsend://")
        assert made.device_password
        changed = zs.devices.update(
            made.device_id, name="renamed", daily_cap=50, enabled=False, parts_per_minute=7
        )
        assert isinstance(changed, Device)
        assert (changed.name, changed.daily_cap, changed.enabled) == ("renamed", 50, False)
        assert (changed.parts_per_minute, changed.parts_per_hour) == (7, 0)  # per-SIM budget
        assert made.device_id in {d.device_id for d in zs.devices.list()}
        assert zs.devices.rotate_password(made.device_id).device_password != made.device_password
        zs.devices.delete(made.device_id)
        with pytest.raises(NotFoundError):
            zs.devices.get(made.device_id)

        # API keys.
        key = zs.api_keys.create(f"ci {transport}", test=True)
        assert key.api_key.startswith("zs_test_")
        listed = {k.key_id: k for k in zs.api_keys.list()}
        assert listed[key.key_id].last4 == key.api_key[-4:]
        zs.api_keys.revoke(key.key_id)
        assert {k.key_id: k for k in zs.api_keys.list()}[key.key_id].revoked_at is not None

        # Webhooks (the delivery itself is the next test's).
        hook = zs.webhooks.configure("https://example.com/hooks", ["sms.delivered"])
        assert hook.secret.startswith("whsec_")
        assert hook.events == ("sms.delivered",)
        assert hook.webhook_id in {w.webhook_id for w in zs.webhooks.list()}
        assert zs.webhooks.test(hook.webhook_id).event_id.startswith("evt_")
        assert isinstance(zs.webhooks.logs(webhook_id=hook.webhook_id), Page)
        zs.webhooks.delete(hook.webhook_id)


# --- Webhooks -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_webhook_helper_verifies_a_real_delivery_and_rejects_a_tampered_one(
    stack: Stack,
    phone: Phone,
    zimsend_env: dict[str, str],
    tmp_path: Path,
) -> None:
    from _receivers import Receiver, body_of, start_worker

    def _about(record: dict[str, Any], message_id: str) -> bool:
        return message_id.encode() in body_of(record)

    with _client(stack) as zs:
        with (
            Receiver(tmp_path, secret="whsec_" + "A" * 43 + "=") as receiver,
            start_worker(zimsend_env, tmp_path),
        ):
            made = zs.webhooks.configure(receiver.url, ["sms.delivered"], secret=receiver.secret)
            try:
                sent = zs.sms.send("+33612345630", "Livraison confirmée", metadata={"n": 7})
                receiver.wait_for(
                    lambda rs: any(_about(r, sent.message_id) for r in rs),
                    60,
                    "the sms.delivered delivery",
                )
            finally:
                zs.webhooks.delete(made.webhook_id)
    record = next(r for r in receiver.records() if _about(r, sent.message_id))
    body = body_of(record)
    headers = {k: v for k, v in record["headers"].items() if v is not None}
    event = verify_webhook(body, headers, receiver.secret)
    assert event.event == "sms.delivered"
    assert event.event_id == headers["webhook-id"]
    assert isinstance(event.data, SmsEventData)
    assert event.data.message_id == sent.message_id
    assert event.data.status == "delivered"
    assert event.data.metadata == {"n": 7}
    assert event.data.delivered_at is not None

    tampered = body.replace(b"Livraison", b"Livraisin")
    with pytest.raises(WebhookVerificationError, match="X-Webhook-Signature"):
        verify_webhook(tampered, headers, receiver.secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, "whsec_" + "B" * 43 + "=")
    stripped = {k: v for k, v in headers.items() if not k.lower().startswith("webhook-")}
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(body, stripped, receiver.secret)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(body, headers, receiver.secret, now=time.time() + 3600)


# --- Without a stack: the rules themselves --------------------------------------------------


def test_retry_rules_never_repeat_an_unsafe_call() -> None:
    from zimsend.client import RequestTimeout, ServerError, TransportError
    from zimsend.client._calls import DEVICE_CREATE, SEND, STATUS

    rules = Retries(max_retries=3, max_wait=60)
    limited = RateLimitError("RATE_LIMIT_EXCEEDED", "slow down", http_status=429, retry_after=7)
    cut = TransportError("CONNECTION_ERROR", "reset")
    busy = ServerError("UNAVAILABLE", "busy", http_status=503)
    assert rules.delay(DEVICE_CREATE, limited, 0) == 7  # refused before acting: any call
    assert rules.delay(DEVICE_CREATE, cut, 0) is None  # may have acted, not keyed
    assert rules.delay(DEVICE_CREATE, busy, 0) is None
    keyed = rules.delay(SEND, cut, 0)
    assert keyed is not None
    assert 0.25 <= keyed <= 0.5
    timed_out = rules.delay(STATUS, RequestTimeout("TIMEOUT", "slow"), 2)
    assert timed_out is not None
    assert 1.0 <= timed_out <= 2.0
    assert rules.delay(SEND, cut, 3) is None  # retries used up
    too_long = RateLimitError("RATE_LIMIT_EXCEEDED", "", http_status=429, retry_after=3600)
    assert rules.delay(STATUS, too_long, 0) is None
    otp = ZimSendError("OTP_RATE_LIMIT", "", http_status=429, retry_after=5)
    assert rules.delay(STATUS, otp, 0) is None


def test_rest_error_envelopes_become_typed_errors() -> None:
    from zimsend.client._rest import error_from_response

    body = json.dumps(
        {
            "success": False,
            "error": {"code": "INVALID_PHONE_NUMBER", "message": "bad"},
            "code": 3,
            "message": "bad",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "messages[2].to", "description": "no"}],
                }
            ],
        }
    ).encode()
    error = error_from_response(400, {}, body)
    assert isinstance(error, InvalidRequestError)
    assert (error.code, error.http_status, error.violations[0].field) == (
        "INVALID_PHONE_NUMBER",
        400,
        "messages[2].to",
    )
    limited = error_from_response(429, {"retry-after": "12"}, b"{}")
    assert isinstance(limited, RateLimitError)
    assert limited.retry_after == 12
    gateway = error_from_response(503, {}, b"upstream connect error")
    assert gateway.code == "UNAVAILABLE"
    assert "upstream" in gateway.message


def test_verify_webhook_against_the_workers_own_signing() -> None:
    from zimsend.server.webhook_delivery.signing import encode_body, signature_headers

    now = dt.datetime.now(dt.UTC)
    for secret in ("whsec_" + "QUJD" * 11, "my-own-secret-of-20-chars"):
        body = encode_body(
            "sms.received",
            "evt_1",
            now,
            {
                "id": "in_1",
                "device_id": "device_1",
                "from": "+33612345678",
                "message": "Oui",
                "sim_slot": 0,
                "received_at": "2025-01-15T10:30:00.123456789Z",
            },
        )
        event = verify_webhook(body, signature_headers(secret, "evt_1", body, now), secret)
        assert isinstance(event.data, InboundSms)
        assert event.data.from_ == "+33612345678"
        assert event.data.received_at is not None
        assert event.data.received_at.microsecond == 123456
    other = encode_body("sms.sent", "evt_2", now, {"message_id": "msg_1"})
    swapped = signature_headers("s" * 20, "evt_1", other, now)  # a signature for another id
    with pytest.raises(WebhookVerificationError):
        verify_webhook(other, swapped, "s" * 20)
