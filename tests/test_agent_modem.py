"""The modem backend against real Gammu: its `dummy` driver, a fake phone kept in a folder.

What is real here: libGammu and python-gammu (the dummy driver encodes every part exactly as
for a real modem and logs it), the agent's SQLite journal and its recorder. Status reports go
through the driver: the test stores a Status_Report in the fake modem's inbox (as the network
would) and the sender reads it from there. What the dummy driver cannot do is fail: every
SendSMS succeeds with message reference 255, and it cannot be unplugged once open; so the
network's failure statuses are fed through the same path (a failed TP-Status), and "unplugged"
is a modem whose folder is missing when it is opened, then appears.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from _gammu import DummyModem

from zimsend.agent.agent import JournalRecorder
from zimsend.agent.journal import Journal
from zimsend.agent.reporter import Reporter
from zimsend.agent.senders.base import Health, SendRequest, SendResult
from zimsend.agent.senders.modem import ModemConfig, ModemSender, delivery_outcome
from zimsend.segments import plan
from zimsend.v1 import device_link_pb2 as pb

T = TypeVar("T")

TO = "+33612345678"


@pytest.fixture
def modem(tmp_path: Path) -> DummyModem:
    return DummyModem.create(tmp_path)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal.open(tmp_path / "journal.sqlite3", "device_modem")
    yield journal
    journal.close()


def _request(message_id: str, body: str) -> SendRequest:
    return SendRequest(message_id, TO, body, tuple(plan(body).parts))


async def _running(
    sender: ModemSender, recorder: JournalRecorder, body: Callable[..., Awaitable[T]], *args: Any
) -> T:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.run, recorder)
        with trio.fail_after(20):
            while not (await sender.health()).can_send:  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
                await trio.sleep(0.02)
            result = await body(*args)
        nursery.cancel_scope.cancel()
    return result


def _send(journal: Journal, sender: ModemSender, message_id: str, body: str) -> SendResult:
    """What the executor does around `send()` (journal, hand off, journal the outcome)."""
    journal.admit(
        pb.SendCommand(command_id=f"c_{message_id}", message_id=message_id, to=TO, body=body)
    )
    assert journal.begin_send(message_id)

    async def hand_off() -> SendResult:
        result = await sender.send(_request(message_id, body))
        journal.finish_send(message_id, result)
        return result

    recorder = JournalRecorder(journal, Reporter(journal))
    return trio.run(_running, sender, recorder, hand_off)


def _outcomes(journal: Journal, message_id: str) -> list[tuple[int, int, str]]:
    return sorted(
        (f.report.part_index, f.report.outcome, f.report.error_code)
        for _, f in journal.unacked_reports()
        if f.HasField("report") and f.report.message_id == message_id
    )


def _sender(modem: DummyModem) -> ModemSender:
    return ModemSender(ModemConfig(gammurc=modem.gammurc, poll_interval=0.05))


def test_a_long_gsm_message_leaves_as_concatenated_parts_with_their_references(
    modem: DummyModem,
    journal: Journal,
) -> None:
    body = "".join(f"Ligne {i:04d}; " for i in range(130))[:1600]
    result = _send(journal, _sender(modem), "msg_long", body)
    assert result.ok
    assert len(result.parts) == len(plan(body).parts) == 11
    assert all(p.reference == 255 for p in result.parts)  # the dummy driver's reference
    sent = modem.sent()
    assert [to for to, _ in sent] == [TO] * 11
    assert "".join(text for _, text in sent) == body
    awaiting = journal.awaiting_delivery()
    assert [(a.part_index, a.reference, a.to) for a in awaiting] == [
        (i, 255, TO) for i in range(11)
    ]


def test_a_ucs2_message_keeps_its_characters(modem: DummyModem, journal: Journal) -> None:
    body = "Votre colis арриве demain — 👍🏽 " * 3
    result = _send(journal, _sender(modem), "msg_ucs2", body)
    assert result.ok
    assert len(result.parts) == len(plan(body).parts) == 2
    sent = modem.sent()
    assert [to for to, _ in sent] == [TO, TO]
    assert "".join(text for _, text in sent) == body


def test_status_reports_from_the_modem_mark_parts_delivered_or_failed_and_leave_storage(
    modem: DummyModem,
    journal: Journal,
) -> None:
    sender = _sender(modem)
    _send(journal, sender, "msg_a", "first")
    modem.status_report("0033612345678", 255, status=0x00)  # national form of the number
    recorder = JournalRecorder(journal, Reporter(journal))

    async def wait_for_reports() -> None:
        while journal.awaiting_delivery():  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
            await trio.sleep(0.02)

    trio.run(_running, sender, recorder, wait_for_reports)
    assert _outcomes(journal, "msg_a") == [
        (0, pb.StatusReport.OUTCOME_SENT, ""),
        (0, pb.StatusReport.OUTCOME_DELIVERED, ""),
    ]
    assert modem.storage() == []  # read, journaled, deleted

    sender = _sender(modem)
    _send(journal, sender, "msg_b", "second")
    modem.status_report(TO, 255, status=0x46)  # validity period expired
    trio.run(_running, sender, JournalRecorder(journal, Reporter(journal)), wait_for_reports)
    failed = [o for o in _outcomes(journal, "msg_b") if o[1] == pb.StatusReport.OUTCOME_FAILED]
    assert failed == [(0, pb.StatusReport.OUTCOME_FAILED, "TIMEOUT")]
    assert modem.storage() == []


def test_a_delivery_report_after_an_agent_restart_still_finds_its_part(
    modem: DummyModem,
    journal: Journal,
    tmp_path: Path,
) -> None:
    _send(journal, _sender(modem), "msg_r", "before the restart")
    journal.close()
    modem.status_report(TO, 255)
    reopened = Journal.open(tmp_path / "journal.sqlite3", "device_modem")

    async def wait_for_reports() -> None:
        while reopened.awaiting_delivery():  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
            await trio.sleep(0.02)

    try:
        trio.run(
            _running,
            _sender(modem),
            JournalRecorder(reopened, Reporter(reopened)),
            wait_for_reports,
        )
        assert (0, pb.StatusReport.OUTCOME_DELIVERED, "") in _outcomes(reopened, "msg_r")
    finally:
        reopened.close()


def test_inbound_sms_are_joined_reported_once_and_deleted_even_across_restarts(
    modem: DummyModem,
    journal: Journal,
) -> None:
    long_text = "Réponse du client, assez longue pour trois parts. " * 4
    assert modem.receive("+33698765432", long_text, unicode=True) == 3
    modem.receive("+33611111111", "STOP")

    def inbound() -> list[tuple[str, str]]:
        return sorted(
            (getattr(f.inbound, "from"), f.inbound.body)
            for _, f in journal.unacked_reports()
            if f.HasField("inbound")
        )

    async def until_empty() -> None:
        while modem.storage() or len(inbound()) < 2:  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
            await trio.sleep(0.02)

    trio.run(_running, _sender(modem), JournalRecorder(journal, Reporter(journal)), until_empty)
    assert inbound() == [("+33611111111", "STOP"), ("+33698765432", long_text)]

    assert modem.storage() == []

    # A restarted agent finds nothing new to report.
    trio.run(_running, _sender(modem), JournalRecorder(journal, Reporter(journal)), until_empty)
    assert inbound() == [("+33611111111", "STOP"), ("+33698765432", long_text)]


def test_the_same_stored_sms_is_never_reported_twice(modem: DummyModem, journal: Journal) -> None:
    """Crash between journaling an inbound SMS and deleting it: on restart the modem still
    holds it; its content hash is already journaled, so it is deleted, not reported again."""
    modem.receive("+33611111111", "Bonjour")
    stored = modem.storage()
    copy = {p: p.read_bytes() for p in stored}
    recorder = JournalRecorder(journal, Reporter(journal))

    async def until_empty() -> None:
        while modem.storage():  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
            await trio.sleep(0.02)

    trio.run(_running, _sender(modem), recorder, until_empty)
    for path, data in copy.items():  # put it back, as if DeleteSMS never happened
        path.write_bytes(data)
    trio.run(_running, _sender(modem), recorder, until_empty)
    bodies = [f.inbound.body for _, f in journal.unacked_reports() if f.HasField("inbound")]
    assert bodies == ["Bonjour"]


def test_a_missing_modem_cannot_send_says_why_and_is_reopened_when_it_appears(
    tmp_path: Path,
    journal: Journal,
) -> None:
    modem = DummyModem.create(tmp_path / "usb", make_folder=False)
    sender = ModemSender(ModemConfig(gammurc=modem.gammurc, poll_interval=0.05, reopen_cap=0.5))
    seen: dict[str, Health] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run, JournalRecorder(journal, Reporter(journal)))
            with trio.fail_after(10):
                while "cannot open" not in (await sender.health()).problem:  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
                    await trio.sleep(0.02)
            health = await sender.health()
            seen["unplugged"] = health
            modem.folder.mkdir(parents=True)  # plugged in
            with trio.fail_after(20):
                while not (await sender.health()).can_send:  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
                    await trio.sleep(0.02)
            seen["plugged"] = await sender.health()
            nursery.cancel_scope.cancel()

    trio.run(main)
    can_send, problem = seen["unplugged"].can_send, seen["unplugged"].problem
    assert can_send is False
    assert "cannot open the modem" in str(problem)
    plugged = seen["plugged"]
    assert plugged.can_send
    assert plugged.network == "home"
    assert plugged.signal == 2
    assert plugged.battery == 100
    capabilities = sender.describe().capabilities
    assert capabilities is not None
    assert capabilities.delivery_reports
    shutil.rmtree(modem.folder)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0x00, (True, "", "")),
        (0x21, (None, "", "")),
        (0x41, (False, "INVALID_NUMBER", "incompatible destination")),
        (0x46, (False, "TIMEOUT", "validity period expired")),
        (0x65, (False, "NETWORK_ERROR", "not delivered")),
    ],
)
def test_network_status_codes_map_to_spec_codes(
    status: int,
    expected: tuple[bool | None, str, str],
) -> None:
    delivered, code, message = delivery_outcome(status)
    assert (delivered, code) == expected[:2]
    assert expected[2] in message
    if delivered is False:
        assert f"0x{status:02X}" in message  # the network's own code is kept


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        ("ERR_NOSIM", "SIM_MISSING", "no SIM card"),
        ("ERR_SECURITYERROR", "SIM_PIN_REQUIRED", "PIN"),
        ("ERR_FULL", "DEVICE_ERROR", "memory is full"),
        ("ERR_NETWORK_ERROR", "NETWORK_ERROR", "network refused"),
        ("ERR_NOSERVICE", "NO_SERVICE", "no network"),
        ("ERR_EMPTYSMSC", "MODEM_REFUSED", "SMS centre"),
        ("ERR_UNKNOWN", "NETWORK_ERROR", "refused"),
        ("ERR_TIMEOUT", "TIMEOUT", "may have left"),
        ("ERR_BUG", "DEVICE_ERROR", "modem failed"),
    ],
)
def test_gammu_errors_map_to_spec_codes_and_keep_the_modem_s_words(
    error: str,
    code: str,
    words: str,
) -> None:
    import gammu

    from zimsend.agent.senders.modem import failure_of

    exc = getattr(gammu, error)({"Text": "raw text from libGammu", "Where": "SendSMS", "Code": 1})
    got_code, message = failure_of(exc)
    assert got_code == code
    assert words in message
    assert "raw text from libGammu" in message
    assert error in message


def test_the_sim_pin_never_shows_in_the_config_s_repr(tmp_path: Path) -> None:
    config = ModemConfig(gammurc=tmp_path / "gammurc", pin="4821")
    assert "4821" not in repr(config)
    assert "4821" not in str(config)
