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

Built in parts, one module per section of the bootstrap:

    _settings        GatewayConfig, RateLimit, TlsFiles, the shared names and unit helpers
    _listeners       the public and device listeners
    _routes          the public routes and CORS
    _filters         health check, Lua error envelope, transcoder, rate limit, router
    _local_replies   Envoy's own errors as the JSON envelope
    _clusters        the access log and the server clusters
"""

from __future__ import annotations

import json
from typing import Any

from zimsend.gateway._clusters import _server_cluster
from zimsend.gateway._filters import rate_limit_message
from zimsend.gateway._listeners import _device_listener, _public_listener
from zimsend.gateway._settings import (
    CLUSTER,
    DEVICE_CLUSTER,
    READINESS_CLUSTER,
    READINESS_SERVICE,
    GatewayConfig,
    RateLimit,
    TlsFiles,
    _socket_address,
    default_descriptor_path,
    default_openapi_path,
)

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
