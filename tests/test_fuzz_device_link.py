"""Issue 12, "Fuzzing in CI": malformed and out-of-order DeviceLink frames, through the real
Envoy's phone port to a real server, while a well-behaved phone of another client stays
connected on the same Envoy (and so on the same upstream HTTP/2 connection).

What the server does with each kind of nonsense, as a phone author may rely on it:

- **dropped** with INVALID_ARGUMENT and a message saying why: anything but a hello as the
  first frame (another kind, an empty frame, a frame with only fields this server does not
  know), and bytes that are not a DeviceFrame at all, before or after hello; a frame over
  grpc's 4 MB is RESOURCE_EXHAUSTED;
- **ignored**, the stream staying open, because nothing is at stake: a second hello, an ack
  for a command the server never sent, a frame of an unknown kind after hello, a report for a
  message this device does not hold (acknowledged, so the phone forgets it, and the message,
  another client's, untouched), a report without a report id;
- **clamped**: negative part indexes and counts count as 0 ("the whole message"), error
  messages are cut to 500 characters, inbound text to 5,000.

After every bad stream the good phone still receives a SendCommand, and its status report and
inbound SMS are still stored and acknowledged. Hypothesis then sends 25 random sequences of up
to 20 well-formed frames (any kind, any values; seed fixed), and the server must have logged no
error for any of it.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from _devices import RawPhone, Tenant, quick_tenant, wait_for
from _sms import message_of
from conftest import GatewayFactory, RunningServer
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from zimsend.v1 import common_pb2
from zimsend.v1 import device_link_pb2 as pb

pytestmark = pytest.mark.slow
HELLO_TIMEOUT_S = 2
RECIPIENT = "+33612345678"
ALIVE_WINDOW_S = 1.0


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """No pacing (the good phone gets its message at once), a short hello deadline."""
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("fuzz-link-data"),
        TEST_PEPPER,
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
        ZIMSEND_DEVICE_HELLO_TIMEOUT_SECONDS=str(HELLO_TIMEOUT_S),
    )


@pytest.fixture(scope="module")
def phones_port(gateway_factory: GatewayFactory) -> str:
    """Envoy's phone listener: bad and good streams share its upstream connection."""
    return str(gateway_factory().device_target)


@dataclass
class Good:
    """The well-behaved phone and its client."""

    tenant: Tenant
    device_id: str
    phone: RawPhone


@pytest.fixture(scope="module")
def good(
    zimsend_env: dict[str, str], device_channel: grpc.Channel, phones_port: str
) -> Iterator[Good]:
    tenant = quick_tenant(zimsend_env, device_channel, "good")
    device = tenant.create_device("good-phone")
    phone = RawPhone(phones_port, tenant.client_id, device.device_id, device.device_password)
    phone.hello()
    yield Good(tenant, device.device_id, phone)
    phone.close()


@pytest.fixture(scope="module")
def rogue(zimsend_env: dict[str, str], device_channel: grpc.Channel) -> Tenant:
    """The client whose phones misbehave (its own devices: its messages go only to them)."""
    return quick_tenant(zimsend_env, device_channel, "rogue")


def assert_still_serving(good: Good) -> None:
    """The good phone gets a message, and its report and an inbound SMS are acknowledged."""
    message_id = good.tenant.send(RECIPIENT, f"still here {uuid.uuid4().hex[:6]}")
    command = good.phone.expect("send", timeout=10).send
    assert command.message_id == message_id
    good.phone.send(ack=pb.CommandAck(command_id=command.command_id, accepted=True))
    report_id, inbound_id = f"r-{uuid.uuid4().hex}", f"i-{uuid.uuid4().hex}"
    good.phone.send(
        report=pb.StatusReport(
            report_id=report_id, message_id=message_id, outcome=pb.StatusReport.OUTCOME_SENT
        )
    )
    sender: dict[str, Any] = {"from": RECIPIENT}  # a Python keyword: only as a mapping
    good.phone.send(inbound=pb.InboundSmsReport(report_id=inbound_id, body="hi", **sender))
    acked = _acked(good.phone, {report_id, inbound_id})
    assert acked >= {report_id, inbound_id}
    wait_for(
        lambda: good.tenant.status(message_id).status == common_pb2.sent,
        5,
        "the good phone's message to be sent",
    )


