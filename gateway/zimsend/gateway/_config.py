"""The Envoy bootstrap, built as a Python dict and written as JSON.

Why a dict and not a Jinja2/YAML template: the configuration is structured data with real
branches (TLS or not, one or several server replicas, IP or host name upstreams) and embedded
text (the Lua filter, file paths). Building it in Python keeps every branch typed and tested,
`json.dumps` does all the quoting, and tests can look at the structure instead of parsing a
rendered template. JSON is valid YAML, so `envoy -c envoy.json` reads it directly.

Two listeners (DESIGN.md "The edge"):

- **public** (REST `/v1` + native gRPC + gRPC-Web): health check, CORS, gRPC-Web, the error
  envelope Lua filter, the gRPC-JSON transcoder, a per-API-key local rate limit, the router.
- **device** (phones): gRPC only, `DeviceLinkService` only, long-lived streams.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zimsend.gateway._console import console_routes, largest_console_file
from zimsend.v1 import common_pb2, errors_pb2

__all__ = [
    "GatewayConfig",
    "RateLimit",
    "TlsFiles",
    "build_config",
    "default_descriptor_path",
    "default_openapi_path",
    "rate_limit_message",
    "render_config",
]

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


def render_config(config: GatewayConfig | None = None, **overrides: Any) -> str:
    """The Envoy bootstrap as JSON text (Envoy reads it as YAML or JSON)."""
    return json.dumps(build_config(config, **overrides), indent=2, sort_keys=False) + "\n"


def build_config(config: GatewayConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """The Envoy bootstrap as a dict. `overrides` replace fields of `config` (or of the
    defaults), e.g. `build_config(upstreams=("127.0.0.1:5000",), public_port=0)`."""
    if config is None:
        config = GatewayConfig(**overrides)
    elif overrides:
        from dataclasses import replace

        config = replace(config, **overrides)
    return {
        "admin": {
            "address": _socket_address("127.0.0.1", config.admin_port),
        },
        "static_resources": {
            "listeners": [_public_listener(config), _device_listener(config)],
            "clusters": [
                # Envoy's default circuit breakers allow 1,024 concurrent requests per
                # cluster: far too few for one stream per phone.
                _server_cluster(config, CLUSTER, max_requests=10_000),
                _server_cluster(config, DEVICE_CLUSTER, max_requests=config.max_connections),
                _server_cluster(
                    config, READINESS_CLUSTER, max_requests=16, health_service=READINESS_SERVICE
                ),
            ],
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": config.max_connections,
                    },
                }
            ]
        },
    }


# --- listeners -----------------------------------------------------------------------------


def _public_listener(config: GatewayConfig) -> dict[str, Any]:
    hcm = {
        "@type": f"{_LOCAL_HTTP}.HttpConnectionManager",
        "stat_prefix": "public",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "generate_request_id": True,
        # Keep a caller's X-Request-ID so its logs and ours can be joined.
        "preserve_external_request_id": True,
        "access_log": _access_log(config, "public"),
        "max_request_headers_kb": _kib(config.max_request_header_bytes),
        "common_http_protocol_options": {"idle_timeout": "3600s"},
        "http2_protocol_options": {
            "max_concurrent_streams": 1000,
            "connection_keepalive": {"interval": "60s", "timeout": "20s"},
        },
        "local_reply_config": _local_reply_config(config),
        "route_config": _public_routes(config),
        "http_filters": [
            _health_check_filter(),
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": f"{_FILTERS}.cors.v3.Cors"},
            },
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": f"{_FILTERS}.grpc_web.v3.GrpcWeb"},
            },
            _lua_filter(config),
            _transcoder_filter(config),
            _rate_limit_filter(config),
            _router(),
        ],
    }
    return _listener(
        "public", config, config.public_port, hcm, buffer_limit=config.max_request_body_bytes
    )


def _device_listener(config: GatewayConfig) -> dict[str, Any]:
    idle = _duration(config.stream_idle_timeout_seconds)
    hcm = {
        "@type": f"{_LOCAL_HTTP}.HttpConnectionManager",
        "stat_prefix": "device",
        # Phones speak HTTP/2 only (gRPC); HTTP/1.1 requests are refused by the codec.
        "codec_type": "HTTP2",
        "use_remote_address": True,
        "generate_request_id": True,
        # Keep a caller's X-Request-ID so its logs and ours can be joined.
        "preserve_external_request_id": True,
        "access_log": _access_log(config, "device"),
        # A stream lives as long as the phone stays connected; only silence ends it.
        "stream_idle_timeout": idle,
        "request_timeout": "0s",
        "request_headers_timeout": "10s",
        "max_request_headers_kb": _kib(config.max_request_header_bytes),
        "common_http_protocol_options": {
            # A connection with no stream at all is closed after this.
            "idle_timeout": idle,
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 16,
            # Phones keep small windows: a few commands in flight, not megabytes.
            "initial_stream_window_size": 65_536,
            "initial_connection_window_size": 1_048_576,
            # Detect phones that vanished (NAT dropped, radio off) without a TCP FIN.
            "connection_keepalive": {
                "interval": "60s",
                "timeout": "20s",
                "interval_jitter": {"value": 15},
            },
        },
        "route_config": {
            "name": "device",
            "virtual_hosts": [
                {
                    "name": "device",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": f"/{DEVICE_SERVICE}/", "grpc": {}},
                            "route": {
                                "cluster": DEVICE_CLUSTER,
                                "timeout": "0s",
                                "idle_timeout": idle,
                            },
                        },
                        # Everything else: gRPC clients see UNIMPLEMENTED.
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {
                                "status": 404,
                                "body": {
                                    "inline_string": f"Only {DEVICE_SERVICE} is served on "
                                    "this port; the API is on the public port."
                                },
                            },
                        },
                    ],
                }
            ],
        },
        "http_filters": [_router()],
    }
    return _listener("device", config, config.device_port, hcm, alpn=("h2",))


def _listener(
    name: str,
    config: GatewayConfig,
    port: int,
    hcm: dict[str, Any],
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    buffer_limit: int = 1_048_576,
) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if config.tls is not None:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                "DownstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": list(alpn),
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(config.tls.cert_chain)},
                            "private_key": {"filename": str(config.tls.private_key)},
                        }
                    ],
                },
            },
        }
    return {
        "name": name,
        "address": _socket_address(config.listen_address, port),
        # Also the per-stream buffer limit: a REST body the Lua filter buffers beyond it is
        # refused with 413 (the transcoder streams bodies, so its own limit rarely trips).
        "per_connection_buffer_limit_bytes": buffer_limit,
        "filter_chains": [chain],
    }


# --- public routes -------------------------------------------------------------------------


def _public_routes(config: GatewayConfig) -> dict[str, Any]:
    cluster_route = {
        "cluster": CLUSTER,
        "timeout": _duration(config.request_timeout_seconds),
        "retry_policy": _retry_unsent(),
    }
    transcoder_off = {
        "envoy.filters.http.grpc_json_transcoder": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "disabled": True,
        }
    }
    routes: list[dict[str, Any]] = [
        {
            "name": "openapi",
            "match": {
                "path": "/v1/openapi.json",
                "headers": [
                    {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}
                ],
            },
            "direct_response": {
                "status": 200,
                "body": {"filename": str(config.openapi_path)},
            },
            "response_headers_to_add": [
                {
                    "header": {"key": "content-type", "value": "application/json"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            "typed_per_filter_config": transcoder_off,
        },
        # Phones belong on the device listener (gRPC callers see UNIMPLEMENTED).
        {
            "name": "device-link-refused",
            "match": {"prefix": f"/{DEVICE_SERVICE}/"},
            "direct_response": {
                "status": 404,
                "body": {"inline_string": f"{DEVICE_SERVICE} is served on the device port."},
            },
        },
    ]
    # The web console's static files: `/` and `/console/*` (_console.py).
    routes.extend(console_routes())
    for method in STREAMING_METHODS:
        routes.append(
            {
                "name": f"stream:{method}",
                "match": {"path": method},
                "route": {**cluster_route, "timeout": "0s"},
            }
        )
    routes.append({"name": "server", "match": {"prefix": "/"}, "route": cluster_route})
    return {
        "name": "public",
        # The OpenAPI document is ~90 KB; Envoy's default cap for direct responses is 4 KB.
        "max_direct_response_body_size_bytes": max(
            1_048_576, _file_size(config.openapi_path) + 1, largest_console_file() + 1
        ),
        "virtual_hosts": [
            {
                "name": "zimsend",
                "domains": ["*"],
                "typed_per_filter_config": {"envoy.filters.http.cors": _cors_policy(config)},
                "routes": routes,
            }
        ],
    }


def _cors_policy(config: GatewayConfig) -> dict[str, Any]:
    origins = [
        {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
        for origin in config.cors_allow_origins
    ]
    return {
        "@type": f"{_FILTERS}.cors.v3.CorsPolicy",
        "allow_origin_string_match": origins,
        "allow_methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        "allow_headers": ", ".join(
            [
                "content-type",
                "x-api-key",
                "x-client-id",
                "x-device-id",
                "idempotency-key",
                "x-grpc-web",
                "x-user-agent",
                "grpc-timeout",
            ]
        ),
        "expose_headers": ", ".join(
            [
                "retry-after",
                "x-request-id",
                ERROR_CODE_HEADER,
                "grpc-status",
                "grpc-message",
                "grpc-status-details-bin",
            ]
        ),
        "max_age": "86400",
    }


# --- filters -------------------------------------------------------------------------------


def _health_check_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": f"{_FILTERS}.health_check.v3.HealthCheck",
            "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
            # Healthy while at least one server replica is up and ready (READINESS_CLUSTER).
            "cluster_min_healthy_percentages": {
                CLUSTER: {"value": 1.0}, READINESS_CLUSTER: {"value": 1.0},
            },
        },
    }


def _lua_filter(config: GatewayConfig) -> dict[str, Any]:
    source = resources.files("zimsend.gateway").joinpath("_errors.lua").read_text("utf-8")
    source = source.replace("__MAX_BODY_BYTES__", str(config.max_request_body_bytes))
    source = source.replace("__ENUM_VALUES__", _lua_enum_table(config.descriptor_path))
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": f"{_FILTERS}.lua.v3.Lua",
            "default_source_code": {"inline_string": source},
        },
    }


def _lua_enum_table(descriptor_path: Path) -> str:
    """`{["zimsend.v1.Priority"] = "urgent, high, …", …}`: the names an enum accepts, from the
    descriptor set the transcoder loads, so error messages can list them."""
    from google.protobuf import descriptor_pb2

    files: Sequence[descriptor_pb2.FileDescriptorProto]
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_path.read_bytes()).file
    except OSError:
        files = []
    entries: dict[str, str] = {}

    def walk(prefix: str, enums: Any, messages: Any) -> None:
        for enum in enums:
            values = [v for v in enum.value if v.number != 0]
            if not values:
                continue
            numbers = sorted(v.number for v in values)
            entries[f"{prefix}.{enum.name}"] = (
                ", ".join(v.name for v in values)
                + f", or the numbers {numbers[0]}-{numbers[-1]}"
            )
        for message in messages:
            walk(f"{prefix}.{message.name}", message.enum_type, message.nested_type)

    for file in files:
        if file.package.startswith("zimsend."):
            walk(file.package, file.enum_type, file.message_type)
    items = ", ".join(
        f"[{json.dumps(name)}] = {json.dumps(values)}" for name, values in sorted(entries.items())
    )
    return "{" + items + "}"


def _transcoder_filter(config: GatewayConfig) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": f"{_FILTERS}.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": str(config.descriptor_path),
            "services": _rest_services(config.descriptor_path),
            "convert_grpc_status": True,
            "auto_mapping": False,
            "print_options": {
                "add_whitespace": False,
                "always_print_primitive_fields": True,
                "always_print_enums_as_ints": False,
                "preserve_proto_field_names": True,
            },
            "request_validation_options": {
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
                "reject_binding_body_field_collisions": True,
            },
            "case_insensitive_enum_parsing": True,
            "max_request_body_size": config.max_request_body_bytes,
            "max_response_body_size": 64 * 1024 * 1024,
        },
    }


def _rest_services(descriptor_path: Path) -> list[str]:
    """The services the transcoder exposes as REST: every zimsend service of the descriptor
    set but `DEVICE_SERVICE` (phones use the device listener; it has no HTTP bindings)."""
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_path.read_bytes()).file
    names = [f"{f.package}.{s.name}" for f in files if f.package.startswith("zimsend.")
             for s in f.service]
    return [name for name in names if name != DEVICE_SERVICE]


def _rate_limit_filter(config: GatewayConfig) -> dict[str, Any]:
    limit = config.rate_limit
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": f"{_FILTERS}.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "per_api_key",
            # The unkeyed bucket; consumed only by requests matching no descriptor.
            "token_bucket": limit.bucket(limit.unkeyed_per_minute),
            "always_consume_default_token_bucket": False,
            "filter_enabled": _always("local_rate_limit_enabled"),
            "filter_enforced": _always("local_rate_limit_enforced"),
            # A wildcard descriptor (no value): one bucket per distinct X-API-Key.
            "descriptors": [
                {
                    "entries": [{"key": "api_key"}],
                    "token_bucket": limit.bucket(limit.requests_per_minute, limit.burst),
                }
            ],
            "rate_limits": [
                {
                    "actions": [
                        {
                            "request_headers": {
                                "header_name": "x-api-key",
                                "descriptor_key": "api_key",
                            }
                        }
                    ]
                }
            ],
            "max_dynamic_descriptors": limit.max_keys,
            "rate_limited_as_resource_exhausted": True,
            "response_headers_to_add": [
                {
                    "header": {"key": "retry-after", "value": str(limit.retry_after_seconds)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
                # What the server's own RATE_LIMIT_EXCEEDED carries, for native gRPC clients
                # (SPEC §8: RESOURCE_EXHAUSTED with RetryInfo); the Lua filter drops it from
                # REST responses, whose JSON body says the same.
                {
                    "header": {
                        "key": "grpc-status-details-bin",
                        "value": _rate_limit_status_bin(limit),
                    },
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
            ],
        },
    }


def rate_limit_message(limit: RateLimit) -> str:
    return (
        f"Too many requests for this API key at this gateway; retry in "
        f"{limit.retry_after_seconds} s (Retry-After)."
    )


def _rate_limit_status_bin(limit: RateLimit) -> str:
    """A serialized google.rpc.Status (base64, as gRPC's `-bin` headers are) matching the
    local rate limit's reply: RESOURCE_EXHAUSTED, ErrorInfo RATE_LIMIT_EXCEEDED, RetryInfo."""
    import base64

    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import error_details_pb2, status_pb2

    details = []
    for message in (
        error_details_pb2.ErrorInfo(reason=_REASON.Name(_REASON.RATE_LIMIT_EXCEEDED),
                                     domain=ERROR_DOMAIN),
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=limit.retry_after_seconds)
        ),
    ):
        packed = any_pb2.Any()
        packed.Pack(message)
        details.append(packed)
    status = status_pb2.Status(code=8, message=rate_limit_message(limit), details=details)
    return base64.b64encode(status.SerializeToString()).decode("ascii")


