"""Webhook delivery: what an event looks like on the wire and how it safely gets there.

    events      the event types and the outbox row contract for producers (`outbox_event`)
    signing     the body bytes, `X-Webhook-Signature` and the Standard Webhooks headers
    addresses   which IP addresses may be reached, in every spelling (SSRF rules)
    urls        the configure-time URL check (`check_webhook_url`)
    transport   the network guard that resolves, checks and connects to the checked address
    http1       lean keep-alive HTTP/1.1 POSTs (httptools), one small pool per origin
    origins     a few turns per receiver origin: a slow one holds up no other
    sender      `WebhookSender`: one signed POST with one overall deadline

The worker (`zimsend.server.worker`) claims outbox rows and uses `sender` to deliver them.
`transport`, `http1`, `origins` and `sender` are trio code: import them from their modules (the
asyncio server and the producers only need the pure modules re-exported here).
"""

from .events import EVENT_TYPES, TEST_EVENT, outbox_event
from .signing import encode_body, rfc3339, signature_headers, x_webhook_signature
from .urls import WebhookUrlError, check_webhook_url

__all__ = [
    "EVENT_TYPES",
    "TEST_EVENT",
    "WebhookUrlError",
    "check_webhook_url",
    "encode_body",
    "outbox_event",
    "rfc3339",
    "signature_headers",
    "x_webhook_signature",
]
