"""What the Envoy configuration depends on: `GatewayConfig` and its parts, the names the
sections share (clusters, headers, the error domain), and the small unit helpers they use.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zimsend.v1 import common_pb2, errors_pb2

CLUSTER = "zimsend_server"
# The same replicas again, for the phones' streams: their own connection pool and circuit
# breakers, so thousands of long streams neither starve nor share flow control with API calls.
DEVICE_CLUSTER = "zimsend_devices"
# The same replicas once more, carrying no traffic: its health check asks whether a replica is
# *ready* (gRPC health of READINESS_SERVICE; NOT_SERVING while its database cannot be written),
# and only /healthz looks at it. The two clusters above check the server as a whole (""), so a
# replica with a full disk still gets calls and answers them 503 "storage is full" with
# Retry-After, instead of Envoy's bare "no healthy upstream" (issue 12 item 9).
READINESS_CLUSTER = "zimsend_readiness"
READINESS_SERVICE = "zimsend.v1.SmsService"
ERROR_CODE_HEADER = "zimsend-error-code"
ERROR_DOMAIN = "zimsend.dev"
_REASON = errors_pb2.ErrorReason  # the reasons' one list (errors.proto)
# Set by the Lua filter on every request that did not arrive as gRPC or gRPC-Web, before the
# transcoder turns it into gRPC; local_reply_config keys its JSON mappers on it, so native gRPC
# clients never get JSON in their grpc-message.
REST_MARKER_HEADER = "x-zimsend-rest"

# The phones' service, on the device listener only; every other service of the descriptor set
# is public and transcoded (`_rest_services`).
DEVICE_SERVICE = "zimsend.v1.DeviceLinkService"
# Server-streaming RPCs: their routes need `timeout: 0s` (DESIGN.md).
STREAMING_METHODS = ("/zimsend.v1.SmsService/ExportSmsHistory",)

# A request Envoy could not read as one of ours: unknown or body-less method (QUERY), malformed
# request line or header. The codec says nothing more a person could use.
UNREADABLE_MESSAGE = (
    "Malformed HTTP request (unknown method or unreadable header); the API uses GET, POST, "
    "PATCH and DELETE, described at /v1/openapi.json."
)

_LOCAL_HTTP = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
_FILTERS = "type.googleapis.com/envoy.extensions.filters.http"


def default_descriptor_path() -> Path:
    """The descriptor set generated from the protos (zimsend-protos ships it)."""
    return Path(str(resources.files("zimsend.v1") / "descriptor_set.binpb"))


def default_openapi_path() -> Path:
    """The OpenAPI document generated from the same protos."""
    return Path(str(resources.files("zimsend.v1") / "openapi.json"))


@dataclass(frozen=True)
class TlsFiles:
    """PEM files; when given, both listeners serve TLS only (ALPN h2 and http/1.1)."""

    cert_chain: Path
    private_key: Path


@dataclass(frozen=True)
class RateLimit:
    """Flood protection per `X-API-Key` value, per Envoy instance (DESIGN.md: the real,
    per-client limit of SPEC §8 lives in the server, in the database).

    `requests_per_minute` refill smoothly; `burst` is the bucket size (default: one minute's
    worth). Requests without an API key share one bucket of `unkeyed_per_minute` (the server
    rejects them anyway; this only stops a flood from reaching it). `max_keys` is how many
    distinct keys get their own bucket at once (least recently used are evicted).
    """

    requests_per_minute: int = 600
    burst: int | None = None
    unkeyed_per_minute: int = 6000
    max_keys: int = 10_000

    def bucket(self, per_minute: int, burst: int | None = None) -> dict[str, Any]:
        if per_minute < 1:
            raise ValueError("a rate limit needs at least 1 request per minute")
        interval, tokens = _refill(per_minute)
        return {
            "max_tokens": burst or per_minute,
            "tokens_per_fill": tokens,
            "fill_interval": _duration(interval),
        }

    @property
    def retry_after_seconds(self) -> int:
        """What a limited client is told to wait: one refill of its bucket."""
        interval, _ = _refill(self.requests_per_minute)
        return max(1, math.ceil(interval))


def _refill(per_minute: int) -> tuple[float, int]:
    """One token every 60/N s when that is at least 50 ms (Envoy's minimum fill interval),
    else several tokens every second."""
    interval = 60.0 / per_minute
    if interval >= 0.05:
        return round(interval, 3), 1
    return 1.0, math.ceil(per_minute / 60)


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the rendered configuration depends on.

    Port 0 lets the kernel choose (the launcher reads the real ports back from the admin
    interface). The admin interface always binds 127.0.0.1: it can stop Envoy and dump its
    configuration, so it must never be reachable from outside.
    """

    upstreams: tuple[str, ...] = ("127.0.0.1:50051",)
    listen_address: str = "127.0.0.1"
    public_port: int = 8080
    device_port: int = 8081
    admin_port: int = 9901
    descriptor_path: Path = field(default_factory=default_descriptor_path)
    openapi_path: Path = field(default_factory=default_openapi_path)
    tls: TlsFiles | None = None
    rate_limit: RateLimit = field(default_factory=RateLimit)
    max_request_body_bytes: int = 1024 * 1024
    # Request headers, URL included, on both ports: larger requests get 431. The server
    # accepts twice this as gRPC metadata (common.proto `RequestLimit`); raise one, raise both.
    max_request_header_bytes: int = common_pb2.REQUEST_LIMIT_HEADER_BYTES
    # Phones heartbeat every 20 s by default (server setting); a stream silent for much longer
    # than that is dead. Envoy's stream idle timer needs data, not HTTP/2 pings.
    stream_idle_timeout_seconds: float = 300.0
    request_timeout_seconds: float = 60.0
    cors_allow_origins: tuple[str, ...] = ("*",)
    health_check_interval_seconds: float = 2.0
    access_log: bool = True
    # Downstream connections over both listeners (one per phone, plus API clients).
    max_connections: int = 50_000

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ValueError("at least one upstream server address is needed")
        for upstream in self.upstreams:
            _split_host_port(upstream)


# --- helpers -------------------------------------------------------------------------------


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"upstream address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _kib(size: int) -> int:
    """Envoy counts header limits in whole KiB."""
    return max(1, math.ceil(size / 1024))


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
