"""The phone's sans-I/O protocol (zimsend.agent.protocol), fed ServerFrames directly.

No stream, no event loop: each test feeds frames to the one `PhoneProtocol` that both the trio
agent and the asyncio fleet drive, and checks the DeviceFrames it asks to write and what it
asks the driver to do. The journal is the real one, on an in-memory database.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from zimsend.agent.journal import Journal, Verdict
from zimsend.agent.protocol import (
    DEFAULT_HEARTBEAT_S,
    PhoneProtocol,
    ProtocolError,
    ReportBook,
)
from zimsend.agent.senders.base import Health, PartResult, SendResult
from zimsend.v1 import common_pb2
from zimsend.v1 import device_link_pb2 as pb


def _journal() -> Journal:
    return Journal(Journal.memory_database(), "phone")


def _welcomed(
    journal: Journal,
    *,
    slots: tuple[int, ...] = (0,),
) -> tuple[PhoneProtocol, ReportBook]:
    book = ReportBook(journal.unacked_reports())
    protocol = PhoneProtocol(journal, book, sim_slots=lambda: slots)
    protocol.hello(pb.DeviceHello())
    protocol.receive(
        pb.ServerFrame(
            welcome=pb.Welcome(device_id="phone", settings=pb.DeviceSettings(enabled=True))
        )
    )
    return protocol, book


def _send(
    message_id: str,
    *,
    slot: int | None = None,
    redelivery: bool = False,
) -> pb.ServerFrame:
    command = pb.SendCommand(
        command_id=f"c-{message_id}",
        message_id=message_id,
        to="+1555",
        body="hi",
        redelivery=redelivery,
    )
    if slot is not None:
        command.sim_slot = slot
    return pb.ServerFrame(send=command)


def _acks(frames: list[pb.DeviceFrame]) -> list[tuple[str, bool, str, str]]:
    return [(f.ack.command_id, f.ack.accepted, f.ack.reason, f.ack.error_code) for f in frames]


def _sent(journal: Journal, message_id: str) -> None:
    assert journal.begin_send(message_id)
    journal.finish_send(message_id, SendResult((PartResult(True),), datetime.now(UTC)))


def test_welcome_must_come_first_and_brings_the_settings() -> None:
    journal = _journal()
    journal.admit(_send("held").send)
    protocol = PhoneProtocol(journal, ReportBook())
    hello = protocol.hello(pb.DeviceHello(model="m"))
    assert list(hello.hello.pending_message_ids) == ["held"]
    with pytest.raises(ProtocolError, match="expected Welcome first, got ping"):
        protocol.receive(pb.ServerFrame(ping=pb.Ping(nonce="1")))

    protocol.hello(pb.DeviceHello())
    settings = pb.DeviceSettings(enabled=True, heartbeat_interval_seconds=7)
    got = protocol.receive(pb.ServerFrame(welcome=pb.Welcome(device_id="d", settings=settings)))
    assert got.welcome is not None
    assert got.welcome.device_id == "d"
    assert got.settings == settings
    assert got.frames == []
    assert protocol.heartbeat_interval == 7
    # Later settings apply live; a new stream needs a new Welcome.
    got = protocol.receive(pb.ServerFrame(settings=pb.DeviceSettings(enabled=False)))
    assert got.settings == pb.DeviceSettings(enabled=False)
    assert protocol.heartbeat_interval == DEFAULT_HEARTBEAT_S
    protocol.hello(pb.DeviceHello())
    with pytest.raises(ProtocolError):
        protocol.receive(pb.ServerFrame(settings=settings))


def test_a_new_command_is_journaled_then_acknowledged_then_queued_once() -> None:
    journal = _journal()
    protocol, _ = _welcomed(journal)
    got = protocol.receive(_send("m1"))
    assert _acks(got.frames) == [("c-m1", True, "", "")]
    assert got.verdict is Verdict.NEW
    assert got.enqueue is not None
    assert got.enqueue.message_id == "m1"
    assert journal.state("m1") == "queued"  # durable before the ack is written

    again = protocol.receive(_send("m1", redelivery=True))
    assert _acks(again.frames) == [("c-m1", True, "", "")]
    assert again.verdict is Verdict.HELD
    assert again.enqueue is None


def test_a_command_for_a_missing_sim_slot_is_refused_as_sim_missing() -> None:
    journal = _journal()
    protocol, _ = _welcomed(journal, slots=(0,))
    got = protocol.receive(_send("m1", slot=1))
    assert _acks(got.frames) == [("c-m1", False, "no SIM in slot 1", "SIM_MISSING")]
    assert got.enqueue is None
    assert journal.state("m1") is None

    assert protocol.receive(_send("m2", slot=0)).enqueue is not None
    unknown, _ = _welcomed(_journal(), slots=())  # slots unknown: every slot is tried
    assert unknown.receive(_send("m3", slot=1)).enqueue is not None


def test_a_command_already_sent_is_re_reported_never_queued_again() -> None:
    journal = _journal()
    protocol, book = _welcomed(journal)
    protocol.receive(_send("m1"))
    _sent(journal, "m1")
    book.add(frame for _, frame in journal.unacked_reports())
    protocol.receive(
        pb.ServerFrame(
            report_ack=pb.ReportAck(report_ids=[rid for rid, _ in journal.unacked_reports()])
        )
    )
    assert book.unacked == 0

    got = protocol.receive(_send("m1", redelivery=True))
    assert _acks(got.frames) == [("c-m1", True, "", "")]
    assert got.verdict is Verdict.REREPORT
    assert got.enqueue is None
    assert got.reports_added
    (report,) = book.due()
    assert report.report.message_id == "m1"
    assert report.report.outcome == pb.StatusReport.OUTCOME_SENT


def test_cancel_in_time_drops_the_command_else_says_why_not() -> None:
    journal = _journal()
    protocol, _ = _welcomed(journal)
    protocol.receive(_send("queued"))
    protocol.receive(_send("sending"))
    assert journal.begin_send("sending")

    def cancel(message_id: str) -> pb.ServerFrame:
        return pb.ServerFrame(
            cancel=pb.CancelCommand(command_id=f"x-{message_id}", message_id=message_id)
        )

    got = protocol.receive(cancel("queued"))
    assert _acks(got.frames) == [("x-queued", True, "", "")]
    assert got.discard == "queued"
    assert journal.state("queued") == "cancelled"
    got = protocol.receive(cancel("sending"))
    assert _acks(got.frames) == [("x-sending", False, "too late: message is sending", "")]
    assert got.discard == ""
    got = protocol.receive(cancel("nope"))
    assert _acks(got.frames) == [("x-nope", False, "unknown message", "")]


def test_ping_is_answered_with_its_nonce() -> None:
    protocol, _ = _welcomed(_journal())
    got = protocol.receive(pb.ServerFrame(ping=pb.Ping(nonce="n42")))
    assert [f.pong.nonce for f in got.frames] == ["n42"]


def test_a_report_ack_forgets_the_reports_in_the_journal_and_the_book() -> None:
    journal = _journal()
    protocol, book = _welcomed(journal)
    protocol.receive(_send("m1"))
    assert journal.begin_send("m1")
    frames = journal.finish_send(
        "m1", SendResult((PartResult(True), PartResult(True)), datetime.now(UTC))
    )
    assert book.add(frames)
    book.new_stream()
    assert [f.report.part_index for f in book.due()] == [0, 1]
    assert book.in_flight == 2

    first = frames[0].report.report_id
    got = protocol.receive(pb.ServerFrame(report_ack=pb.ReportAck(report_ids=[first, "x"])))
    assert got.acked == 1
    assert got.frames == []
    assert [rid for rid, _ in journal.unacked_reports()] == [frames[1].report.report_id]
    assert book.unacked == 1
    assert book.in_flight == 1
    assert list(book.due()) == []  # the other one was sent on this stream already


def test_reconnect_ends_the_stream_and_names_the_fatal_reasons() -> None:
    protocol, _ = _welcomed(_journal())

    def reconnect(**fields: object) -> pb.ServerFrame:
        return pb.ServerFrame(reconnect=pb.Reconnect(**fields))  # type: ignore[arg-type]  # test fields by name

    end = protocol.receive(
        reconnect(reason_code=pb.Reconnect.SERVER_SHUTDOWN, retry_after_ms=1500)
    ).end
    assert end is not None
    assert end.fatal is None
    assert end.retry_after_ms == 1500
    assert end.reason_name == "SERVER_SHUTDOWN"
    end = protocol.receive(reconnect(reason_code=pb.Reconnect.REPLACED)).end
    assert end is not None
    assert end.fatal is not None
    assert "second agent" in end.fatal
    for legacy in ("DEVICE_DELETED", "PASSWORD_ROTATED", "DEVICE_DISABLED"):
        end = protocol.receive(reconnect(reason=legacy)).end  # a server older than reason_code
        assert end is not None
        assert end.fatal
        assert end.reason_name == legacy
    end = protocol.receive(reconnect(retry_after_ms=-5)).end
    assert end is not None
    assert end.fatal is None
    assert end.retry_after_ms == 0
    assert end.reason_name == ""


def test_the_report_book_replays_on_each_stream_and_resends_a_re_report() -> None:
    def status(rid: str) -> pb.DeviceFrame:
        return pb.DeviceFrame(report=pb.StatusReport(report_id=rid, message_id="m"))

    book = ReportBook([("a", status("a"))])
    assert not book.add([])
    book.add([status("b")])
    assert [f.report.report_id for f in book.due()] == ["a", "b"]
    assert list(book.due()) == []
    book.new_stream()  # a reconnect: everything unacknowledged goes again
    assert [f.report.report_id for f in book.due()] == ["a", "b"]
    book.add([status("a")])  # re-reported: a new generation goes out once more
    assert [f.report.report_id for f in book.due()] == ["a"]

    book.new_stream()
    due = book.due()
    assert next(due).report.report_id == "a"
    book.forget(["a", "b"])  # acknowledged while "a" was being written
    assert list(due) == []
    assert book.in_flight == 0
    assert book.unacked == 0


def test_the_heartbeat_says_what_the_phone_can_do() -> None:
    protocol, _ = _welcomed(_journal())
    beat = protocol.heartbeat(Health(battery=80, charging=None, signal=3, network="home"), 4)
    assert beat.heartbeat.queue_depth == 4
    assert beat.heartbeat.battery == 80
    assert beat.heartbeat.network == common_pb2.NetworkRegistration.Value("home")
    assert beat.heartbeat.cannot_send_reason == ""
    assert not beat.heartbeat.charging
    beat = protocol.heartbeat(
        Health(battery=None, charging=True, signal=None, network="odd", can_send=False), 0
    )
    assert not beat.heartbeat.HasField("battery")
    assert beat.heartbeat.network == common_pb2.NETWORK_REGISTRATION_UNSPECIFIED
    assert beat.heartbeat.cannot_send_reason == "the phone cannot send"
