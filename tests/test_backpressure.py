"""Backpressure at the accept: when a client's phones fall behind, immediate sends are refused
with 429 RATE_LIMIT_EXCEEDED and a Retry-After instead of growing a backlog nobody sees
(`Settings.queue_max_wait_seconds`; `zimsend bench`, overload scenario).

This module's server allows messages to wait 1 s. The phone is "online" through its presence
columns but no agent is connected, so nothing drains the queue.
"""

from __future__ import annotations

import time

import grpc
import pytest
from _sms import error_reason, fails, headers_of, later, message_of, new_account, new_device
from conftest import TEST_PEPPER

from zimsend.server.storage import Database
from zimsend.v1 import common_pb2
from zimsend.v1 import sms_pb2 as pb
from zimsend.v1.sms_pb2_grpc import SmsServiceStub

PEPPER = TEST_PEPPER.encode()
TO = "+33612345678"
MAX_WAIT_SECONDS = 1


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env

    return make_env(
        tmp_path_factory.mktemp("zimsend-data"),
        TEST_PEPPER,
        ZIMSEND_QUEUE_MAX_WAIT_SECONDS=str(MAX_WAIT_SECONDS),
    )


def test_a_client_whose_phones_fall_behind_gets_429_until_they_catch_up(
    sms: SmsServiceStub, server_db: Database
) -> None:
    account = new_account(server_db, PEPPER, "behind")
    new_device(server_db, PEPPER, account.client_id, online=True)
    first = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="first"), metadata=account.md(), timeout=10
    )
    assert first.status == common_pb2.queued
    time.sleep(MAX_WAIT_SECONDS + 1.5)  # the first is now overdue (and the snapshot is fresh)

    error = fails(sms.SendSms, pb.SendSmsRequest(to=TO, message="second"), account.md())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "RATE_LIMIT_EXCEEDED"
    assert "phones are behind" in message_of(error)
    assert "scheduled_at" in message_of(error)
    retry_after = headers_of(error).get("retry-after")
    assert retry_after is not None
    assert int(retry_after) >= 1

    # Not refused: a scheduled send (it waits for its time anyway), an urgent one (nothing
    # urgent is ahead of it), and another client's send.
    scheduled = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="later", scheduled_at=later(hours=1)),
        metadata=account.md(),
        timeout=10,
    )
    assert scheduled.status == common_pb2.queued
    urgent = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="otp-like", priority=common_pb2.urgent),
        metadata=account.md(),
        timeout=10,
    )
    assert urgent.status == common_pb2.queued
    other = new_account(server_db, PEPPER, "keeps up")
    new_device(server_db, PEPPER, other.client_id, online=True)
    assert (
        sms.SendSms(
            pb.SendSmsRequest(to=TO, message="fine"), metadata=other.md(), timeout=10
        ).status
        == common_pb2.queued
    )

    # The phone catches up (the due messages leave the queue): sends are accepted again.
    for message_id in (first.message_id, urgent.message_id):
        sms.CancelSms(pb.CancelSmsRequest(message_id=message_id), metadata=account.md(), timeout=10)
    deadline = time.monotonic() + 10
    while True:
        try:
            again = sms.SendSms(
                pb.SendSmsRequest(to=TO, message="again"), metadata=account.md(), timeout=10
            )
            break
        except grpc.RpcError as exc:
            refused = exc
        assert error_reason(refused) == "RATE_LIMIT_EXCEEDED"
        assert time.monotonic() < deadline, "still refused 10 s after the backlog cleared"
        time.sleep(0.2)
    assert again.status == common_pb2.queued
