"""The Envoy configuration as rendered, checked by the real `envoy --mode validate`.

No server and no running Envoy here: what the configuration *says*. What it *does* is
tests/test_gateway.py and tests/test_rest_api.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _certs import self_signed

from zimsend.gateway import (
    EnvoyConfigError,
    GatewayConfig,
    RateLimit,
    build_config,
    default_concurrency,
    default_descriptor_path,
    default_openapi_path,
    envoy_binary,
    envoy_command,
    make_config,
    render_config,
    validate,
    write_config,
)


def listeners(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in config["static_resources"]["listeners"]}


def hcm(listener: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return config


def http_filter(listener: dict[str, Any], name: str) -> dict[str, Any]:
    for item in hcm(listener)["http_filters"]:
        if item["name"] == name:
            config: dict[str, Any] = item["typed_config"]
            return config
    raise AssertionError(f"no {name} filter")


# --- what `envoy --mode validate` accepts ---------------------------------------------------


def test_the_default_configuration_validates(tmp_path: Path) -> None:
    path = write_config(GatewayConfig(), tmp_path)
    assert "OK" in validate(path)


def test_the_tls_configuration_validates(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = make_config(tls_cert=cert, tls_key=key, upstreams=["10.0.0.5:50051", "10.0.0.6:50051"])
    assert "OK" in validate(write_config(config, tmp_path))


def test_host_name_upstreams_validate(tmp_path: Path) -> None:
    config = make_config(upstreams=["zimsend-server:50051"], listen_address="0.0.0.0")
    assert "OK" in validate(write_config(config, tmp_path))
    assert build_config(config)["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"


def test_validate_reports_what_envoy_refuses(tmp_path: Path) -> None:
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps({"static_resources": {"listeners": [{"name": "x"}]}}))
    with pytest.raises(EnvoyConfigError):
        validate(path)


def test_tls_needs_both_files() -> None:
    with pytest.raises(ValueError, match="both"):
        make_config(tls_cert="/tmp/cert.pem")


# --- what the configuration says ------------------------------------------------------------


def test_the_admin_interface_is_loopback_only() -> None:
    config = build_config(listen_address="0.0.0.0", admin_port=9999)
    assert config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9999,
    }


def test_the_transcoder_exposes_every_public_service_but_not_the_phones_stream() -> None:
    transcoder = http_filter(
        listeners(build_config())["public"], "envoy.filters.http.grpc_json_transcoder"
    )
    assert "zimsend.v1.DeviceLinkService" not in transcoder["services"]
    # Read from the descriptor set: a service added to the protos is exposed without a list
    # to keep.
    assert {
        "zimsend.v1.AuthService",
        "zimsend.v1.SmsService",
        "zimsend.v1.OtpService",
        "zimsend.v1.DeviceService",
        "zimsend.v1.WebhookService",
        "zimsend.v1.ApiKeyService",
    } <= set(transcoder["services"])
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["print_options"] == {
        "add_whitespace": False,
        "always_print_primitive_fields": True,
        "always_print_enums_as_ints": False,
        "preserve_proto_field_names": True,
    }
    assert transcoder["request_validation_options"] == {
        "reject_unknown_method": True,
        "reject_unknown_query_parameters": True,
        "reject_binding_body_field_collisions": True,
    }
    assert transcoder["proto_descriptor"] == str(default_descriptor_path())


def test_the_public_filters_run_in_the_order_that_makes_them_work() -> None:
    """Lua before the transcoder (it sees REST on the way in and JSON on the way out); the
    rate limit after it (it then sees every call, REST or gRPC, as a gRPC method)."""
    names = [f["name"] for f in hcm(listeners(build_config())["public"])["http_filters"]]
    assert names == [
        "envoy.filters.http.health_check",
        "envoy.filters.http.cors",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]


def test_the_device_listener_is_tuned_for_long_streams() -> None:
    device = hcm(listeners(build_config(stream_idle_timeout_seconds=300))["device"])
    assert device["codec_type"] == "HTTP2"
    assert device["stream_idle_timeout"] == "300s"
    assert device["http2_protocol_options"]["connection_keepalive"]["interval"] == "60s"
    routes = device["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"]["prefix"] == "/zimsend.v1.DeviceLinkService/"
    assert routes[0]["route"]["timeout"] == "0s"
    assert routes[-1]["direct_response"]["status"] == 404


def test_phones_have_their_own_upstream_pool_sized_for_one_stream_each() -> None:
    config = build_config(max_connections=20_000)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == {"zimsend_server", "zimsend_devices", "zimsend_readiness"}
    device_route = hcm(listeners(config)["device"])["route_config"]["virtual_hosts"][0]["routes"][0]
    assert device_route["route"]["cluster"] == "zimsend_devices"
    breaker = clusters["zimsend_devices"]["circuit_breakers"]["thresholds"][0]
    assert breaker["max_requests"] == 20_000  # Envoy's default would stop at 1,024 phones


def test_upstream_health_checks_start_at_once() -> None:
    cluster = build_config(upstreams=("127.0.0.1:1", "127.0.0.1:2"))["static_resources"][
        "clusters"
    ][0]
    check = cluster["health_checks"][0]
    assert "grpc_health_check" in check
    assert check["no_traffic_interval"] == check["interval"] == "2s"
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [1, 2]
    http2 = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]["explicit_http_config"]
    assert "http2_protocol_options" in http2


def test_healthz_also_needs_a_ready_replica_while_calls_still_reach_it() -> None:
    """Issue 12 item 9: /healthz is 503 while a replica's storage cannot be written (its
    SmsService health is NOT_SERVING), but the clusters that carry calls check the server as a
    whole, so callers still get the server's 503 "storage is full" with Retry-After."""
    config = build_config()
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    checks = {name: c["health_checks"][0]["grpc_health_check"] for name, c in clusters.items()}
    assert checks == {
        "zimsend_server": {},
        "zimsend_devices": {},
        "zimsend_readiness": {"service_name": "zimsend.v1.SmsService"},
    }
    (health,) = [
        f
        for f in hcm(listeners(config)["public"])["http_filters"]
        if f["name"] == "envoy.filters.http.health_check"
    ]
    assert set(health["typed_config"]["cluster_min_healthy_percentages"]) == {
        "zimsend_server",
        "zimsend_readiness",
    }


