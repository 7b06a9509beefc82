"""Stand-ins for Termux:API's commands, for the termux backend's tests (test_agent_termux.py).

`TermuxApiStandIn(dir).install()` writes small Python executables named `termux-sms-send`,
`termux-sms-list`, `termux-battery-status`, `termux-telephony-deviceinfo` and
`termux-telephony-cellinfo` into `dir/bin`; put that first on PATH. They behave as the real
ones do (termux-api-package scripts + the Termux:API app's Java side, read for this):

- `termux-sms-send -n NUMBERS [-s SLOT] [TEXT…]`: text from the arguments (`echo "$@"`, so a
  trailing newline) or else stdin, trimmed (the app's `WithStringInput`); prints nothing and
  exits 0 once Android took it; a slot with no SIM sends nothing and still exits 0; a missing
  permission prints `{"error": "Please grant …"}` and exits 0. Android persists the sent
  message in the same SMS table as the inbox, so sends take `_id`s too.
- `termux-sms-list [-t TYPE] [-l LIMIT] [-o OFFSET]`: the newest LIMIT by date after OFFSET,
  printed oldest first, with the app's keys (`threadid`, `type`, `read`, `address`, `number`,
  `received` as "yyyy-MM-dd HH:mm:ss", `body`, `_id`).
- battery, device info and cell info: the app's JSON keys.

State lives in `dir/state.json` (a lock file guards it: the test and the agent's commands use
it at once); every send is appended to `dir/sent.jsonl`.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

COMMANDS = (
    "termux-sms-send",
    "termux-sms-list",
    "termux-battery-status",
    "termux-telephony-deviceinfo",
    "termux-telephony-cellinfo",
)

DEFAULT_STATE: dict[str, Any] = {
    "sms": [],  # the phone's SMS table: {"_id", "type", "address", "body", "date"}
    "next_id": 1,
    "clock": 0,  # seconds: now, and every stored SMS at least one second after the last
    "denied": [],  # commands answered with Termux:API's permission error
    "send_failure": None,  # {"exit": N, "stderr": "..."} or {"hang": true}
    "active_slots": [0],
    "battery": {
        "present": True,
        "technology": "Li-ion",
        "health": "GOOD",
        "plugged": "PLUGGED_AC",
        "status": "CHARGING",
        "temperature": 29.5,
        "voltage": 4211,
        "current": 512000,
        "percentage": 87,
        "level": 87,
        "scale": 100,
    },
    "deviceinfo": {
        "data_enabled": "true",
        "data_activity": "none",
        "data_state": "connected",
        "device_id": None,
        "device_software_version": "01",
        "phone_count": 2,
        "phone_type": "gsm",
        "network_operator": "64804",
        "network_operator_name": "Econet",
        "network_country_iso": "zw",
        "network_type": "lte",
        "network_roaming": False,
        "sim_country_iso": "zw",
        "sim_operator": "64804",
        "sim_operator_name": "Econet",
        "sim_serial_number": None,
        "sim_subscriber_id": None,
        "sim_state": "ready",
    },
    "cellinfo": [
        {
            "type": "lte",
            "registered": True,
            "asu": 40,
            "dbm": -100,
            "level": 3,
            "ci": 1234,
            "pci": 77,
            "tac": 11,
            "mcc": 648,
            "mnc": 4,
        },
        {"type": "lte", "registered": False, "asu": 20, "dbm": -120, "level": 1},
    ],
}

PERMISSIONS = {
    "termux-sms-send": "android.permission.READ_PHONE_STATE ,android.permission.SEND_SMS",
    "termux-sms-list": "android.permission.READ_SMS ,android.permission.READ_CONTACTS",
    "termux-telephony-deviceinfo": "android.permission.READ_PHONE_STATE",
    "termux-telephony-cellinfo": "android.permission.ACCESS_COARSE_LOCATION",
}


class TermuxApiStandIn:
    """The test's side: arrange the phone, read what was sent."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.bin = directory / "bin"

    def install(self, commands: tuple[str, ...] = COMMANDS) -> TermuxApiStandIn:
        self.bin.mkdir(parents=True, exist_ok=True)
        here = Path(__file__).resolve().parent
        for name in commands:
            path = self.bin / name
            path.write_text(
                f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(here)!r})\n"
                f"import _termux_api\n_termux_api.main({name!r}, {str(self.dir)!r})\n"
            )
            path.chmod(0o755)
        if not (self.dir / "state.json").exists():
            self._write(json.loads(json.dumps(DEFAULT_STATE)))
        return self

    def path_env(self, base: str | None = None) -> str:
        """PATH with the stand-ins first."""
        return f"{self.bin}{os.pathsep}{base if base is not None else os.environ['PATH']}"

    def receive(self, sender: str, body: str) -> int:
        """An SMS arrives on the phone; returns its `_id`."""
        with _locked(self.dir) as state:
            return _store(state, "inbox", sender, body)

    def sent(self) -> list[dict[str, Any]]:
        path = self.dir / "sent.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def calls(self, command: str) -> list[list[str]]:
        path = self.dir / "calls.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        return [line["args"] for line in lines if line["command"] == command]

    def update(self, **changes: Any) -> None:
        """Replace top-level state (`battery`, `deviceinfo`, `denied`, `send_failure`, …)."""
        with _locked(self.dir) as state:
            state.update(changes)

    def update_deviceinfo(self, **fields: Any) -> None:
        with _locked(self.dir) as state:
            state["deviceinfo"].update(fields)

    def _write(self, state: dict[str, Any]) -> None:
        (self.dir / "state.json").write_text(json.dumps(state))


