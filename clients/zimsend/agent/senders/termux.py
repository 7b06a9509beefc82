"""An Android phone running the agent itself, in Termux (`--backend termux`).

Everything goes through the Termux:API add-on's commands, run as subprocesses (no shell):

- `termux-sms-send -n NUMBER [-s SLOT]`, the text on **stdin**: the script would `echo "$@"`
  text given as arguments (dash's echo rewrites backslashes; a text starting with `-` is read
  as an option, `-h…` prints the usage and sends nothing), and arguments show in `ps`.
  Android splits a long text itself (`divideMessage` + `sendMultipartTextMessage`): one call
  sends all parts, so all parts share its outcome. Termux:API passes no sent/delivery intents:
  exit 0 means "Android took it", never "the network took it" — no delivery reports, ever.
- `termux-sms-list -t inbox -l N -o OFFSET` (JSON, newest N by date, printed oldest first),
  polled every few seconds. Each SMS is reported once as source id `termux:<_id>`; the
  highest id journaled is the high-water mark, so a restart reports what arrived while the
  agent was down and nothing twice. A first start (no mark) reports nothing old.
- `termux-battery-status` and `termux-telephony-deviceinfo` (JSON) for health;
  `termux-telephony-cellinfo` for signal bars when Android lets Termux:API read it.

Termux:API answers a missing permission with `{"error": "Please grant …"}` and exit 0, and
opens a permission dialog on the phone each time: polling backs off after one.

Cancellation: every command runs under a timeout and is killed when cancelled; `send()` is
shielded by the agent, so a shutdown waits at most for the send timeout.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from zimsend.agent.senders.base import (
    Capabilities,
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
from zimsend.v1 import failures_pb2

__all__ = ["TermuxApiError", "TermuxSender"]

log = logging.getLogger("zimsend.agent")

SOURCE_PREFIX = "termux:"
#: termux-sms-send reports no reason (Android's result code stays inside Termux:API), so a
#: failed call is ambiguous: DEVICE_ERROR, never re-sent elsewhere.
_DEVICE_ERROR = failure(failures_pb2.DEVICE_ERROR)
#: The commands this backend cannot work without.
REQUIRED_COMMANDS = ("termux-sms-send", "termux-sms-list", "termux-telephony-deviceinfo")
INSTALL_HINT = "install the Termux:API app (from F-Droid, like Termux) and `pkg install termux-api`"

#: Seconds before asking again after Termux:API refused for a missing permission: each
#: refused call opens Android's permission dialog on the phone.
PERMISSION_RETRY_S = 60.0

#: SIM states (TelephonyManager.getSimState, as Termux:API prints them) in which nothing sends.
#: Numbers are the states Termux:API prints without a name (Android 8+).
SIM_PROBLEMS = {
    "absent": "no SIM card in the phone",
    "pin_required": "the SIM is locked: enter its PIN on the phone",
    "puk_required": "the SIM is blocked: enter its PUK on the phone",
    "network_locked": "the SIM is locked to another network (network_locked)",
    "6": "the SIM is not ready yet",
    "7": "the SIM is permanently disabled",
    "8": "the SIM card cannot be read (card I/O error)",
    "9": "the SIM card is restricted by the carrier",
}
#: The before-send FailureCode held commands are given back with, per SIM state (executor.py);
#: the other states fall back to the network's (health.give_back_code).
SIM_CODES = {
    "absent": "SIM_MISSING",
    "pin_required": "SIM_PIN_REQUIRED",
    "puk_required": "SIM_PIN_REQUIRED",
}


class TermuxApiError(Exception):
    """A Termux:API command that did not do its job. `code` is the SPEC §7 code a send
    reports for it; the message keeps the raw error (never the SMS text)."""

    def __init__(self, message: str, code: str = _DEVICE_ERROR, *, permission: bool = False):
        super().__init__(message)
        self.code = code
        self.permission = permission


@dataclass(frozen=True)
class TermuxTimeouts:
    """Seconds each kind of command may take; a Termux:API app that is missing or frozen
    leaves the command hanging, so every call has one."""

    send: float = 30.0
    query: float = 10.0


class TermuxSender:
    """The `Sender` of the Android phone this agent runs on (see the module docstring)."""

    def __init__(
        self,
        *,
        sim_slot: int | None = None,
        poll_interval: float = 5.0,
        health_interval: float = 15.0,
        page_size: int = 50,
        timeouts: TermuxTimeouts | None = None,
    ) -> None:
        self.sim_slot = sim_slot
        self.poll_interval = poll_interval
        self.health_interval = health_interval
        self.page_size = page_size
        self.timeouts = timeouts or TermuxTimeouts()
        self._model, self._android = _android_properties()
        self._device_info: dict[str, Any] = _device_info_now()
        self._health: Health | None = None
        self._health_due = float("-inf")
        self._permission_refused = False
        self._health_lock = trio.Lock()
        self._cellinfo_allowed = True
        self._last_poll_problem = ""

    # --- describe / health --------------------------------------------------------------------

    def describe(self) -> DeviceInfo:
        """The SIM slots from the latest device info (read once when the sender is made, then
        at each health check): the agent refuses a message for a slot the phone lacks, which
        Termux:API would silently not send. None listed when Termux:API could not say."""
        info = self._device_info
        count = info.get("phone_count")
        sims: tuple[SimInfo, ...] = ()
        if isinstance(count, int) and count > 0:
            carrier = str(info.get("sim_operator_name") or "")
            sims = tuple(SimInfo(slot=i, carrier=carrier if i == 0 else "") for i in range(count))
        return DeviceInfo(
            model=self._model,
            android_version=self._android,
            sims=sims,
            capabilities=Capabilities(backend="termux", delivery_reports=False, inbound_sms=True),
        )

    async def health(self) -> Health:
        """Battery, network, SIM and signal, read at most every `health_interval` while all
        is well (each read starts three Termux:API commands), at every call while the phone
        cannot send, and once a minute while a permission is refused."""
        async with self._health_lock:
            if self._health is None or trio.current_time() >= self._health_due:
                self._health = await self._read_health()
                ttl = self.health_interval if self._health.can_send else 0.0
                if self._permission_refused:
                    ttl = PERMISSION_RETRY_S  # each refused call opens a dialog on the phone
                self._health_due = trio.current_time() + ttl
            return self._health

    async def _read_health(self) -> Health:
        missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
        if missing:
            return Health(
                None,
                None,
                None,
                can_send=False,
                problem=f"Termux:API is missing ({missing[0]} not found): {INSTALL_HINT}",
            )
        results: dict[str, Any] = {}

        async def read(name: str) -> None:
            try:
                results[name] = json.loads(await self._call(name, timeout=self.timeouts.query))
            except (TermuxApiError, ValueError) as exc:
                results[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "termux-telephony-deviceinfo")
            if shutil.which("termux-battery-status"):
                nursery.start_soon(read, "termux-battery-status")
            if self._cellinfo_allowed and shutil.which("termux-telephony-cellinfo"):
                nursery.start_soon(read, "termux-telephony-cellinfo")

        battery, charging = _battery(results.get("termux-battery-status"))
        signal = self._signal(results.get("termux-telephony-cellinfo"))
        info = results["termux-telephony-deviceinfo"]
        self._permission_refused = isinstance(info, TermuxApiError) and info.permission
        if isinstance(info, Exception) or not isinstance(info, dict):
            problem = str(info) if isinstance(info, Exception) else "unexpected device info"
            return Health(battery, charging, signal, can_send=False, problem=problem)
        self._device_info = info
        network, problem = _network_and_problem(info)
        count = info.get("phone_count")
        if (
            not problem
            and self.sim_slot is not None
            and isinstance(count, int)
            and not 0 <= self.sim_slot < count
        ):
            problem = (
                f"SIM slot {self.sim_slot} does not exist: this phone has {count}"
                " (--sim-slot counts from 0)"
            )
        return Health(
            battery,
            charging,
            signal,
            network=network,
            can_send=not problem,
            problem=problem,
            failure_code=SIM_CODES.get(str(info.get("sim_state") or ""), ""),
        )

    def _signal(self, cells: Any) -> int | None:
        """Bars (0-4, Android's level) of the cell the phone is registered on; None when
        Termux:API may not read cells. A permission refusal stops asking (each request opens
        a dialog on the phone)."""
        if isinstance(cells, TermuxApiError):
            if cells.permission:
                self._cellinfo_allowed = False
                log.info("signal unknown: %s", cells)
            return None
        if not isinstance(cells, list):
            return None
        levels = [
            c["level"]
            for c in cells
            if isinstance(c, dict)
            and c.get("registered")
            and isinstance(c.get("level"), int)
            and 0 <= c["level"] <= 4
        ]
        return max(levels) if levels else None

    # --- send -----------------------------------------------------------------------------------

    async def send(self, request: SendRequest) -> SendResult:
        """Hand the whole text to Android in one call; every part gets its outcome."""
        at = datetime.now(UTC)
        slot = request.sim_slot if request.sim_slot is not None else self.sim_slot
        args = ["-n", request.to]
        if slot is not None:
            args += ["-s", str(slot)]
        try:
            if not request.to or "," in request.to:  # a comma would mean several recipients
                raise TermuxApiError(
                    f"not a single phone number: {request.to!r}",
                    failure(failures_pb2.INVALID_NUMBER),
                )
            await self._call(
                "termux-sms-send", *args, stdin=request.body.encode(), timeout=self.timeouts.send
            )
        except TermuxApiError as exc:
            log.warning("message %s not sent: %s", request.message_id, exc)
            part = PartResult(False, exc.code, str(exc))
        else:
            part = PartResult(True)
        return SendResult(tuple(part for _ in request.parts), at)

    # --- inbound ----------------------------------------------------------------------------------

    async def run(self, recorder: Recorder) -> None:
        """Poll the inbox until cancelled (see the module docstring for the mark)."""
        mark = _mark_of(recorder.latest_inbound(SOURCE_PREFIX))
        while True:
            delay = self.poll_interval
            try:
                mark = await self.poll_inbox(recorder, mark)
                self._last_poll_problem = ""
            except TermuxApiError as exc:
                if str(exc) != self._last_poll_problem:  # say it once, not every 5 s
                    log.warning("cannot read the SMS inbox: %s", exc)
                    self._last_poll_problem = str(exc)
                if exc.permission:
                    delay = max(delay, PERMISSION_RETRY_S)  # each refusal opens a dialog
            await trio.sleep(delay)

    async def poll_inbox(self, recorder: Recorder, mark: int | None) -> int:
        """Record every inbox SMS above `mark`, oldest first; returns the new mark.

        Pages back from the newest until a page holds nothing above the mark, so a backlog
        of any size (the agent was down) is read in full. Without a mark (first start) the
        newest SMS becomes the mark, unreported, and so does `termux:0` for an empty inbox:
        the old inbox is not the gateway's to report."""
        if mark is None:
            newest = await self._inbox_page(limit=self.page_size, offset=0)  # by date
            baseline = max((_id for _id, _ in newest), default=0)
            recorder.mark_inbound_seen(f"{SOURCE_PREFIX}{baseline}")
            log.info("inbox baseline: SMS up to id %d are not reported", baseline)
            return baseline
        fresh: dict[int, dict[str, Any]] = {}
        offset = 0
        while True:
            page = await self._inbox_page(limit=self.page_size, offset=offset)
            above = {_id: sms for _id, sms in page if _id > mark}
            fresh.update(above)
            if not above or len(page) < self.page_size:
                break
            offset += self.page_size
        for _id in sorted(fresh):
            sms = fresh[_id]
            recorder.inbound(
                InboundSms(
                    sender=str(sms.get("address") or sms.get("number") or ""),
                    body=str(sms.get("body") or ""),
                    sim_slot=self.sim_slot or 0,
                    received_at=_received_at(sms.get("received")),
                    source_id=f"{SOURCE_PREFIX}{_id}",
                )
            )
            mark = max(mark, _id)
        return mark

    async def _inbox_page(self, *, limit: int, offset: int) -> list[tuple[int, dict[str, Any]]]:
        out = await self._call(
            "termux-sms-list",
            "-t",
            "inbox",
            "-l",
            str(limit),
            "-o",
            str(offset),
            timeout=self.timeouts.query,
        )
        try:
            messages = json.loads(out)
        except ValueError as exc:
            raise TermuxApiError(f"termux-sms-list printed no JSON: {out[:200]!r}") from exc
        if not isinstance(messages, list):
            raise TermuxApiError(f"termux-sms-list printed {type(messages).__name__}, not a list")
        page = []
        for sms in messages:
            if not isinstance(sms, dict) or not isinstance(sms.get("_id"), int):
                raise TermuxApiError(
                    "termux-sms-list gives no _id: update the Termux:API app (0.50 or later)"
                )
            if sms.get("type", "inbox") == "inbox":
                page.append((sms["_id"], sms))
        return page

    # --- running Termux:API commands ------------------------------------------------------------

    async def _call(self, command: str, *args: str, stdin: bytes = b"", timeout: float) -> str:  # noqa: ASYNC109 - the deadline is part of this call's contract
        """Run one Termux:API command; its stdout, or TermuxApiError saying what went wrong
        (not installed, no answer in time, a non-zero exit, a JSON `error`)."""
        path = shutil.which(command)
        if path is None:
            raise TermuxApiError(f"{command} not found: {INSTALL_HINT}")
        proc: subprocess.CompletedProcess[bytes] | None = None
        with trio.move_on_after(timeout):
            try:
                proc = await trio.run_process(
                    [path, *args],
                    stdin=stdin,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            except OSError as exc:
                raise TermuxApiError(f"{command} could not run: {exc}") from exc
        if proc is None:
            raise TermuxApiError(
                f"{command} did not answer within {timeout:g}s: is the Termux:API app installed"
                " and allowed to run in the background?",
                failure(failures_pb2.TIMEOUT),
            )
        out = proc.stdout.decode("utf-8", "replace")
        if proc.returncode != 0:
            said = (proc.stderr.decode("utf-8", "replace").strip() or out.strip())[:500]
            raise TermuxApiError(f"{command} exited with {proc.returncode}: {said}")
        error = _json_error(out)
        if error:
            raise TermuxApiError(f"{command}: {error}", permission="permission" in error.lower())
        return out


def _json_error(out: str) -> str:
    """The `error` of Termux:API's `{"error": "…"}` answer (permissions, bad arguments)."""
    if not out.lstrip().startswith("{"):
        return ""
    try:
        value = json.loads(out)
    except ValueError:
        return ""
    return str(value["error"]) if isinstance(value, dict) and value.get("error") else ""


def _battery(status: Any) -> tuple[int | None, bool | None]:
    """Percent and "on power" from termux-battery-status (`percentage`, `plugged`; `status`
    when `plugged` is absent)."""
    if not isinstance(status, dict):
        return None, None
    percent = status.get("percentage")
    plugged = status.get("plugged")
    if isinstance(plugged, str):
        charging: bool | None = plugged != "UNPLUGGED"
    elif isinstance(status.get("status"), str):
        charging = status["status"] in ("CHARGING", "FULL")
    else:
        charging = None
    return (percent if isinstance(percent, int) else None), charging


def _network_and_problem(info: dict[str, Any]) -> tuple[str, str]:
    """Registration (NETWORK_STATES) and why nothing can be sent ("" when it can), from
    termux-telephony-deviceinfo. It describes the default SIM only."""
    sim_state = str(info.get("sim_state") or "")
    if sim_state in SIM_PROBLEMS:
        return "", SIM_PROBLEMS[sim_state]
    if info.get("phone_type") == "cdma":
        return "", ""  # getNetworkOperator is unreliable on CDMA: do not judge
    if not info.get("network_operator"):
        return "not_registered", "no mobile network (no coverage, airplane mode, or SIM starting)"
    return ("roaming" if info.get("network_roaming") is True else "home"), ""


def _mark_of(source_id: str | None) -> int | None:
    if source_id is None:
        return None
    try:
        return int(source_id.removeprefix(SOURCE_PREFIX))
    except ValueError:
        return None


def _received_at(text: Any) -> datetime | None:
    """termux-sms-list's `received` ("yyyy-MM-dd HH:mm:ss", the phone's local time; the agent
    runs on that phone, so its local zone is the right one)."""
    try:
        return datetime.strptime(str(text), "%Y-%m-%d %H:%M:%S").astimezone(UTC)
    except ValueError:
        return None


def _device_info_now() -> dict[str, Any]:
    """termux-telephony-deviceinfo once, synchronously, when the sender is made (before trio
    starts): the first DeviceHello then lists the SIM slots. {} when it cannot say yet."""
    path = shutil.which("termux-telephony-deviceinfo")
    if path is None:
        return {}
    try:
        done = subprocess.run([path], capture_output=True, timeout=5, check=False)
        info = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return info if isinstance(info, dict) and "error" not in info else {}


def _android_properties() -> tuple[str, str]:
    """Model and Android version from `getprop` (sync: runs once, before trio starts)."""
    values = []
    for name in ("ro.product.model", "ro.build.version.release"):
        try:
            done = subprocess.run(["getprop", name], capture_output=True, timeout=5, check=False)
            values.append(done.stdout.decode("utf-8", "replace").strip())
        except (OSError, subprocess.SubprocessError):
            values.append("")
    model, version = values
    return model or "Android phone (Termux)", f"Android {version}" if version else "Android"
