"""A GSM/LTE modem (or a phone in modem mode) driven by Gammu: `--backend modem`.

Gammu (python-gammu, the `zimsend-client[modem]` extra) already speaks to every modem Gammu
SMSD, playSMS and Kalkun use; the user's gammurc says which (device, connection, model). This
module adds what a gateway needs on top:

- **Sends** our own parts (`zimsend.segments`, so a part never splits a grapheme and the count
  equals the server's `segments`), each encoded by Gammu with a concatenation header and a
  status report request; per part the network's message reference is returned, and the
  journal keeps it to match the report later (even after a restart).
- **Polls** the modem's SMS storage every few seconds: status reports become delivered/failed
  parts (the network's TP-Status, with its reason); received SMS are joined (multipart) and
  journaled, and only then deleted from the modem/SIM, so storage never fills and an SMS is
  never lost nor reported twice (`source_id` is a hash of its content).
- **Health**: signal, registration and battery (where the modem has one). A modem that cannot
  be opened, a SIM that wants a PIN, or no network means "cannot send": the agent hands it
  nothing and the device shows why; the modem is reopened with backoff while the stream stays
  up. A wrong PIN is never retried: three wrong PINs would block the SIM.

Gammu calls block, so each modem has one thread of its own (`_ModemThread`); the trio loop only
waits for their results and never stalls the stream or heartbeats.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import trio

from zimsend.agent.backoff import Backoff
from zimsend.agent.senders.base import (
    Capabilities,
    DeliveryReport,
    DeviceInfo,
    Health,
    InboundSms,
    PartResult,
    Recorder,
    SendRequest,
    SendResult,
    SimInfo,
    failure,
)
from zimsend.segments import encoding_of
from zimsend.v1 import failures_pb2

__all__ = ["ModemConfig", "ModemSender", "delivery_outcome", "failure_of"]

log = logging.getLogger("zimsend.agent.modem")

T = TypeVar("T")

#: An incomplete multipart SMS waits this long for its missing parts, then is reported as it is.
INCOMPLETE_WAIT_S = 3600.0

_NETWORK = {
    "HomeNetwork": "home",
    "RoamingNetwork": "roaming",
    "RequestingNetwork": "searching",
    "RegistrationDenied": "denied",
    "NoNetwork": "not_registered",
}

#: Gammu errors that mean "the modem is gone or not answering": close it and reopen.
_DEVICE_LOST = frozenset(
    {
        "ERR_DEVICENOTEXIST",
        "ERR_DEVICEOPENERROR",
        "ERR_DEVICENOPERMISSION",
        "ERR_DEVICEREADERROR",
        "ERR_DEVICEWRITEERROR",
        "ERR_DEVICEBUSY",
        "ERR_DEVICELOCKED",
        "ERR_DEVICENOTWORK",
        "ERR_NOTCONNECTED",
        "ERR_DEVICENODRIVER",
        "ERR_PHONEOFF",
    }
)

_F = failures_pb2
#: Gammu error → (FailureCode, what it means for a person). Anything else: DEVICE_ERROR.
#: Errors raised before the modem submitted anything (no service, no SIM, PIN, no SMS centre)
#: are the codes that let the server give the message to another phone; ERR_UNKNOWN and
#: ERR_TIMEOUT may come after the submission and stay ambiguous.
_FAILURES = {
    "ERR_NETWORK_ERROR": (failure(_F.NETWORK_ERROR), "the network refused the message"),
    "ERR_NOSERVICE": (failure(_F.NO_SERVICE), "no network service"),
    "ERR_UNKNOWN": (failure(_F.NETWORK_ERROR), "the modem or the network refused the message"),
    "ERR_TIMEOUT": (failure(_F.TIMEOUT), "the modem did not answer in time; the SMS may have left"),
    "ERR_NOSIM": (failure(_F.SIM_MISSING), "no SIM card in the modem"),
    "ERR_SECURITYERROR": (failure(_F.SIM_PIN_REQUIRED), "the SIM is locked (PIN or PUK needed)"),
    "ERR_FULL": (failure(_F.DEVICE_ERROR), "the modem's message memory is full"),
    "ERR_EMPTYSMSC": (
        failure(_F.MODEM_REFUSED),
        "no SMS centre number: set it on the SIM or in gammurc",
    ),
    "ERR_GETTING_SMSC": (
        failure(_F.MODEM_REFUSED),
        "the modem could not read its SMS centre number",
    ),
    "ERR_INVALIDDATA": (failure(_F.INVALID_NUMBER), "the modem refused the recipient or the text"),
}


def failure_of(exc: BaseException) -> tuple[str, str]:
    """(SPEC code, message) for a Gammu error; the message keeps Gammu's own text and code."""
    name = type(exc).__name__
    code, meaning = _FAILURES.get(name, (failure(_F.DEVICE_ERROR), "the modem failed"))
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    raw = f"{info.get('Where', '?')}: {info.get('Text', str(exc))} ({name})"
    return code, f"{meaning} [{raw}]"


