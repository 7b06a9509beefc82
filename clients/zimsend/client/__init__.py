"""The ZimSend Python SDK (docs/sdk.md).

```python
from zimsend.client import ZimSend

with ZimSend(api_key="zs_live_…", client_id="client_…", base_url="http://127.0.0.1:8080") as zs:
    sent = zs.sms.send("+33612345678", "Votre code est prêt")
    print(zs.sms.wait(sent.message_id).status)      # delivered
```

`AsyncZimSend` is the same for asyncio. Everything public is re-exported here; the modules
with a leading underscore are private. Needs only the client distribution (httpx, grpcio and
the generated stubs), never the server.
"""

from ._async_client import (
    AsyncApiKeys,
    AsyncDevices,
    AsyncOptOuts,
    AsyncOtp,
    AsyncSms,
    AsyncWebhooks,
    AsyncZimSend,
)
from ._client import ApiKeys, Devices, OptOuts, Otp, Sms, Webhooks, ZimSend
from ._errors import (
    AuthenticationError,
    ConflictError,
    DeviceUnavailableError,
    FieldViolation,
    InvalidRequestError,
    NotFoundError,
    OtpError,
    RateLimitError,
    RequestTimeout,
    ServerError,
    TransportError,
    ZimSendError,
)
from ._grpc import AsyncGrpcTransport, GrpcTransport
from ._rest import AsyncRestTransport, RestTransport
from ._retry import Retries
from ._transport import AsyncTransport, Operation, Request, Transport
from ._types import (
    ApiKey,
    ApiKeyCreated,
    AuthInfo,
    Batch,
    BatchMessage,
    CancelledMessage,
    DailyStats,
    Device,
    DeviceCapabilities,
    DeviceCreated,
    DevicePassword,
    DeviceStatus,
    InboundSms,
    Message,
    MessageError,
    MessageStatus,
    OptOut,
    OptOutAdded,
    OtpSent,
    OtpVerification,
    Page,
    Pagination,
    Priority,
    ResentMessage,
    SentMessage,
    SimSlot,
    Stats,
    Webhook,
    WebhookCreated,
    WebhookLog,
    WebhookTest,
)
from ._webhooks import (
    DeviceEventData,
    OptOutEventData,
    OtpVerifiedData,
    SmsEventData,
    WebhookEvent,
    WebhookTestData,
    WebhookVerificationError,
    verify_webhook,
)

__all__ = [
    "ApiKey", "ApiKeyCreated", "ApiKeys", "AsyncApiKeys", "AsyncDevices", "AsyncGrpcTransport",
    "AsyncOptOuts", "AsyncOtp", "AsyncRestTransport", "AsyncSms", "AsyncTransport", "AsyncWebhooks",
    "AsyncZimSend", "AuthInfo", "AuthenticationError", "Batch", "BatchMessage", "CancelledMessage",
    "ConflictError", "DailyStats", "Device", "DeviceCapabilities", "DeviceCreated",
    "DeviceEventData", "DevicePassword", "DeviceStatus", "DeviceUnavailableError", "Devices",
    "FieldViolation", "GrpcTransport", "InboundSms", "InvalidRequestError", "Message",
    "MessageError", "MessageStatus", "NotFoundError", "Operation", "OptOut", "OptOutAdded",
    "OptOutEventData", "OptOuts", "Otp", "OtpError", "OtpSent", "OtpVerification",
    "OtpVerifiedData", "Page", "Pagination", "Priority", "RateLimitError", "Request",
    "RequestTimeout", "ResentMessage", "RestTransport", "Retries", "SentMessage", "ServerError",
    "SimSlot", "Sms", "SmsEventData", "Stats", "Transport", "TransportError", "Webhook",
    "WebhookCreated", "WebhookEvent", "WebhookLog", "WebhookTest", "WebhookTestData",
    "WebhookVerificationError", "Webhooks", "ZimSend", "ZimSendError", "verify_webhook",
]
