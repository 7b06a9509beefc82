"""SPEC.md §8: a per-client request limit per minute, a setting per client, that holds across
server replicas; beyond it RATE_LIMIT_EXCEEDED (429) with Retry-After and RateLimit headers,
and over gRPC RESOURCE_EXHAUSTED with RetryInfo."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import pytest
from _processes import start_server
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import TEST_PEPPER
from zimsend.v1 import auth_pb2, auth_pb2_grpc

LIMIT = 8


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env

    return make_env(tmp_path_factory.mktemp("rl-data"), TEST_PEPPER,
                    ZIMSEND_RATE_LIMIT_PER_MINUTE=str(LIMIT))


def _auth_test(address: str, client: dict) -> grpc.RpcError | None:  # type: ignore[type-arg]
    with grpc.insecure_channel(address) as channel:
        try:
            auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
                auth_pb2.AuthTestRequest(),
                metadata=(("x-api-key", client["api_key"]), ("x-client-id", client["client_id"])),
                timeout=5,
            )
        except grpc.RpcError as error:
            return error
    return None


def _client(server_db) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """A client and key written next to the running server (what `zimsend admin` does)."""
    from zimsend.server import accounts

    client = accounts.create_client(server_db, "limited")
    key = accounts.create_api_key(server_db, TEST_PEPPER.encode(), client.id, "k")
    return {"client_id": client.id, "api_key": key.secret}


def test_the_limit_refuses_with_retry_info_and_spares_other_clients(server, server_db) -> None:  # type: ignore[no-untyped-def]
    _, address = server
    first, second = _client(server_db), _client(server_db)
    outcomes = [_auth_test(address, first) for _ in range(LIMIT + 3)]
    assert outcomes[:LIMIT] == [None] * LIMIT
    refused = [o for o in outcomes[LIMIT:] if o is not None]
    assert len(refused) == 3
    error = refused[0]
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    kinds = {}
    for detail in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if detail.Is(cls.DESCRIPTOR):
                kinds[cls] = cls()
                detail.Unpack(kinds[cls])
    assert kinds[error_details_pb2.ErrorInfo].reason == "RATE_LIMIT_EXCEEDED"
    assert 0 < kinds[error_details_pb2.RetryInfo].retry_delay.seconds <= 60
    assert _auth_test(address, second) is None  # another client has its own budget


def test_a_client_setting_overrides_the_default(server, admin, server_db) -> None:  # type: ignore[no-untyped-def]
    _, address = server
    client = _client(server_db)
    admin("set-rate-limit", "--client-id", client["client_id"], "--per-minute", "3")
    outcomes = [_auth_test(address, client) for _ in range(5)]
    assert [o is None for o in outcomes] == [True, True, True, False, False]


def test_rest_sees_429_retry_after_and_ratelimit_headers(server, server_db, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    envoy = gateway_factory()
    client = _client(server_db)
    headers = {"X-API-Key": client["api_key"], "X-Client-ID": client["client_id"]}
    replies = [httpx.get(f"{envoy.base_url}/v1/auth/test", headers=headers) for _ in range(LIMIT + 1)]
    assert [r.status_code for r in replies] == [200] * LIMIT + [429]
    assert replies[0].headers["ratelimit-policy"] == f'"api";q={LIMIT};w=60'
    assert '"api";r=' in replies[0].headers["ratelimit"]
    last = replies[-1]
    assert 1 <= int(last.headers["retry-after"]) <= 60
    assert last.json()["success"] is False
    assert last.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert str(LIMIT) in last.json()["error"]["message"]


def test_the_limit_holds_across_two_replicas(server, server_db, zimsend_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A second server process on the same database: the budget is shared, not doubled."""
    _, address = server
    replica, replica_address = start_server(Path(zimsend_env["ZIMSEND_DATA_DIR"]), zimsend_env, tmp_path)
    with replica:
        client = _client(server_db)
        first = [_auth_test(address, client) for _ in range(LIMIT // 2)]
        time.sleep(0.5)  # one flush interval and more: replica A's count reaches the database
        second = [_auth_test(replica_address, client) for _ in range(LIMIT)]
        accepted = sum(o is None for o in first + second)
        assert first == [None] * (LIMIT // 2)
        assert accepted == LIMIT
