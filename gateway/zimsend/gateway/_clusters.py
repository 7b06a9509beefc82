"""The access log and the server clusters (API calls, phones' streams, readiness), with their
health checks, circuit breakers, outlier detection and the retry of unsent calls."""

from __future__ import annotations

from typing import Any

from zimsend.gateway._settings import (
    ERROR_CODE_HEADER,
    GatewayConfig,
    _duration,
    _is_ip,
    _socket_address,
    _split_host_port,
)


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
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                    "PreviousHostsPredicate",
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }
