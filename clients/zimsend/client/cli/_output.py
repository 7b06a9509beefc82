"""How the user commands print: aligned tables for people, JSON for scripts (`--json`),
progress on stderr so that stdout stays the result."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from zimsend.timestamps import rfc3339

__all__ = ["Progress", "jsonable", "print_json", "print_record", "print_table", "when"]


def jsonable(value: Any) -> Any:
    """Dataclasses (JSON field names), datetimes (RFC 3339), enums → plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.metadata.get("json", f.name): jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def print_json(value: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(jsonable(value), ensure_ascii=False, indent=2) + "\n")


def when(value: dt.datetime | None) -> str:
    """A time for people: UTC to the second."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, dt.datetime):
        return when(value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value).replace("\n", " ")


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    empty: str = "(none)",
    out: TextIO | None = None,
) -> None:
    out = out or sys.stdout
    if not rows:
        out.write(empty + "\n")
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for line in ([h.upper() for h in headers], *cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip() + "\n")


def print_record(pairs: Sequence[tuple[str, Any]], out: TextIO | None = None) -> None:
    """One object as `label  value` lines."""
    out = out or sys.stdout
    width = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        out.write(f"{label.ljust(width)}  {_cell(value)}\n")


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per update
    otherwise (logs, CI), so it never mixes with the results on stdout."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def update(self, done: int, note: str = "") -> None:
        width = 30
        filled = width * done // self.total if self.total else width
        bar = "#" * filled + "." * (width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total}" + (f"  {note}" if note else "")
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
