"""The two listeners (public: REST + gRPC + gRPC-Web; device: the phones' gRPC streams),
their HTTP connection managers, and TLS when configured."""

from __future__ import annotations

from typing import Any

from zimsend.gateway._clusters import _access_log
from zimsend.gateway._filters import (
    _health_check_filter,
    _lua_filter,
    _rate_limit_filter,
    _router,
    _transcoder_filter,
)
from zimsend.gateway._local_replies import _local_reply_config
from zimsend.gateway._routes import _public_routes
from zimsend.gateway._settings import (
    _FILTERS,
    _LOCAL_HTTP,
    DEVICE_CLUSTER,
    DEVICE_SERVICE,
    GatewayConfig,
    _duration,
    _kib,
    _socket_address,
)


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