def _router() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": f"{_FILTERS}.router.v3.Router"},
    }


def _always(runtime_key: str) -> dict[str, Any]:
    return {
        "runtime_key": runtime_key,
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
    }


# --- Envoy's own errors as the JSON envelope -----------------------------------------------


def _local_reply_config(config: GatewayConfig) -> dict[str, Any]:
    """Mappers for replies Envoy makes itself (the server never saw the request).

    Each mapper applies only to REST requests (the Lua filter marks them before the
    transcoder rewrites their content type to application/grpc); native gRPC and gRPC-Web
    keep Envoy's plain gRPC status. The Lua filter then completes what local_reply_config
    cannot write (the ErrorInfo detail) on the way out.
    """
    invalid = _REASON.Name(_REASON.INVALID_REQUEST)

    def when(status: int, rest: bool) -> dict[str, Any]:
        marker = {"name": REST_MARKER_HEADER, "present_match": True, "invert_match": not rest}
        return {
            "and_filter": {
                "filters": [{"header_filter": {"header": marker}}, status_is(status)]
            }
        }

    def status_is(status: int) -> dict[str, Any]:
        return {
            "status_code_filter": {
                "comparison": {
                    "op": "EQ",
                    "value": {"default_value": status, "runtime_key": f"lr_{status}"},
                }
            }
        }

    def unread(status: int) -> dict[str, Any]:
        # Refused before any filter ran (the codec, or Envoy's own method checks): no marker
        # and no content type — a gRPC request always has one — so never a gRPC caller's.
        absent = {"present_match": True, "invert_match": True}
        return {
            "and_filter": {
                "filters": [
                    {"header_filter": {"header": {"name": REST_MARKER_HEADER, **absent}}},
                    {"header_filter": {"header": {"name": "content-type", **absent}}},
                    status_is(status),
                ]
            }
        }

    def rest(status: int, code: str, grpc_code: int, message: str) -> dict[str, Any]:
        return {
            "filter": when(status, rest=True),
            "body_format_override": _envelope_format(code, grpc_code, message),
        }

    def grpc(status: int, message: str) -> dict[str, Any]:
        # Native gRPC: the text becomes grpc-message; it must stay plain text.
        return {
            "filter": when(status, rest=False),
            "body_format_override": {"text_format_source": {"inline_string": message}},
        }

    def unreadable(status: int, message: str) -> dict[str, Any]:
        # No filter ran, so the Lua filter cannot add the code header on the way out.
        code_header = {"key": ERROR_CODE_HEADER, "value": invalid}
        return {
            "filter": unread(status),
            "headers_to_add": [
                {"header": code_header, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            ],
            "body_format_override": _envelope_format(invalid, 3, message),
        }

    too_large = f"Request body larger than {config.max_request_body_bytes} bytes."
    limited = rate_limit_message(config.rate_limit)
    unavailable = _REASON.Name(_REASON.UNAVAILABLE)
    return {
        "mappers": [
            rest(400, invalid, 3, "%LOCAL_REPLY_BODY%"),
            rest(404, "NOT_FOUND", 5, "%LOCAL_REPLY_BODY%"),
            rest(413, invalid, 3, too_large),
            rest(429, _REASON.Name(_REASON.RATE_LIMIT_EXCEEDED), 8, limited),
            rest(500, _REASON.Name(_REASON.INTERNAL), 13, "%LOCAL_REPLY_BODY%"),
            rest(502, unavailable, 14, "%LOCAL_REPLY_BODY%"),
            rest(503, unavailable, 14, "%LOCAL_REPLY_BODY%"),
            rest(504, "DEADLINE_EXCEEDED", 4, "%LOCAL_REPLY_BODY%"),
            grpc(429, limited),
            unreadable(400, UNREADABLE_MESSAGE),
            unreadable(431, headers_too_large_message(config)),
        ]
    }


def headers_too_large_message(config: GatewayConfig) -> str:
    """What a caller whose URL and headers are over Envoy's limit is told (431)."""
    return (
        f"Request URL and headers are larger than {_kib(config.max_request_header_bytes)} KB "
        "together; shorten them (long values belong in a JSON body)."
    )


def _envelope_format(code: str, grpc_code: int, message: str) -> dict[str, Any]:
    return {
        "json_format": {
            "success": False,
            "error": {"code": code, "message": message},
            "code": grpc_code,
            "message": message,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": code,
                    "domain": ERROR_DOMAIN,
                }
            ],
        },
        "content_type": "application/json",
    }