def _acked(phone: RawPhone, wanted: set[str], timeout: float = 10) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen and time.monotonic() < deadline:
        seen |= set(
            phone.expect("report_ack", timeout=deadline - time.monotonic()).report_ack.report_ids
        )
    return seen


# --- a stream of raw bytes --------------------------------------------------------------------


class RawStream:
    """One DeviceLink call whose frames are bytes the test chooses (serialized DeviceFrames or
    anything else); collects what the server sends and how the call ends."""

    def __init__(self, address: str, tenant: Tenant, name: str) -> None:
        device = tenant.create_device(name)
        self.device_id = device.device_id
        self.channel = grpc.insecure_channel(address)
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        connect = self.channel.stream_stream(
            "/zimsend.v1.DeviceLinkService/Connect",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ServerFrame.FromString,
        )
        metadata = (
            ("x-client-id", tenant.client_id),
            ("x-device-id", device.device_id),
            ("x-device-password", device.device_password),
        )
        self.call = connect(iter(self._out.get, None), metadata=metadata, timeout=60)
        self.frames: queue.SimpleQueue[pb.ServerFrame] = queue.SimpleQueue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for frame in self.call:
                self.frames.put(frame)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def send(self, *frames: bytes | pb.DeviceFrame) -> None:
        for frame in frames:
            self._out.put(frame if isinstance(frame, bytes) else frame.SerializeToString())

    def hello(self) -> None:
        self.send(pb.DeviceFrame(hello=pb.DeviceHello(model="Fuzz", app_version="fuzz-1")))
        self.expect("welcome")

    def expect(self, kind: str, timeout: float = 5.0) -> pb.ServerFrame:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = self.frames.get(timeout=min(left, 0.1))
            except queue.Empty:
                if self.ended.is_set() and self.frames.empty():
                    break
                continue
            if frame.WhichOneof("frame") == kind:
                return frame
        raise AssertionError(f"no {kind} within {timeout}s (stream ended: {self._end()})")

    def dropped(self, timeout: float = 5.0) -> grpc.RpcError:
        """The status the server ended the stream with."""
        assert self.ended.wait(timeout), "the server kept the stream open"
        assert self.error is not None, "the stream ended without a status"
        return self.error

    def still_open(self) -> None:
        """Open after `ALIVE_WINDOW_S`, and answering: a heartbeat is taken (still online)."""
        self.send(pb.DeviceFrame(heartbeat=pb.Heartbeat(battery=50)))
        assert not self.ended.wait(ALIVE_WINDOW_S), f"dropped: {self._end()}"

    def _end(self) -> str:
        if self.error is None:
            return "no" if not self.ended.is_set() else "yes, without status"
        return f"{self.error.code().name}: {self.error.details()}"

    def close(self) -> None:
        self._out.put(None)
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def stream(phones_port: str, rogue: Tenant, request: pytest.FixtureRequest) -> Iterator[RawStream]:
    opened = RawStream(phones_port, rogue, request.node.name[:60])
    yield opened
    opened.close()


def frame(**fields: Any) -> pb.DeviceFrame:
    return pb.DeviceFrame(**fields)


HEARTBEAT = frame(heartbeat=pb.Heartbeat(battery=10))
#: Field 99, length-delimited: a frame kind this server does not know (a newer phone's).
UNKNOWN_KIND = b"\x9a\x06\x03abc"