def delivery_outcome(status: int) -> tuple[bool | None, str, str]:
    """A status report's TP-Status (3GPP TS 23.040 §9.2.3.15) → (delivered?, code, message).
    None: the network is still trying (temporary error), so the part stays `sent`."""
    if status < 0x20:
        return True, "", ""
    if status < 0x40:
        return None, "", ""
    invalid, blocked, timeout = (
        failure(_F.INVALID_NUMBER),
        failure(_F.BLOCKED_NUMBER),
        failure(_F.TIMEOUT),
    )
    reasons = {
        0x41: (invalid, "incompatible destination"),
        0x42: (blocked, "connection rejected by the recipient"),
        0x43: (invalid, "recipient not obtainable"),
        0x46: (timeout, "validity period expired before delivery"),
        0x49: (invalid, "the message does not exist at the SMS centre"),
        0x62: (timeout, "no response from the recipient"),
        0x63: (blocked, "service rejected"),
    }
    code, reason = reasons.get(status, (failure(_F.NETWORK_ERROR), "not delivered"))
    return False, code, f"network status report 0x{status:02X}: {reason}"


@dataclass(frozen=True)
class ModemConfig:
    """`--gammu-config FILE [--gammu-section N]`, the SIM PIN (`repr` never shows it), and how
    often the modem is polled."""

    gammurc: Path
    section: int = 0
    pin: str | None = None
    poll_interval: float = 5.0
    reopen_cap: float = 60.0

    def __repr__(self) -> str:
        return f"ModemConfig(gammurc={self.gammurc}, section={self.section})"


class _ModemThread:
    """One thread owning one Gammu state machine: every call runs there, in order."""

    def __init__(self, name: str) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        future = self._pool.submit(fn, *args)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # the agent stopped meanwhile
                pass

        future.add_done_callback(wake)
        await done.wait()
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _State:
    """What the polling loop last learnt (read by `health()` and `describe()`)."""

    open: bool = False
    problem: str = "modem not opened yet"
    #: The before-send FailureCode of `problem` when it is the SIM's lock ("" otherwise).
    problem_code: str = ""
    model: str = "GSM modem"
    operator: str = ""
    network: str = ""
    signal: int | None = None
    battery: int | None = None
    charging: bool | None = None


class ModemSender:
    """The `Sender` of one Gammu modem (one SIM, slot 0)."""

    def __init__(self, config: ModemConfig) -> None:
        import gammu  # the optional extra: imported only when this backend is chosen

        self._gammu = gammu
        self._config = config
        self._thread = _ModemThread(f"gammu-{config.section}")  # replaced by each run()
        self._machine: Any = None
        self._state = _State()
        self._pin_refused = False
        self._lock = threading.Lock()  # guards _machine between the modem thread and close()
        self._first_seen: dict[str, float] = {}  # incomplete multipart → first seen (monotonic)

    # --- Sender -----------------------------------------------------------------------------

    def describe(self) -> DeviceInfo:
        gammu_version = self._gammu.Version()[0]
        return DeviceInfo(
            model=self._state.model,
            android_version=f"Gammu {gammu_version}",
            sims=(SimInfo(slot=0, carrier=self._state.operator),),
            capabilities=Capabilities(backend="modem", delivery_reports=True, inbound_sms=True),
        )

    async def health(self) -> Health:
        s = self._state
        can_send = s.open and s.network in ("home", "roaming", "")
        problem = (
            s.problem
            if not s.open
            else ("" if can_send else f"not registered on a network ({s.network})")
        )
        return Health(
            battery=s.battery,
            charging=s.charging,
            signal=s.signal,
            network=s.network,
            can_send=can_send,
            problem=problem,
            failure_code="" if s.open else s.problem_code,
        )

    async def send(self, request: SendRequest) -> SendResult:
        if not self._state.open:
            failed = PartResult(  # nothing reached the modem: it certainly did not leave
                False, failure(_F.MODEM_REFUSED), f"modem not available: {self._state.problem}"
            )
            return SendResult(parts=tuple(failed for _ in request.parts), at=datetime.now(UTC))
        unicode = encoding_of(request.body) == "UCS2"
        concat = secrets.randbelow(256)
        results: list[PartResult] = []
        for index, text in enumerate(request.parts):
            if results and not results[-1].ok:
                results.append(
                    PartResult(False, results[-1].error_code, "not sent: an earlier part failed")
                )
                continue
            try:
                reference = await self._thread.call(
                    self._send_part, request.to, text, unicode, concat, index, len(request.parts)
                )
            except self._gammu.GSMError as exc:
                code, message = failure_of(exc)
                log.warning(
                    "modem refused part %d of %s: %s", index + 1, request.message_id, message
                )
                if type(exc).__name__ in _DEVICE_LOST:
                    await self._thread.call(self._close, message)
                results.append(PartResult(False, code, message))
            else:
                results.append(PartResult(True, reference=reference))
        return SendResult(parts=tuple(results), at=datetime.now(UTC))

    async def run(self, recorder: Recorder) -> None:
        backoff = Backoff(cap=self._config.reopen_cap)
        self._thread = _ModemThread(f"gammu-{self._config.section}")
        try:
            while True:
                if not self._state.open:
                    if await self._thread.call(self._open):
                        backoff.reset()
                    else:
                        delay = max(0.5, backoff.next())
                        log.warning(
                            "modem not available (%s); retrying in %.0f s",
                            self._state.problem,
                            delay,
                        )
                        await trio.sleep(delay)
                        continue
                try:
                    await self._thread.call(self._refresh_health)
                    await self._poll_storage(recorder)
                except self._gammu.GSMError as exc:
                    if type(exc).__name__ not in _DEVICE_LOST:
                        raise
                    await self._thread.call(self._close, failure_of(exc)[1])
                    continue
                await trio.sleep(self._config.poll_interval)
        finally:
            with trio.CancelScope(shield=True):
                await self._thread.call(self._close, "agent stopped")
            self._thread.close()

    # --- storage: status reports and inbound SMS -------------------------------------------

    async def _poll_storage(self, recorder: Recorder) -> None:
        stored = await self._thread.call(self._read_storage)
        reports = [sms for batch in stored for sms in batch if sms["Type"] == "Status_Report"]
        received = [batch for batch in stored if batch[0]["Type"] == "Deliver"]
        done: list[dict[str, Any]] = []
        for sms in reports:
            delivered, code, message = delivery_outcome(int(sms.get("DeliveryStatus", 0)))
            if delivered is not None:
                # Gammu's DateTime is the centre's timestamp of the original submission
                # (TP-SCTS); SMSCDateTime is when the network delivered it (TP-DT).
                matched = recorder.delivery(
                    DeliveryReport(
                        delivered=delivered,
                        error_code=code,
                        error_message=message,
                        at=_utc(sms.get("SMSCDateTime")),
                        reference=int(sms["MessageReference"]),
                        recipient=str(sms.get("Number", "")),
                        submitted_at=_utc(sms.get("DateTime")),
                    )
                )
                if not matched:
                    log.info(
                        "status report for reference %s matches no part awaiting one",
                        sms["MessageReference"],
                    )
            done.append(sms)  # a temporary status is dropped too: the final one follows
        for parts in self._gammu.LinkSMS(received):
            joined = self._joined(parts)
            if joined is None:
                continue  # waits for its missing parts
            recorder.inbound(joined)  # durable on return (False: journaled before)
            done.extend(parts)
        if done:
            await self._thread.call(self._delete, done)

    def _joined(self, parts: list[dict[str, Any]]) -> InboundSms | None:
        first = parts[0]
        udh = first.get("UDH", {})
        expected = int(udh.get("AllParts", -1)) if udh.get("Type") != "NoUDH" else 1
        # The centre's timestamp (TP-SCTS, Gammu's DateTime) is part of every SMS-DELIVER.
        source = hashlib.sha256(
            "\x1f".join(
                [
                    str(first.get("Number")),
                    str(first.get("DateTime")),
                    str(udh.get("ID8bit")),
                    str(udh.get("ID16bit")),
                    *(str(p.get("Text")) for p in parts),
                ]
            ).encode()
        ).hexdigest()[:32]
        if expected > len(parts):
            now = trio.current_time()
            first_seen = self._first_seen.setdefault(source, now)
            if now - first_seen < INCOMPLETE_WAIT_S:
                return None
            log.warning(
                "multipart SMS from %s still misses %d of %d parts; reported as is",
                first.get("Number"),
                expected - len(parts),
                expected,
            )
        self._first_seen.pop(source, None)
        decoded = self._gammu.DecodeSMS(parts)
        if decoded:
            body = "".join(str(e.get("Buffer") or "") for e in decoded.get("Entries", []))
        else:
            body = "".join(str(p.get("Text") or "") for p in parts)
        return InboundSms(
            sender=str(first.get("Number", "")),
            body=body,
            received_at=_utc(first.get("DateTime")),
            source_id=f"gammu:{source}",
        )

    # --- in the modem thread ---------------------------------------------------------------

    def _open(self) -> bool:
        gammu = self._gammu
        self._state.problem_code = ""
        machine = gammu.StateMachine()
        try:
            machine.ReadConfig(Section=self._config.section, Filename=str(self._config.gammurc))
            machine.Init()
        except gammu.GSMError as exc:
            self._state.problem = f"cannot open the modem: {failure_of(exc)[1]}"
            return False
        if not self._unlock(machine):
            _terminate(machine)
            return False
        with self._lock:
            self._machine = machine
        try:
            self._state.model = (
                " ".join(p for p in (machine.GetManufacturer(), machine.GetModel()[1]) if p)
                or "GSM modem"
            )
        except gammu.GSMError:
            pass
        try:  # registration and signal known before anyone is told the modem can send
            self._refresh_health()
        except gammu.GSMError as exc:
            self._close(f"cannot read the modem's state: {failure_of(exc)[1]}")
            return False
        self._state.open, self._state.problem, self._state.problem_code = True, "", ""
        log.info("modem open: %s", self._state.model)
        return True

    def _unlock(self, machine: Any) -> bool:
        """Enter the SIM PIN when asked, once: a refused PIN is never tried again."""
        try:
            needed = machine.GetSecurityStatus()
        except self._gammu.GSMError as exc:
            if type(exc).__name__ in ("ERR_NOTSUPPORTED", "ERR_NOTIMPLEMENTED"):
                return True
            self._state.problem = failure_of(exc)[1]
            return False
        if needed is None:
            return True
        self._state.problem_code = failure(_F.SIM_PIN_REQUIRED)  # until unlocked
        if needed != "Pin":
            self._state.problem = f"the SIM needs its {needed.upper()}: unlock it in a phone"
            return False
        if self._pin_refused or not self._config.pin:
            self._state.problem = (
                "the SIM PIN was refused; not retried so the SIM is not blocked: fix it and restart"
                if self._pin_refused
                else "the SIM needs its PIN: set ZIMSEND_SIM_PIN or --sim-pin"
            )
            return False
        try:
            machine.EnterSecurityCode("PIN", self._config.pin)
        except self._gammu.GSMError:
            self._pin_refused = True
            self._state.problem = "the SIM PIN was refused; not retried so the SIM is not blocked"
            log.error("the SIM PIN was refused; it will not be tried again")
            return False
        return True

    def _close(self, why: str) -> None:
        with self._lock:
            machine, self._machine = self._machine, None
        self._state.open = False
        self._state.problem, self._state.problem_code = why, ""
        if machine is not None:
            _terminate(machine)

    def _refresh_health(self) -> None:
        machine, gammu, s = self._machine, self._gammu, self._state
        if machine is None:
            return
        unsupported = (gammu.ERR_NOTSUPPORTED, gammu.ERR_NOTIMPLEMENTED)
        try:
            percent = int(machine.GetSignalQuality()["SignalPercent"])
            s.signal = None if percent < 0 else min(4, percent // 20)
        except unsupported:
            s.signal = None
        try:
            info = machine.GetNetworkInfo()
            s.network = _NETWORK.get(str(info.get("State")), "")
            s.operator = str(info.get("NetworkName") or info.get("NetworkCode") or "")
        except unsupported:
            s.network = ""
        try:
            battery = machine.GetBatteryCharge()
            percent = int(battery.get("BatteryPercent", -1))
            s.battery = percent if 0 <= percent <= 100 else None
            s.charging = battery.get("ChargeState") in (
                "BatteryCharging",
                "BatteryConnected",
                "BatteryFull",
            )
        except unsupported:
            s.battery, s.charging = None, None

    def _send_part(
        self, to: str, text: str, unicode: bool, concat: int, index: int, count: int
    ) -> int:
        machine = self._machine
        if machine is None:
            raise self._gammu.ERR_NOTCONNECTED({"Text": "modem closed", "Where": "SendSMS"})
        [sms] = self._gammu.EncodeSMS(
            {"Class": -1, "Unicode": unicode, "Entries": [{"ID": "Text", "Buffer": text}]}
        )
        if count > 1:  # 3GPP TS 23.040 concatenation, 8-bit reference (IEI 0x00)
            sms["UDH"] = {
                "Type": "ConcatenatedMessages",
                "Text": bytes([5, 0, 3, concat, count, index + 1]),
            }
        sms["SMSC"] = {"Location": 1}
        sms["Number"] = to
        sms["Type"] = "Status_Report"  # Gammu's way to ask for a status report (TP-SRR)
        return int(machine.SendSMS(sms))

    def _read_storage(self) -> list[list[dict[str, Any]]]:
        machine, gammu = self._machine, self._gammu
        found: list[list[dict[str, Any]]] = []
        if machine is None:
            return found
        location = None
        while True:
            try:
                if location is None:
                    batch = machine.GetNextSMS(Folder=0, Start=True)
                else:
                    batch = machine.GetNextSMS(Folder=0, Location=location)
            except gammu.ERR_EMPTY:
                return found
            location = batch[0]["Location"]
            if batch[0].get("InboxFolder") and batch[0]["Type"] in ("Deliver", "Status_Report"):
                found.append(batch)

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        machine = self._machine
        if machine is None:
            return
        for sms in messages:
            try:
                machine.DeleteSMS(Folder=0, Location=sms["Location"])
            except self._gammu.ERR_EMPTY:
                pass  # already gone


def _terminate(machine: Any) -> None:
    try:
        machine.Terminate()
    except Exception:  # closing a modem that vanished fails; it is closed either way
        pass


def _utc(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