def test_the_openapi_route_serves_the_generated_file() -> None:
    route_config = hcm(listeners(build_config())["public"])["route_config"]
    route = route_config["virtual_hosts"][0]["routes"][0]
    assert route["match"]["path"] == "/v1/openapi.json"
    assert route["direct_response"]["body"] == {"filename": str(default_openapi_path())}
    assert (
        route_config["max_direct_response_body_size_bytes"] > default_openapi_path().stat().st_size
    )


@pytest.mark.parametrize(
    ("per_minute", "tokens", "interval", "retry_after"),
    [(600, 1, "0.1s", 1), (2, 1, "30s", 30), (6000, 100, "1s", 1)],
)
def test_rate_limit_buckets_refill_smoothly(
    per_minute: int, tokens: int, interval: str, retry_after: int
) -> None:
    limit = RateLimit(requests_per_minute=per_minute)
    bucket = limit.bucket(per_minute)
    assert (bucket["tokens_per_fill"], bucket["fill_interval"]) == (tokens, interval)
    assert bucket["max_tokens"] == per_minute
    assert limit.retry_after_seconds == retry_after


def test_the_lua_filter_knows_the_enum_names() -> None:
    lua = http_filter(listeners(build_config())["public"], "envoy.filters.http.lua")
    source = lua["default_source_code"]["inline_string"]
    assert (
        '["zimsend.v1.Priority"] = "urgent, high, normal, low, very_low, or the numbers 1-5"'
        in source
    )
    assert "__" not in source.split("local GRPC_NAMES")[0].split("local REST_MARKER")[1]


def test_render_is_json_and_envoy_command_writes_it(tmp_path: Path) -> None:
    assert json.loads(render_config(public_port=1234)) == build_config(public_port=1234)
    argv = envoy_command(tmp_path, upstreams=["127.0.0.1:5"], public_port=0)
    assert argv[0] == str(envoy_binary())
    assert "--use-dynamic-base-id" in argv
    config = json.loads((tmp_path / "envoy.json").read_text())
    assert listeners(config)["public"]["address"]["socket_address"]["port_value"] == 0


def test_envoy_runs_one_worker_per_replica_on_at_most_half_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Envoy shares the machine with the servers it fronts, and each worker holds its own
    connection to every replica: fewer, busier connections cost less CPU per REST call
    (docs/decisions.md "The gateway's CPU per call")."""

    def workers(replicas: int, **kw: Any) -> str:
        upstreams = [f"127.0.0.1:{5000 + n}" for n in range(replicas)]
        argv = envoy_command(tmp_path, upstreams=upstreams, **kw)
        return argv[argv.index("--concurrency") + 1]

    for cores, replicas, expected in ((1, 1, 1), (2, 1, 1), (2, 2, 1), (8, 1, 1), (8, 3, 3)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert default_concurrency(replicas) == expected
        assert workers(replicas) == str(expected)
    assert workers(1, concurrency=3) == "3"


def test_a_dead_replica_is_ejected_and_only_unsent_calls_are_retried() -> None:
    """Issue 17: a replica killed with -9 is taken out after two refused connections (outlier
    detection, not two missed health checks), never more than half of them; unary calls are
    retried on another replica only when none received them, so a retry cannot run a call
    twice; the phones' streams are not retried (the agents reconnect themselves)."""
    config = build_config(upstreams=("127.0.0.1:1", "127.0.0.1:2"))
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for name in ("zimsend_server", "zimsend_devices"):
        outlier = clusters[name]["outlier_detection"]
        assert outlier["consecutive_local_origin_failure"] == 2
        assert outlier["split_external_local_origin_errors"] is True
        assert outlier["max_ejection_percent"] == 50
        assert clusters[name]["lb_policy"] == "LEAST_REQUEST"
    routes = hcm(listeners(config)["public"])["route_config"]["virtual_hosts"][0]["routes"]
    (server,) = [r for r in routes if r.get("name") == "server"]
    policy = server["route"]["retry_policy"]
    assert set(policy["retry_on"].split(",")) == {
        "connect-failure",
        "refused-stream",
        "reset-before-request",
    }
    assert policy["retry_host_predicate"][0]["name"] == (
        "envoy.retry_host_predicates.previous_hosts"
    )
    device_routes = hcm(listeners(config)["device"])["route_config"]["virtual_hosts"][0]["routes"]
    assert all("retry_policy" not in r.get("route", {}) for r in device_routes)