@contextmanager
def _locked(directory: Path) -> Iterator[dict[str, Any]]:
    with open(directory / "state.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / "state.json"
        state = json.loads(path.read_text())
        yield state
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)


def _store(state: dict[str, Any], kind: str, address: str, body: str) -> int:
    _id = state["next_id"]
    state["next_id"] += 1
    state["clock"] = max(int(time.time()), state["clock"] + 1)
    state["sms"].append(
        {
            "_id": _id,
            "type": kind,
            "address": address,
            "body": body,
            "date": state["clock"],
            "threadid": 1,
        }
    )
    return int(_id)


# --- the executables' side --------------------------------------------------------------------


def main(command: str, directory: str) -> None:
    root = Path(directory)
    args = sys.argv[1:]
    with open(root / "calls.jsonl", "a") as calls:
        calls.write(json.dumps({"command": command, "args": args}) + "\n")
    with _locked(root) as state:
        denied = command in state["denied"]
        snapshot = json.loads(json.dumps(state))
    if denied:  # TermuxApiPermissionActivity: a JSON error on stdout, exit 0
        many = "," in PERMISSIONS[command]
        print(
            json.dumps(
                {
                    "error": "Please grant the following permission"
                    + ("s" if many else "")
                    + " to use this command: "
                    + PERMISSIONS[command]
                },
                indent=2,
            )
        )
        return
    if command == "termux-sms-send":
        _sms_send(root, args, snapshot)
    elif command == "termux-sms-list":
        _sms_list(args, snapshot)
    elif command == "termux-battery-status":
        print(json.dumps(snapshot["battery"], indent=2))
    elif command == "termux-telephony-deviceinfo":
        print(json.dumps(snapshot["deviceinfo"], indent=2))
    elif command == "termux-telephony-cellinfo":
        print(json.dumps(snapshot["cellinfo"], indent=2))


def _getopts(args: list[str], spec: str) -> tuple[dict[str, str], list[str]]:
    """POSIX getopts, as the scripts parse (options stop at the first operand)."""
    options: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        if args[i] == "--":
            i += 1
            break
        letter, rest = args[i][1], args[i][2:]
        if letter not in spec:
            print(f"illegal option -{letter}")
            sys.exit(1)
        if spec[spec.index(letter) + 1 : spec.index(letter) + 2] == ":":
            if not rest:
                i += 1
                rest = args[i]
            options[letter] = rest
        else:
            options[letter] = ""
        i += 1
    return options, args[i:]


def _sms_send(root: Path, args: list[str], state: dict[str, Any]) -> None:
    options, operands = _getopts(args, "hn:s:")
    if "h" in options:
        print("Usage: termux-sms-send -n number[,number2,number3,...] [-s slot] [text]")
        return
    if "n" not in options:
        print("termux-sms-send: no recipient number given")
        sys.exit(1)
    failure = state["send_failure"]
    if failure and failure.get("hang"):
        time.sleep(3600)
    if failure:
        print(failure.get("stderr", ""), file=sys.stderr)
        sys.exit(int(failure.get("exit", 1)))
    text = (" ".join(operands) + "\n") if operands else sys.stdin.read()
    text = text.strip()  # ResultReturner.WithStringInput trims
    slot = int(options["s"]) if "s" in options else None
    if slot is not None and slot not in state["active_slots"]:
        return  # SmsSendAPI: "Sim slot N not found" goes to logcat only; exit 0
    with _locked(root) as live:
        for number in options["n"].split(","):
            _store(live, "sent", number, text)
    with open(root / "sent.jsonl", "a") as sent:
        sent.write(
            json.dumps({"recipients": options["n"].split(","), "slot": slot, "text": text}) + "\n"
        )


def _sms_list(args: list[str], state: dict[str, Any]) -> None:
    options, _ = _getopts(args, "hqvcdf:l:no:t:")
    kind = options.get("t", "all")
    limit = int(options.get("l", "10"))
    offset = int(options.get("o", "0"))
    rows = [m for m in state["sms"] if kind == "all" or m["type"] == kind]
    rows.sort(key=lambda m: m["date"], reverse=True)  # "date DESC"
    rows = rows[offset : offset + limit]
    rows.reverse()  # the app prints the latest at the end
    out = [
        {
            "threadid": m["threadid"],
            "type": m["type"],
            "read": False,
            "address": m["address"],
            "number": m["address"],
            "received": datetime.fromtimestamp(m["date"]).strftime("%Y-%m-%d %H:%M:%S"),
            "body": m["body"],
            "_id": m["_id"],
        }
        for m in rows
    ]
    print(json.dumps(out, indent=2))
