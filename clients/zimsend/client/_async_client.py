"""`AsyncZimSend`: the asyncio client, method for method the twin of `ZimSend` (`_client.py`).

asyncio, not trio (DESIGN names trio for our own long-lived programs): an SDK runs inside the
integrator's program, and httpx.AsyncClient and grpc.aio are asyncio (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

from . import _calls as c
from . import _types as t
from ._base import DEFAULT_TIMEOUT, ClientBase, ExportCheck, idempotency_key
from ._calls import Call, PriorityArg, TimeArg
from ._errors import ZimSendError
from ._grpc import AsyncGrpcTransport
from ._rest import AsyncRestTransport
from ._retry import Retries
from ._transport import AsyncTransport

__all__ = ["AsyncZimSend"]

T = TypeVar("T")


class AsyncZimSend(ClientBase[AsyncTransport]):
    """ZimSend's API from an asyncio program.

    ```python
    client = AsyncZimSend(api_key="zs_live_…", client_id="client_…",
                          base_url="http://127.0.0.1:8080")
    sent = await client.sms.send("+33612345678", "Votre commande est prête")
    await client.sms.wait(sent.message_id)          # → Message with status "delivered"
    ```

    Missing arguments come from ZIMSEND_API_KEY, ZIMSEND_CLIENT_ID and ZIMSEND_BASE_URL.
    `device_id` pins every send to that phone (X-Device-ID). `transport`: `"rest"` (default,
    httpx), `"grpc"` (the generated stubs, to the same host and port), or a `Transport`.
    `timeout` is per attempt; `retries` says how often and how long to retry (`_retry.py`).
    """

    def __init__(
        self,
        api_key: str | None = None,
        client_id: str | None = None,
        base_url: str | None = None,
        *,
        device_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: Retries | int = Retries(),
        transport: AsyncTransport | str = "rest",
    ) -> None:
        super().__init__(
            api_key,
            client_id,
            base_url,
            device_id=device_id,
            timeout=timeout,
            retries=retries,
            transport=transport,
            rest=AsyncRestTransport,
            grpc=AsyncGrpcTransport,
            kind="an AsyncTransport",
        )
        self.sms = AsyncSms(self)
        self.otp = AsyncOtp(self)
        self.devices = AsyncDevices(self)
        self.api_keys = AsyncApiKeys(self)
        self.webhooks = AsyncWebhooks(self)
        self.opt_outs = AsyncOptOuts(self)

    async def auth_test(self, *, device_id: str | None = None) -> t.AuthInfo:
        """Check the credentials (and whether `device_id` is online)."""
        return await self._run(c.auth_test(device_id))

    async def _run(self, call: Call[T]) -> T:
        key = idempotency_key(call)
        attempt = 0
        while True:
            request = self._credentials.request(call, key, self._timeout)
            try:
                return call.parse(await self._transport.handle(request))
            except ZimSendError as error:
                delay = self._retries.delay(call.operation, error, attempt)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def _stream(self, call: Call[Any]) -> AsyncIterator[bytes]:
        check, attempt = ExportCheck(), 0
        while True:
            chunks = self._transport.stream(self._credentials.request(call, None, self._timeout))
            try:
                first = await anext(chunks, b"")
            except ZimSendError as error:  # nothing received yet: safe to ask again
                delay = self._retries.delay(call.operation, error, attempt)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                attempt += 1
                continue
            break
        if first:
            check.feed(first)
            yield first
        async for chunk in chunks:
            check.feed(chunk)
            yield chunk
        check.finish()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncZimSend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncSms:
    """SPEC §3-§5: sending and following SMS (`client.sms`)."""

    def __init__(self, client: AsyncZimSend) -> None:
        self._c = client

    async def send(
        self,
        to: str,
        message: str,
        *,
        priority: PriorityArg = None,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled_at: TimeArg = None,
        sim_slot: int | None = None,
        idempotency_key: str | None = None,
        device_id: str | None = None,
    ) -> t.SentMessage:
        """Queue one SMS. Retried safely: every attempt carries the same Idempotency-Key."""
        return await self._c._run(
            c.send(
                to,
                message,
                priority_=priority,
                webhook_url=webhook_url,
                metadata=metadata,
                scheduled_at=scheduled_at,
                sim_slot=sim_slot,
                idempotency_key=idempotency_key,
                device_id=device_id,
            )
        )

    async def send_bulk(
        self,
        recipients: Sequence[str],
        message: str,
        *,
        priority: PriorityArg = None,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled_at: TimeArg = None,
        idempotency_key: str | None = None,
        device_id: str | None = None,
    ) -> t.Batch:
        """One text to up to 100 recipients, all queued or none."""
        return await self._c._run(
            c.send_bulk(
                recipients,
                message,
                priority_=priority,
                webhook_url=webhook_url,
                metadata=metadata,
                scheduled_at=scheduled_at,
                idempotency_key=idempotency_key,
                device_id=device_id,
            )
        )

    async def send_personalized(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        priority: PriorityArg = None,
        webhook_url: str | None = None,
        scheduled_at: TimeArg = None,
        idempotency_key: str | None = None,
        device_id: str | None = None,
    ) -> t.Batch:
        """Up to 100 `{to, message, metadata}`, all queued or none."""
        return await self._c._run(
            c.send_personalized(
                messages,
                priority_=priority,
                webhook_url=webhook_url,
                scheduled_at=scheduled_at,
                idempotency_key=idempotency_key,
                device_id=device_id,
            )
        )

    async def status(self, message_id: str) -> t.Message:
        return await self._c._run(c.status(message_id))

    async def wait(
        self,
        message_id: str,
        *,
        until: Sequence[str] = ("delivered",),
        timeout: float = 60.0,  # noqa: ASYNC109 - the deadline is part of this call's contract
        interval: float = 1.0,
    ) -> t.Message:
        """Poll the status until it is one of `until` or final (delivered, failed,
        cancelled); TimeoutError after `timeout` seconds. Check `.status` on return."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.status(message_id)
            if message.status in until or (message.status and message.status.final):
                return message
            if time.monotonic() + interval > deadline:
                raise TimeoutError(f"{message_id} is still {message.status} after {timeout} s")
            await asyncio.sleep(interval)

    async def history(
        self,
        *,
        page: int | None = None,
        limit: int | None = None,
        status: str | None = None,
        to: str | None = None,
        from_date: TimeArg = None,
        to_date: TimeArg = None,
        device_id: str | None = None,
        search: str | None = None,
        delivery_report_missing: bool | None = None,
    ) -> t.Page[t.Message]:
        """One page, newest first; `delivery_report_missing=True`: only the `sent` messages
        whose delivery report never came."""
        return await self._c._run(
            c.history(
                page=page,
                limit=limit,
                status_=status,
                to=to,
                from_date=from_date,
                to_date=to_date,
                device_id=device_id,
                search=search,
                delivery_report_missing=delivery_report_missing,
            )
        )

    async def iter_history(
        self,
        *,
        status: str | None = None,
        to: str | None = None,
        from_date: TimeArg = None,
        to_date: TimeArg = None,
        device_id: str | None = None,
        search: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[t.Message]:
        """Every message of the filter, page after page. Messages arriving meanwhile push
        older ones to later pages; each message is yielded once all the same."""
        seen: set[str] = set()
        page = 1
        while True:
            result = await self.history(
                page=page,
                limit=page_size,
                status=status,
                to=to,
                from_date=from_date,
                to_date=to_date,
                device_id=device_id,
                search=search,
            )
            for message in result.items:
                if message.message_id not in seen:
                    seen.add(message.message_id)
                    yield message
            if not result.has_more or not result.items:
                return
            page += 1

    def export(
        self,
        *,
        format: str = "csv",
        from_date: TimeArg = None,
        to_date: TimeArg = None,
        status: str | None = None,
        device_id: str | None = None,
    ) -> AsyncIterator[bytes]:
        """The history as CSV or JSON lines (`format="jsonl"`), streamed in chunks; raises
        ZimSendError(`EXPORT_TRUNCATED`) if the stream ends before its completion line."""
        return self._c._stream(
            c.export(
                format=format,
                from_date=from_date,
                to_date=to_date,
                status_=status,
                device_id=device_id,
            )
        )

    async def stats(
        self, *, from_date: TimeArg = None, to_date: TimeArg = None, device_id: str | None = None
    ) -> t.Stats:
        return await self._c._run(
            c.stats(from_date=from_date, to_date=to_date, device_id=device_id)
        )

    async def cancel(self, message_id: str) -> t.CancelledMessage:
        """Cancel a message that is still `queued` (else CANNOT_CANCEL_MESSAGE)."""
        return await self._c._run(c.cancel(message_id))

    async def resend(self, message_id: str) -> t.ResentMessage:
        """Queue a `failed` message again (else CANNOT_RESEND_MESSAGE)."""
        return await self._c._run(c.resend(message_id))

    async def inbox(
        self,
        *,
        page: int | None = None,
        limit: int | None = None,
        from_date: TimeArg = None,
        to_date: TimeArg = None,
        device_id: str | None = None,
    ) -> t.Page[t.InboundSms]:
        """SMS the phones received, newest first."""
        return await self._c._run(
            c.inbox(
                page=page, limit=limit, from_date=from_date, to_date=to_date, device_id=device_id
            )
        )


class AsyncOtp:
    """SPEC §6 (`client.otp`): the code itself never comes back."""

    def __init__(self, client: AsyncZimSend) -> None:
        self._c = client

    async def send(
        self,
        to: str,
        *,
        length: int | None = None,
        expiry: int | None = None,
        template: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> t.OtpSent:
        return await self._c._run(
            c.otp_send(to, length=length, expiry=expiry, template=template, metadata=metadata)
        )

    async def verify(self, otp_id: str, code: str) -> t.OtpVerification:
        """`valid` False for a wrong code; OtpError once used up, expired or unknown."""
        return await self._c._run(c.otp_verify(otp_id, code))


class AsyncDevices:
    """The client's phones (`client.devices`)."""

    def __init__(self, client: AsyncZimSend) -> None:
        self._c = client

    async def create(self, name: str) -> t.DeviceCreated:
        """A new device; its password and pairing URI are shown only in this answer."""
        return await self._c._run(c.device_create(name))

    async def list(self) -> builtins.list[t.Device]:
        return await self._c._run(c.device_list())

    async def get(self, device_id: str) -> t.Device:
        return await self._c._run(c.device_get(device_id))

    async def update(
        self,
        device_id: str,
        *,
        name: str | None = None,
        enabled: bool | None = None,
        send_interval_ms: int | None = None,
        daily_cap: int | None = None,
        parts_per_minute: int | None = None,
        parts_per_hour: int | None = None,
        parts_per_day: int | None = None,
    ) -> t.Device:
        """Change what is given, live (the phone gets new pacing at once); `parts_per_*` is
        the per-SIM send budget in SMS parts (0: no limit)."""
        return await self._c._run(
            c.device_update(
                device_id,
                name=name,
                enabled=enabled,
                send_interval_ms=send_interval_ms,
                daily_cap=daily_cap,
                parts_per_minute=parts_per_minute,
                parts_per_hour=parts_per_hour,
                parts_per_day=parts_per_day,
            )
        )

    async def delete(self, device_id: str) -> None:
        await self._c._run(c.device_delete(device_id))

    async def rotate_password(self, device_id: str) -> t.DevicePassword:
        """A new password; the old one stops working at once."""
        return await self._c._run(c.device_rotate(device_id))


class AsyncApiKeys:
    """The client's API keys (`client.api_keys`)."""

    def __init__(self, client: AsyncZimSend) -> None:
        self._c = client

    async def create(self, name: str, *, test: bool = False) -> t.ApiKeyCreated:
        """A new key (`zs_test_…` with `test=True`), shown only in this answer."""
        return await self._c._run(c.key_create(name, test))

    async def list(self) -> builtins.list[t.ApiKey]:
        return await self._c._run(c.key_list())

    async def revoke(self, key_id: str) -> None:
        """The key fails from its next request on."""
        await self._c._run(c.key_revoke(key_id))


class AsyncWebhooks:
    """Webhook endpoints and their delivery logs (`client.webhooks`)."""

    def __init__(self, client: AsyncZimSend) -> None:
        self._c = client

    async def configure(
        self, url: str, events: Sequence[str], *, secret: str | None = None
    ) -> t.WebhookCreated:
        """A new endpoint; its `secret` is shown only in this answer."""
        return await self._c._run(c.webhook_configure(url, events, secret))

    async def list(self) -> builtins.list[t.Webhook]:
        return await self._c._run(c.webhook_list())

    async def logs(
        self,
        *,
        page: int | None = None,
        limit: int | None = None,
        webhook_id: str | None = None,
        event_id: str | None = None,
        message_id: str | None = None,
    ) -> t.Page[t.WebhookLog]:
        """Delivery attempts, newest first; `message_id`: only that message's events'."""
        return await self._c._run(
            c.webhook_logs(
                page=page,
                limit=limit,
                webhook_id=webhook_id,
                event_id=event_id,
                message_id=message_id,
            )
        )

    async def test(self, webhook_id: str) -> t.WebhookTest:
        """Send a `webhook.test` event to that endpoint."""
        return await self._c._run(c.webhook_test(webhook_id))

    async def delete(self, webhook_id: str) -> None:
        await self._c._run(c.webhook_delete(webhook_id))

    async def redeliver(self, event_id: str) -> None:
        """Queue a failed event again (same event_id, a fresh schedule)."""
        await self._c._run(c.webhook_redeliver(event_id))


class AsyncOptOuts:
    """Numbers that texted STOP (or were added) and must not be sent to (`client.opt_outs`);
    a send to one raises InvalidRequestError with code RECIPIENT_OPTED_OUT."""

    def __init__(self, client: AsyncZimSend) -> None:
        self._c = client

    async def list(
        self, *, page: int | None = None, limit: int | None = None, phone_number: str | None = None
    ) -> t.Page[t.OptOut]:
        """Newest first; `phone_number` looks one number up."""
        return await self._c._run(c.opt_out_list(page=page, limit=limit, phone_number=phone_number))

    async def add(self, phone_number: str) -> t.OptOutAdded:
        """List a number (`created` False when it already was)."""
        return await self._c._run(c.opt_out_add(phone_number))

    async def remove(self, phone_number: str) -> None:
        """Unlist a number: sends to it are accepted again (NotFoundError if not listed)."""
        await self._c._run(c.opt_out_remove(phone_number))
