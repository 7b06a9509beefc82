"""ZimSend's edge: the Envoy configuration and a launcher for the real `envoy` binary.

    from zimsend.gateway import GatewayConfig, render_config, start_envoy

    with start_envoy(upstreams=("127.0.0.1:50051",), public_port=0, device_port=0,
                     admin_port=0) as envoy:
        envoy.wait_healthy()
        print(envoy.base_url, envoy.grpc_target, envoy.device_target)

See gateway/README.md for what the configuration does and how errors are mapped.
"""

from zimsend.gateway._config import (
    GatewayConfig,
    RateLimit,
    TlsFiles,
    build_config,
    default_descriptor_path,
    default_openapi_path,
    render_config,
)
from zimsend.gateway._process import (
    EnvoyConfigError,
    EnvoyProcess,
    default_concurrency,
    envoy_binary,
    envoy_command,
    listener_ports,
    make_config,
    start_envoy,
    validate,
    write_config,
)

__all__ = [
    "EnvoyConfigError",
    "EnvoyProcess",
    "GatewayConfig",
    "RateLimit",
    "TlsFiles",
    "build_config",
    "default_concurrency",
    "default_descriptor_path",
    "default_openapi_path",
    "envoy_binary",
    "envoy_command",
    "listener_ports",
    "make_config",
    "render_config",
    "start_envoy",
    "validate",
    "write_config",
]