# --- before hello: dropped ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "named"),
    [
        (HEARTBEAT, "not heartbeat"),
        (
            frame(report=pb.StatusReport(report_id="r", message_id="msg_0000000000000000")),
            "not report",
        ),
        (frame(ack=pb.CommandAck(command_id="cmd_x", accepted=True)), "not ack"),
        (frame(pong=pb.Pong(nonce="n")), "not pong"),
        (b"", "not an empty frame"),
        (UNKNOWN_KIND, "not an empty frame"),
    ],
    ids=["heartbeat", "report", "ack", "pong", "empty", "unknown-kind"],
)
def test_a_frame_before_hello_drops_the_stream(
    stream: RawStream, good: Good, first: bytes | pb.DeviceFrame, named: str
) -> None:
    stream.send(first)
    error = stream.dropped()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first frame of a DeviceLink stream must be hello" in message_of(error)
    assert named in message_of(error)
    assert_still_serving(good)


@pytest.mark.parametrize("hello_first", [False, True], ids=["before-hello", "after-hello"])
def test_a_burst_of_random_bytes_drops_the_stream(
    stream: RawStream, good: Good, hello_first: bool
) -> None:
    import random

    rng = random.Random(1212)
    if hello_first:
        stream.hello()
    stream.send(*(rng.randbytes(rng.randint(1, 4096)) for _ in range(50)))
    error = stream.dropped()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "zimsend.v1.DeviceFrame" in message_of(error)
    assert "<class" not in message_of(error)
    assert_still_serving(good)


# --- after hello: ignored -----------------------------------------------------------------------


def test_a_second_hello_is_ignored(stream: RawStream, good: Good, rogue: Tenant) -> None:
    stream.hello()
    stream.send(frame(hello=pb.DeviceHello(model="Again")))
    stream.still_open()
    assert rogue.online(stream.device_id)
    assert rogue.get_device(stream.device_id).model == "Fuzz"
    assert_still_serving(good)


def test_unknown_and_empty_frames_after_hello_are_ignored(stream: RawStream, good: Good) -> None:
    stream.hello()
    stream.send(b"", UNKNOWN_KIND, frame(pong=pb.Pong()))
    stream.still_open()
    assert_still_serving(good)


def test_an_ack_for_an_unknown_command_is_ignored(stream: RawStream, good: Good) -> None:
    stream.hello()
    stream.send(
        frame(ack=pb.CommandAck(command_id="cmd_never_sent", accepted=False, reason="x" * 10_000)),
        frame(ack=pb.CommandAck()),
    )
    stream.still_open()
    assert_still_serving(good)


def test_a_report_for_a_message_the_device_does_not_hold_is_acked_and_changes_nothing(
    stream: RawStream, good: Good
) -> None:
    """The message is the good client's, queued for its phone: a rogue phone cannot touch it."""
    theirs = good.tenant.send(RECIPIENT, "not yours", scheduled_at=_in_a_day())
    stream.hello()
    stream.send(
        frame(
            report=pb.StatusReport(
                report_id="steal", message_id=theirs, outcome=pb.StatusReport.OUTCOME_FAILED
            )
        ),
        frame(
            report=pb.StatusReport(
                report_id="ghost",
                message_id="msg_ffffffffffffffff",
                outcome=pb.StatusReport.OUTCOME_DELIVERED,
            )
        ),
    )
    assert _acked_on(stream, {"steal", "ghost"}) >= {"steal", "ghost"}
    assert good.tenant.status(theirs).status == common_pb2.queued
    stream.still_open()
    assert_still_serving(good)


def test_a_report_without_an_id_or_outcome_is_ignored(stream: RawStream, good: Good) -> None:
    stream.hello()
    stream.send(
        frame(
            report=pb.StatusReport(
                message_id="msg_ffffffffffffffff", outcome=pb.StatusReport.OUTCOME_SENT
            )
        ),
        frame(report=pb.StatusReport(report_id="no-outcome", message_id="msg_ffffffffffffffff")),
        frame(report=pb.StatusReport(report_id="bad-outcome", outcome=42)),  # type: ignore[arg-type]  # unknown on purpose
    )
    stream.still_open()
    assert [f for f in _drain(stream) if f.WhichOneof("frame") == "report_ack"] == []
    assert_still_serving(good)


