"""The device agent's journal: the phone's half of "a message is sent at most once"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from zimsend.agent.journal import Journal, Verdict
from zimsend.agent.senders.base import DeliveryReport, InboundSms, PartResult, SendResult
from zimsend.v1 import device_link_pb2 as pb

SENT = pb.StatusReport.OUTCOME_SENT
DELIVERED = pb.StatusReport.OUTCOME_DELIVERED
FAILED = pb.StatusReport.OUTCOME_FAILED


def command(message_id: str = "msg_1", *, redelivery: bool = False) -> pb.SendCommand:
    return pb.SendCommand(
        command_id=f"c-{message_id}",
        message_id=message_id,
        to="+263771234567",
        body="hello",
        redelivery=redelivery,
    )


def ok(parts: int = 1) -> SendResult:
    return SendResult(parts=tuple(PartResult(True) for _ in range(parts)), at=datetime.now(UTC))


def failed(code: str = "NO_CREDIT") -> SendResult:
    return SendResult(parts=(PartResult(False, code, "no credit left"),), at=datetime.now(UTC))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


@pytest.fixture
def journal(path: Path) -> Journal:
    return Journal.open(path, "dev1")


def outcomes(frames: list[pb.DeviceFrame]) -> list[tuple[int, int]]:
    return [(f.report.part_index, f.report.outcome) for f in frames]


def test_a_new_command_is_admitted_once_and_held_while_queued(journal: Journal) -> None:
    assert journal.admit(command()).verdict is Verdict.NEW
    assert journal.admit(command()).verdict is Verdict.HELD
    assert journal.admit(command(redelivery=True)).verdict is Verdict.HELD
    assert [c.message_id for c in journal.queued()] == ["msg_1"]


def test_only_a_queued_message_can_be_handed_to_the_sim(journal: Journal) -> None:
    journal.admit(command())
    assert journal.begin_send("msg_1") is True
    assert journal.begin_send("msg_1") is False
    assert journal.admit(command(redelivery=True)).verdict is Verdict.HELD


def test_a_sent_message_is_re_reported_never_re_admitted(journal: Journal) -> None:
    journal.admit(command())
    journal.begin_send("msg_1")
    first = journal.finish_send("msg_1", ok(parts=2))
    assert outcomes(first) == [(0, SENT), (1, SENT)]
    for redelivery in (True, False):
        admission = journal.admit(command(redelivery=redelivery))
        assert admission.verdict is Verdict.REREPORT
        # Same report ids: the server's dedup by report id makes the replay harmless.
        assert [f.report.report_id for f in admission.reports] == [
            f.report.report_id for f in first
        ]


def test_restart_after_a_send_does_not_send_again(path: Path) -> None:
    journal = Journal.open(path, "dev1")
    journal.admit(command())
    journal.begin_send("msg_1")
    journal.finish_send("msg_1", ok())
    journal.close()

    reopened = Journal.open(path, "dev1")
    assert reopened.recover() == []
    assert reopened.queued() == []
    assert reopened.admit(command(redelivery=True)).verdict is Verdict.REREPORT
    assert reopened.begin_send("msg_1") is False


def test_a_crash_between_intent_and_outcome_is_reported_failed_and_never_re_sent(
    path: Path,
) -> None:
    journal = Journal.open(path, "dev1")
    journal.admit(command())
    journal.begin_send("msg_1")  # ...and the process dies before finish_send
    journal.close()

    reopened = Journal.open(path, "dev1")
    frames = reopened.recover()
    assert [(f.report.outcome, f.report.error_code, f.report.part_count) for f in frames] == [
        (FAILED, "DEVICE_ERROR", 0)
    ]
    assert "not re-sent" in frames[0].report.error_message
    assert reopened.state("msg_1") == "unknown"
    admission = reopened.admit(command(redelivery=True))
    assert admission.verdict is Verdict.REREPORT
    assert reopened.begin_send("msg_1") is False
    reopened.close()
    assert Journal.open(path, "dev1").recover() == []  # recovered once, not at every start


def test_queued_commands_survive_a_restart_in_arrival_order(path: Path) -> None:
    journal = Journal.open(path, "dev1")
    for mid in ("msg_b", "msg_a", "msg_c"):
        journal.admit(command(mid))
    journal.close()
    assert [c.message_id for c in Journal.open(path, "dev1").queued()] == [
        "msg_b",
        "msg_a",
        "msg_c",
    ]


def test_pending_ids_are_what_the_phone_holds_but_has_not_finally_reported(
    journal: Journal,
) -> None:
    journal.admit(command("msg_queued"))
    journal.admit(command("msg_sending"))
    journal.begin_send("msg_sending")
    journal.admit(command("msg_done"))
    journal.begin_send("msg_done")
    journal.finish_send("msg_done", ok())
    assert journal.pending_message_ids() == ["msg_queued", "msg_sending", "msg_done"]

    journal.record_delivery(DeliveryReport("msg_done", 0, 1))
    assert "msg_done" in journal.pending_message_ids()  # reports not acknowledged yet
    journal.ack_reports([rid for rid, _ in journal.unacked_reports()])
    assert journal.pending_message_ids() == ["msg_queued", "msg_sending"]


def test_delivery_reports_are_per_part_and_recorded_once(journal: Journal) -> None:
    journal.admit(command())
    journal.begin_send("msg_1")
    journal.finish_send("msg_1", ok(parts=2))
    assert outcomes(journal.record_delivery(DeliveryReport("msg_1", 1, 2))) == [(1, DELIVERED)]
    assert journal.record_delivery(DeliveryReport("msg_1", 1, 2)) == []
    assert journal.record_delivery(DeliveryReport("msg_unknown", 0, 1)) == []
    rereport = journal.admit(command(redelivery=True)).reports
    assert outcomes(rereport) == [(0, SENT), (1, SENT), (1, DELIVERED)]


def test_a_failed_message_is_re_reported_on_redelivery_but_resent_on_a_new_offer(
    journal: Journal,
) -> None:
    journal.admit(command())
    journal.begin_send("msg_1")
    frames = journal.finish_send("msg_1", failed("NO_CREDIT"))
    assert [(f.report.outcome, f.report.error_code) for f in frames] == [(FAILED, "NO_CREDIT")]
    assert journal.admit(command(redelivery=True)).verdict is Verdict.REREPORT
    # POST /v1/sms/{id}/resend re-queues the same message id: a new attempt, new report ids.
    assert journal.admit(command()).verdict is Verdict.NEW
    assert journal.begin_send("msg_1") is True
    second = journal.finish_send("msg_1", ok())
    assert second[0].report.report_id != frames[0].report.report_id


def test_cancel_works_only_before_the_handoff(journal: Journal) -> None:
    journal.admit(command("msg_1"))
    journal.admit(command("msg_2"))
    journal.begin_send("msg_2")
    assert journal.cancel("msg_1") is True
    assert journal.cancel("msg_2") is False
    assert journal.cancel("msg_unknown") is False
    assert journal.begin_send("msg_1") is False
    assert journal.queued() == []


def test_reports_stay_until_acknowledged_even_across_restarts(path: Path) -> None:
    journal = Journal.open(path, "dev1")
    journal.admit(command())
    journal.begin_send("msg_1")
    sent = journal.finish_send("msg_1", ok(parts=3))
    inbound = journal.add_inbound(InboundSms(sender="+263772222222", body="yes"))
    assert inbound is not None
    assert getattr(inbound.inbound, "from") == "+263772222222"
    journal.ack_reports([sent[0].report.report_id])
    journal.close()

    held = [rid for rid, _ in Journal.open(path, "dev1").unacked_reports()]
    assert held == [sent[1].report.report_id, sent[2].report.report_id, inbound.inbound.report_id]


def test_report_ids_differ_between_journals_so_a_reinstall_is_never_deduplicated(
    tmp_path: Path,
) -> None:
    ids = []
    for name in ("a", "b"):
        journal = Journal.open(tmp_path / f"{name}.sqlite3", "dev1")
        journal.admit(command())
        journal.begin_send("msg_1")
        ids.append(journal.finish_send("msg_1", ok())[0].report.report_id)
    assert ids[0] != ids[1]


def test_the_daily_cap_counts_handoffs(journal: Journal) -> None:
    for mid in ("m1", "m2", "m3"):
        journal.admit(command(mid))
    journal.begin_send("m1")
    journal.begin_send("m2")
    assert journal.sends_since(0) == 2
    assert journal.sends_since(datetime.now(UTC).timestamp() + 60) == 0


def test_devices_sharing_one_database_are_isolated() -> None:
    db = Journal.memory_database()
    one, two = Journal(db, "dev1"), Journal(db, "dev2")
    one.admit(command())
    assert two.admit(command()).verdict is Verdict.NEW
    one.begin_send("msg_1")
    assert two.begin_send("msg_1") is True
    assert one.journal_id != two.journal_id


def test_prune_forgets_only_old_finished_and_fully_acknowledged_messages(journal: Journal) -> None:
    for mid in ("msg_acked", "msg_unacked", "msg_queued"):
        journal.admit(command(mid))
    for mid in ("msg_acked", "msg_unacked"):
        journal.begin_send(mid)
        journal.finish_send(mid, ok())
    journal.ack_reports(
        [rid for rid, f in journal.unacked_reports() if f.report.message_id == "msg_acked"]
    )
    assert journal.prune(older_than_s=3600) == 0  # too recent
    assert journal.prune(older_than_s=-1) == 1
    assert journal.state("msg_acked") is None
    assert journal.state("msg_unacked") == "sent"
    assert journal.state("msg_queued") == "queued"


def test_only_a_command_not_begun_is_given_back_and_it_is_not_a_handoff(
    journal: Journal,
) -> None:
    """A phone that cannot send gives back its queued commands with a before-send code; one
    whose send began (`sending`) keeps its sender's outcome, never a second report."""
    journal.admit(command("held"))
    journal.admit(command("in_send"))
    assert journal.begin_send("in_send")
    frames = journal.give_back("held", failed("SIM_MISSING"))
    assert outcomes(frames) == [(0, FAILED)]
    assert frames[0].report.error_code == "SIM_MISSING"
    assert journal.state("held") == "failed"
    assert journal.give_back("in_send", failed("SIM_MISSING")) == []
    assert journal.state("in_send") == "sending"
    assert journal.give_back("held", failed("SIM_MISSING")) == []  # once
    assert journal.sends_since(0) == 1  # a given-back command never counts against the cap
    # The server gives the message back to this phone later: a new attempt, sent normally.
    assert journal.admit(command("held")).verdict is Verdict.NEW
    assert journal.begin_send("held")
