"""50 concurrent wrong guesses get three comparisons, on SQLite and on PostgreSQL (SPEC.md §6,
DESIGN "Security baseline": an attempt is consumed in the same statement that reads the hash).

Every race is real: one thread per call, released together by a barrier, against a real
`zimsend serve` — the module's server on SQLite, and one started on a fresh PostgreSQL
database. The same three races run on both: 50 wrong guesses (3 compared, 47
OTP_MAX_ATTEMPTS), 10 right answers (one verification, one `otp.verified` event), 15 sends to
one number (10 accepted, 5 OTP_RATE_LIMIT).
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from _otp import PEPPER, check, code_of, events, otp_row, send, wrong_codes
from _processes import start_server
from _processes import zimsend_env as make_env
from _sms import Account, error_reason, new_account
from conftest import TEST_PEPPER, RunningServer

from zimsend.server.storage import Database
from zimsend.v1 import otp_pb2 as pb
from zimsend.v1 import otp_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def otp(server: RunningServer) -> Iterator[pb_grpc.OtpServiceStub]:
    with grpc.insecure_channel(server[1]) as channel:
        yield pb_grpc.OtpServiceStub(channel)


@pytest.fixture
def account(server_db: Database) -> Account:
    return new_account(server_db, PEPPER, "otp-races")


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call at once (one thread each, released together); results or errors."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        try:
            return call()
        except grpc.RpcError as error:
            return error_reason(error)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def fifty_wrong_guesses_get_three_comparisons(
    stub: pb_grpc.OtpServiceStub, account: Account, db: Database
) -> None:
    reply = send(stub, account, length=4)
    code = code_of(db, reply.otp_id)
    outcomes = race(
        [
            functools.partial(check, stub, account, reply.otp_id, guess)
            for guess in wrong_codes(code, 50)
        ]
    )
    compared = [o for o in outcomes if isinstance(o, pb.VerifyOtpResponse)]
    assert sorted(o.attempts_remaining for o in compared) == [0, 1, 2]
    assert not any(o.valid for o in compared)
    assert Counter(o for o in outcomes if isinstance(o, str)) == {"OTP_MAX_ATTEMPTS": 47}
    assert otp_row(db, reply.otp_id).attempts_used == 3


def right_answers_in_a_race_verify_once(
    stub: pb_grpc.OtpServiceStub, account: Account, db: Database
) -> None:
    reply = send(stub, account, length=4)
    code = code_of(db, reply.otp_id)
    outcomes = race([lambda: check(stub, account, reply.otp_id, code)] * 10)
    assert sum(isinstance(o, pb.VerifyOtpResponse) and o.valid for o in outcomes) == 1
    assert Counter(o for o in outcomes if isinstance(o, str)) == {"OTP_NOT_FOUND": 9}
    verified = [e for e in events(db, account.client_id) if e.event_type == "otp.verified"]
    assert len(verified) == 1


def sends_in_a_race_respect_the_hourly_limit(
    stub: pb_grpc.OtpServiceStub, account: Account
) -> None:
    outcomes = race([lambda: send(stub, account, to="+33612345670")] * 15)
    assert sum(isinstance(o, pb.SendOtpResponse) for o in outcomes) == 10
    assert Counter(o for o in outcomes if isinstance(o, str)) == {"OTP_RATE_LIMIT": 5}


def test_concurrent_attempts_on_sqlite(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    fifty_wrong_guesses_get_three_comparisons(otp, account, server_db)
    right_answers_in_a_race_verify_once(otp, account, server_db)
    sends_in_a_race_respect_the_hourly_limit(otp, account)


@pytest.mark.postgres
def test_concurrent_attempts_on_postgresql(
    postgres_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir: Path = tmp_path_factory.mktemp("otp-pg")
    env = make_env(data_dir, TEST_PEPPER, ZIMSEND_DATABASE_URL=postgres_database_url)
    program, address = start_server(data_dir, env, data_dir / "logs")
    db = Database.from_url(postgres_database_url)
    try:
        with program, grpc.insecure_channel(address) as channel:
            stub = pb_grpc.OtpServiceStub(channel)
            account = new_account(db, PEPPER, "otp-pg")
            fifty_wrong_guesses_get_three_comparisons(stub, account, db)
            right_answers_in_a_race_verify_once(stub, account, db)
            sends_in_a_race_respect_the_hourly_limit(stub, account)
            assert "Traceback" not in program.output()
    finally:
        db.dispose()