# --- absurd numbers and huge strings: clamped ---------------------------------------------------


def test_absurd_part_numbers_on_its_own_message_are_clamped(
    stream: RawStream, good: Good, rogue: Tenant
) -> None:
    stream.hello()
    message_id = rogue.send(RECIPIENT, "rogue's own")
    command = stream.expect("send", timeout=10).send
    stream.send(frame(ack=pb.CommandAck(command_id=command.command_id, accepted=True)))
    stream.send(
        *(
            frame(
                report=pb.StatusReport(
                    report_id=f"absurd-{n}",
                    message_id=message_id,
                    outcome=pb.StatusReport.OUTCOME_SENT,
                    part_index=index,
                    part_count=count,
                )
            )
            for n, (index, count) in enumerate([(-5, -7), (2**31 - 1, 2**31 - 1), (-(2**31), 3)])
        )
    )
    assert len(_acked_on(stream, {"absurd-0", "absurd-1", "absurd-2"})) == 3
    stream.still_open()
    status = rogue.status(message_id)
    assert status.status == common_pb2.sent, status
    assert_still_serving(good)


def test_huge_strings_are_cut_and_the_stream_stays(
    stream: RawStream, good: Good, rogue: Tenant
) -> None:
    stream.hello()
    message_id = rogue.send(RECIPIENT, "rogue's long failure")
    command = stream.expect("send", timeout=10).send
    stream.send(frame(ack=pb.CommandAck(command_id=command.command_id, accepted=True)))
    huge_sender: dict[str, Any] = {"from": "+" + "9" * 100_000}
    stream.send(
        frame(
            report=pb.StatusReport(
                report_id="huge",
                message_id=message_id,
                outcome=pb.StatusReport.OUTCOME_FAILED,
                error_code="E" * 100_000,
                error_message="é" * 1_000_000,
            )
        ),
        frame(
            inbound=pb.InboundSmsReport(report_id="huge-in", body="b" * 1_000_000, **huge_sender)
        ),
    )
    assert _acked_on(stream, {"huge", "huge-in"}, timeout=20) >= {"huge", "huge-in"}
    stream.still_open()
    failed = rogue.status(message_id)
    assert failed.status == common_pb2.failed
    assert failed.error.code == "DEVICE_ERROR"
    assert len(failed.error.message) <= 500
    assert_still_serving(good)


def test_an_overlong_report_id_is_ignored_never_stored_nor_echoed(
    stream: RawStream,
    good: Good,
    rogue: Tenant,
) -> None:
    """A 1 MB report id would be stored and sent back whole in the ReportAck: ids over 128
    characters are ignored (device_link.proto), while a normal one next to them is acked."""
    stream.hello()
    message_id = rogue.send(RECIPIENT, "rogue's long ids")
    command = stream.expect("send", timeout=10).send
    stream.send(frame(ack=pb.CommandAck(command_id=command.command_id, accepted=True)))
    long_id = "r" * 1_000_000
    stream.send(
        frame(
            report=pb.StatusReport(
                report_id=long_id, message_id=message_id, outcome=pb.StatusReport.OUTCOME_SENT
            )
        ),
        frame(inbound=pb.InboundSmsReport(report_id="i" * 129, body="hi")),
        frame(
            report=pb.StatusReport(
                report_id="normal", message_id=message_id, outcome=pb.StatusReport.OUTCOME_SENT
            )
        ),
    )
    acked = _acked_on(stream, {"normal"})
    assert acked == {"normal"}
    stream.still_open()
    assert all(
        len(rid) <= 128
        for f in _drain(stream)
        if f.WhichOneof("frame") == "report_ack"
        for rid in f.report_ack.report_ids
    )
    assert_still_serving(good)


