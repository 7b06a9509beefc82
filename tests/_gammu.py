"""Gammu's fake phone for the modem tests: a gammurc for the `dummy` driver, its log, and a
second state machine on the same folder to act as the network (put status reports and inbound
SMS into the "modem's" storage, as a real network does).

The dummy driver keeps everything in files under its folder; `SendSMS` writes nothing there,
but Gammu's own log (`logformat = textalldate`) records each part it encoded: the recipient,
then the part's text on the line after "… SMS, length …". That log is our record of what left
the modem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import gammu


@dataclass(frozen=True)
class DummyModem:
    folder: Path
    gammurc: Path
    log: Path

    @classmethod
    def create(cls, root: Path, *, make_folder: bool = True) -> DummyModem:
        folder, log, gammurc = root / "phone", root / "gammu.log", root / "gammurc"
        root.mkdir(parents=True, exist_ok=True)
        if make_folder:
            folder.mkdir(parents=True, exist_ok=True)
        gammurc.write_text(
            "[gammu]\nmodel = dummy\nconnection = none\n"
            f"device = {folder}\nlogfile = {log}\nlogformat = textalldate\n"
        )
        return cls(folder, gammurc, log)

    def network(self) -> Any:
        """Another Gammu state machine on the same folder: it writes what the network sends."""
        machine = gammu.StateMachine()
        machine.ReadConfig(Filename=str(self.gammurc))
        machine.Init()
        return machine

    def sent(self) -> list[tuple[str, str]]:
        """(recipient, part text) for every part Gammu's log shows as sent, in order."""
        if not self.log.exists():
            return []
        lines = [_strip_date(line) for line in self.log.read_text(errors="replace").splitlines()]
        parts, recipient = [], None
        for i, line in enumerate(lines):
            if m := re.match(r'Recipient number "(.*)"', line):
                recipient = m.group(1)
            elif re.match(r"(7 bit|Unicode|8 bit) SMS, length", line) and recipient is not None:
                parts.append((recipient, lines[i + 1] if i + 1 < len(lines) else ""))
                recipient = None
        return parts

    def storage(self) -> list[Path]:
        """The SMS files left in the fake modem's storage (all folders)."""
        return sorted(p for p in (self.folder / "sms").rglob("*") if p.is_file())

    def receive(self, sender: str, text: str, *, unicode: bool = False) -> int:
        """The network delivers an SMS (multipart when long) into the inbox; returns parts."""
        machine = self.network()
        try:
            parts = gammu.EncodeSMS(
                {
                    "Class": -1,
                    "Unicode": unicode,
                    "Entries": [{"ID": "ConcatenatedTextLong", "Buffer": text}],
                }
            )
            stamp = datetime.now()  # the centre's timestamp (TP-SCTS), Gammu's DateTime
            for part in parts:
                part.update(
                    Folder=1,
                    Number=sender,
                    Type="Deliver",
                    State="UnRead",
                    SMSC={"Number": "+33609001390"},
                    DateTime=stamp,
                )
                machine.AddSMS(part)
            return len(parts)
        finally:
            machine.Terminate()

    def status_report(self, recipient: str, reference: int, status: int = 0) -> None:
        """The network's status report for a part sent with `reference` (TP-Status)."""
        machine = self.network()
        try:
            machine.AddSMS(
                {
                    "Folder": 1,
                    "Type": "Status_Report",
                    "Number": recipient,
                    "MessageReference": reference,
                    "DeliveryStatus": status,
                    "State": "UnRead",
                    "SMSC": {"Number": "+33609001390"},
                    "Text": "Delivered" if status == 0 else "",
                    # DateTime: when the centre took the original (TP-SCTS); SMSCDateTime: when it
                    # was delivered (TP-DT, the discharge time).
                    "DateTime": datetime.now(),
                    "SMSCDateTime": datetime.now(),
                }
            )
        finally:
            machine.Terminate()


def _strip_date(line: str) -> str:
    # "Wed 2026/12/02 10:46:20: text" -> "text"
    return re.sub(r"^\w{3} \d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}: ", "", line)