# --- access log, cluster -------------------------------------------------------------------


def _access_log(config: GatewayConfig, listener: str) -> list[dict[str, Any]]:
    if not config.access_log:
        return []
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3."
                "StdoutAccessLog",
                "log_format": {
                    "json_format": {
                        "time": "%START_TIME%",
                        "listener": listener,
                        "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
                        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                        "upstream_path": "%REQ(:PATH)%",
                        "protocol": "%PROTOCOL%",
                        "status": "%RESPONSE_CODE%",
                        "grpc_status": "%GRPC_STATUS%",
                        "error_code": f"%RESP({ERROR_CODE_HEADER})%",
                        "response_flags": "%RESPONSE_FLAGS%",
                        "details": "%RESPONSE_CODE_DETAILS%",
                        "duration_ms": "%DURATION%",
                        "bytes_received": "%BYTES_RECEIVED%",
                        "bytes_sent": "%BYTES_SENT%",
                        "request_id": "%REQ(X-REQUEST-ID)%",
                        "upstream_host": "%UPSTREAM_HOST%",
                        "downstream_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                        "user_agent": "%REQ(USER-AGENT)%",
                    }
                },
            },
        }
    ]


def _server_cluster(
    config: GatewayConfig, name: str, max_requests: int, health_service: str = ""
) -> dict[str, Any]:
    endpoints = []
    all_ips = True
    for upstream in config.upstreams:
        host, port = _split_host_port(upstream)
        all_ips = all_ips and _is_ip(host)
        endpoints.append({"endpoint": {"address": _socket_address(host, port)}})
    interval = _duration(config.health_check_interval_seconds)
    return {
        "name": name,
        "type": "STATIC" if all_ips else "STRICT_DNS",
        "connect_timeout": "2s",
        # Fewest active requests first; for phones that is fewest open streams.
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": max_requests,
                    "max_pending_requests": max_requests,
                    "max_requests": max_requests,
                    "max_retries": 3,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": endpoints}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # grpc core refuses pings more often than every 30 s without data
                        # (min_recv_ping_interval_without_data_ms on the server): stay above.
                        "connection_keepalive": {"interval": "60s", "timeout": "20s"},
                        # Several connections per replica once there are many phones.
                        "max_concurrent_streams": 1_000,
                    }
                },
            }
        },
        "upstream_connection_options": {
            "tcp_keepalive": {"keepalive_time": 300, "keepalive_interval": 30}
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": interval,
                # Without it a cluster that has had no traffic yet is checked once a minute, so
                # /healthz would stay 503 for up to a minute after boot (DESIGN.md).
                "no_traffic_interval": interval,
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": health_service} if health_service else {},
            }
        ],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
        # A replica that died (kill -9) is taken out after two failed connections, long before
        # two missed health checks say so; back after `base_ejection_time` (doubling while it
        # keeps failing). Never the last one: `max_ejection_percent`.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 2,
            "enforcing_consecutive_local_origin_failure": 100,
            "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_time": "60s",
            "max_ejection_percent": 50,
        },
    }


def _retry_unsent() -> dict[str, Any]:
    """Unary calls are retried on another replica only when the one chosen never received
    them (connection refused or reset before the request was sent): a retry can then not run
    a call twice. A call a replica had received when it died fails (503 / UNAVAILABLE): the
    caller retries it, with its Idempotency-Key for sends."""
    return {
        "retry_on": "connect-failure,refused-stream,reset-before-request",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                "PreviousHostsPredicate",
            },
        }],
        "host_selection_retry_max_attempts": 3,
    }


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