def test_a_frame_over_4_mb_drops_the_stream(stream: RawStream, good: Good) -> None:
    stream.hello()
    stream.send(frame(heartbeat=pb.Heartbeat(cannot_send_reason="z" * 5_000_000)))
    error = stream.dropped()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "larger than max" in message_of(error)
    assert_still_serving(good)


# --- whatever hypothesis makes of a DeviceFrame -------------------------------------------------

_int32 = st.integers(-(2**31), 2**31 - 1)
_text = st.text(max_size=300)
_frames = st.one_of(
    st.builds(
        lambda h: frame(hello=h),
        st.builds(
            pb.DeviceHello,
            model=_text,
            app_version=_text,
            phone_number=_text,
            pending_message_ids=st.lists(_text, max_size=5),
        ),
    ),
    st.builds(
        lambda h: frame(heartbeat=h),
        st.builds(
            pb.Heartbeat,
            battery=_int32,
            signal=_int32,
            queue_depth=_int32,
            charging=st.booleans(),
            network=_int32,
            cannot_send_reason=_text,
        ),
    ),
    st.builds(
        lambda a: frame(ack=a),
        st.builds(pb.CommandAck, command_id=_text, accepted=st.booleans(), reason=_text),
    ),
    st.builds(
        lambda r: frame(report=r),
        st.builds(
            pb.StatusReport,
            report_id=_text,
            message_id=_text,
            part_index=_int32,
            part_count=_int32,
            outcome=_int32,
            error_code=_text,
            error_message=_text,
        ),
    ),
    st.builds(
        lambda i: frame(inbound=i),
        st.builds(pb.InboundSmsReport, report_id=_text, body=_text, sim_slot=_int32),
    ),
    st.builds(lambda p: frame(pong=p), st.builds(pb.Pong, nonce=_text)),
    st.just(frame()),
)


@seed(20_120_012)
@settings(
    max_examples=25,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(_frames, min_size=1, max_size=20))
def test_random_frames_after_hello_never_break_the_server(
    phones_port: str,
    rogue: Tenant,
    good: Good,
    server: RunningServer,
    frames: list[pb.DeviceFrame],
) -> None:
    """Any sequence of well-formed frames after hello is ignored or clamped: the stream stays
    open (or, at worst, ends with a status that says the phone was wrong), and no frame
    makes the server log a failure."""
    stream = RawStream(phones_port, rogue, "hypothesis")
    try:
        stream.hello()
        stream.send(*frames)
        stream.send(HEARTBEAT)
        if stream.ended.wait(0.3):
            assert stream.error is not None
            assert stream.error.code() in (grpc.StatusCode.INVALID_ARGUMENT,), stream._end()
    finally:
        stream.close()
    program, _ = server
    assert "devicelink.frame_failed" not in program.output()


def test_the_server_logged_no_failure_for_any_of_it(good: Good, server: RunningServer) -> None:
    """Runs last: a phone's nonsense is the phone's fault, refused or ignored as above; the
    server logs no error and no traceback for it (one would be a bug, and a flood of them
    from a misbehaving fleet would bury the real ones)."""
    assert_still_serving(good)
    program, _ = server
    failures = [
        line[:400]
        for line in program.output().splitlines()
        if '"level": "error"' in line or line.startswith(("Traceback", "Unexpected"))
    ]
    assert failures == []


def _acked_on(stream: RawStream, wanted: set[str], timeout: float = 10) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen and time.monotonic() < deadline:
        seen |= set(
            stream.expect("report_ack", timeout=deadline - time.monotonic()).report_ack.report_ids
        )
    return seen


def _drain(stream: RawStream) -> list[pb.ServerFrame]:
    out = []
    while not stream.frames.empty():
        out.append(stream.frames.get())
    return out


def _in_a_day() -> str:
    import datetime as dt

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    return later.strftime("%Y-%m-%dT%H:%M:%SZ")
