"""WebhookService over gRPC against a real `zimsend serve` with production settings: webhook
URLs must be HTTPS and public (`ZIMSEND_WEBHOOKS_ALLOW_INSECURE` unset).

SPEC §7 management: configure (secret shown once), list (no secrets), logs, test, delete —
every call scoped by client; §10 codes with a google.rpc.ErrorInfo naming them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from _sms import Account, error_reason, new_account, violations
from conftest import RunningServer

from zimsend.server.storage import Database, OutboxEvent
from zimsend.v1 import webhooks_pb2 as pb
from zimsend.v1 import webhooks_pb2_grpc as pb_grpc

TEST_PEPPER = b"test-pepper-not-secret-0123456789"


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env

    return make_env(tmp_path_factory.mktemp("zimsend-data"), TEST_PEPPER.decode())


@pytest.fixture(scope="module")
def webhooks(server: RunningServer) -> Iterator[pb_grpc.WebhookServiceStub]:
    with grpc.insecure_channel(server[1]) as channel:
        yield pb_grpc.WebhookServiceStub(channel)


@pytest.fixture
def account(server_db: Database) -> Account:
    return new_account(server_db, TEST_PEPPER, "webhook-service")


def configure(
    webhooks: Any,
    account: Any,
    url: str = "https://hooks.example.com/zimsend",
    events: tuple[str, ...] = ("sms.sent", "sms.delivered"),
    secret: str = "",
) -> Any:
    return webhooks.ConfigureWebhook(
        pb.ConfigureWebhookRequest(url=url, events=list(events), secret=secret),
        metadata=account.md(),
        timeout=10,
    )


def test_configure_shows_the_secret_once_and_list_never(
    webhooks: pb_grpc.WebhookServiceStub, account: Account
) -> None:
    created = configure(webhooks, account)
    assert created.success
    assert created.webhook_id.startswith("wh_")
    assert created.secret.startswith("whsec_")
    assert created.status == "active"
    assert list(created.events) == ["sms.sent", "sms.delivered"]
    listed = webhooks.ListWebhooks(pb.ListWebhooksRequest(), metadata=account.md(), timeout=10)
    (hook,) = listed.webhooks
    assert (hook.webhook_id, hook.url, hook.status) == (created.webhook_id, created.url, "active")
    assert created.secret not in str(listed)
    assert hook.created_at.seconds > 0


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://[::ffff:127.0.0.1]/",
        "https://2130706433/",
        "https://169.254.169.254/latest/meta-data/",
        "http://hooks.example.com/",
        "https://localhost/",
    ],
)
def test_local_and_plain_urls_are_refused(
    webhooks: pb_grpc.WebhookServiceStub, account: Account, url: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        configure(webhooks, account, url=url)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, fields = error_reason(caught.value), violations(caught.value)
    assert reason == "INVALID_WEBHOOK_URL"
    assert "url" in fields


def test_each_bad_field_is_named(webhooks: pb_grpc.WebhookServiceStub, account: Account) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        configure(webhooks, account, events=("sms.sent", "sms.teleported"), secret="tooshort")
    reason, fields = error_reason(caught.value), violations(caught.value)
    assert reason == "INVALID_REQUEST"
    assert set(fields) == {"events[1]", "secret"}
    assert "sms.teleported" in fields["events[1]"]
    assert "otp.verified" in fields["events[1]"]
    with pytest.raises(grpc.RpcError) as caught:
        configure(webhooks, account, events=())
    assert set(violations(caught.value)) == {"events"}


def test_test_queues_an_event_for_that_endpoint(
    webhooks: pb_grpc.WebhookServiceStub, account: Account, server_db: Database
) -> None:
    hook = configure(webhooks, account)
    reply = webhooks.TestWebhook(
        pb.TestWebhookRequest(webhook_id=hook.webhook_id), metadata=account.md(), timeout=10
    )
    assert reply.success
    assert reply.event_id.startswith("evt_")
    assert reply.event_id in reply.message
    with server_db.session() as s:
        event = s.get(OutboxEvent, reply.event_id)
    assert event is not None
    assert event.event_type == "webhook.test"
    assert event.client_id == account.client_id
    assert event.payload["webhook_id"] == hook.webhook_id


def test_another_clients_webhook_is_not_found(
    webhooks: pb_grpc.WebhookServiceStub, account: Account, server_db: Database
) -> None:
    theirs = configure(webhooks, new_account(server_db, TEST_PEPPER, "other"))
    calls: list[tuple[Callable[..., object], object]] = [
        (webhooks.TestWebhook, pb.TestWebhookRequest(webhook_id=theirs.webhook_id)),
        (webhooks.DeleteWebhook, pb.DeleteWebhookRequest(webhook_id=theirs.webhook_id)),
        (webhooks.DeleteWebhook, pb.DeleteWebhookRequest(webhook_id="wh_0000000000000000")),
    ]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=account.md(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(caught.value) == "WEBHOOK_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as caught:
        webhooks.RedeliverWebhookEvent(
            pb.RedeliverWebhookEventRequest(event_id="evt_0000000000000000"),
            metadata=account.md(),
            timeout=10,
        )
    assert error_reason(caught.value) == "EVENT_NOT_FOUND"
    listed = webhooks.ListWebhooks(pb.ListWebhooksRequest(), metadata=account.md(), timeout=10)
    assert theirs.webhook_id not in str(listed)


def test_delete_removes_it_from_the_list(
    webhooks: pb_grpc.WebhookServiceStub, account: Account
) -> None:
    keep, gone = configure(webhooks, account), configure(webhooks, account)
    reply = webhooks.DeleteWebhook(
        pb.DeleteWebhookRequest(webhook_id=gone.webhook_id), metadata=account.md(), timeout=10
    )
    assert reply.success
    assert reply.webhook_id == gone.webhook_id
    listed = webhooks.ListWebhooks(pb.ListWebhooksRequest(), metadata=account.md(), timeout=10)
    assert [h.webhook_id for h in listed.webhooks] == [keep.webhook_id]


def test_logs_start_empty_and_reject_a_page_too_large(
    webhooks: pb_grpc.WebhookServiceStub, account: Account
) -> None:
    reply = webhooks.ListWebhookLogs(pb.ListWebhookLogsRequest(), metadata=account.md(), timeout=10)
    assert reply.success
    assert list(reply.logs) == []
    assert (reply.pagination.current_page, reply.pagination.per_page) == (1, 50)
    assert reply.pagination.total_items == 0
    with pytest.raises(grpc.RpcError) as caught:
        webhooks.ListWebhookLogs(
            pb.ListWebhookLogsRequest(limit=500), metadata=account.md(), timeout=10
        )
    assert "limit" in violations(caught.value)


def test_every_call_needs_credentials(webhooks: pb_grpc.WebhookServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        webhooks.ListWebhooks(pb.ListWebhooksRequest(), timeout=10)
    assert error_reason(caught.value) == "MISSING_AUTH_HEADERS"
