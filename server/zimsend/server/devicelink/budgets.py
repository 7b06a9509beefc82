"""Per-SIM send budgets and cool-downs, read and written in the claim's transaction.

Why in the database and not in the dispatcher's memory: a phone may reconnect to another
replica at any time, and every replica must count what the others handed it. The ledger
(`device_sends`, one row per message handed to a phone) is written by the claim that hands the
message and read by the next claim for the same phone, under the same write lock
(SQLite's `BEGIN IMMEDIATE`; on PostgreSQL the phone's claims run on the one replica that holds
its stream). A round reads its phones' rows and ledgers in two statements and writes the new
ledger rows in one; the ledger read is as many rows as the longest budgeted window holds, which
the budget itself bounds.

A budget is per SIM slot, in SMS parts (the server's `segments`), over sliding windows of
60 s, 1 h and 24 h (0: no limit in that window). A message without `sim_slot` counts against
slot 0. A message with more parts than a window allows goes only when that slot's windows are
empty (it would otherwise never go). The server's default budget applies to paced phones;
one set to send without pacing has only the budget set on it. A phone that is cooling down
(`cooling_down_until`, set when it reported a failure before sending, longer for SEND_LIMIT)
is given nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import bindparam, delete, select
from sqlmodel import Session, col

from zimsend.server.storage import Database, Device, DeviceSend
from zimsend.server.storage.claims import ClaimedMessage
from zimsend.server.storage.inserts import RowInsert
from zimsend.server.storage.shapes import padded_chunks
from zimsend.server.storage.tables import table_of

__all__ = ["WINDOWS", "Budget", "Room", "effective", "prune_ledger", "record_handed", "rooms_for"]

#: The windows a budget counts over, in the order of Budget's fields.
WINDOWS = (dt.timedelta(minutes=1), dt.timedelta(hours=1), dt.timedelta(days=1))
_LEDGER_DEPTH = WINDOWS[-1]


@dataclass(frozen=True)
class Budget:
    """Parts per 60 s, hour and 24 h for each SIM slot; 0 is no limit."""

    per_minute: int = 0
    per_hour: int = 0
    per_day: int = 0

    @property
    def limits(self) -> tuple[int, int, int]:
        return (self.per_minute, self.per_hour, self.per_day)

    def resolve(self, device: tuple[int | None, int | None, int | None]) -> Budget:
        """The device's own values where it has them (None: these defaults)."""
        own = [
            d if d is not None else default for d, default in zip(device, self.limits, strict=True)
        ]
        return Budget(*own)


@dataclass
class Room:
    """What one phone may still be handed now; `fits(slot, parts)` takes from it."""

    now: dt.datetime
    budget: Budget
    #: (slot, window index) -> [(handed_at, parts)] within that window, oldest first.
    used: dict[tuple[int, int], list[tuple[dt.datetime, int]]] = field(default_factory=dict)
    #: Until when the phone cools down (None: it does not).
    cooling_until: dt.datetime | None = None
    #: A message was refused for lack of room: the phone waits for `wait_s()`.
    limited: bool = False

    @property
    def unlimited(self) -> bool:
        """No budget and no cool-down: the claim need not ask `fits`."""
        return self.cooling_until is None and not any(self.budget.limits)

    def _sum(self, slot: int, window: int) -> int:
        return sum(p for _, p in self.used.get((slot, window), ()))

    def fits(self, slot: int, parts: int) -> bool:
        """Whether a message of `parts` parts on `slot` fits now; if so it is counted."""
        if self.cooling_until is not None:
            self.limited = True
            return False
        limits = self.budget.limits
        totals = [self._sum(slot, w) for w in range(len(WINDOWS))]
        empty = all(t == 0 for t in totals)
        for w, limit in enumerate(limits):
            if limit and totals[w] + parts > limit and not empty:
                self.limited = True
                return False
        for w, limit in enumerate(limits):
            if limit:
                self.used.setdefault((slot, w), []).append((self.now, parts))
        return True

    def wait_s(self) -> float:
        """Seconds until the phone may be offered something again: the cool-down's end, or
        when the oldest part of a full window leaves it (at least 0.05 s)."""
        if self.cooling_until is not None:
            return max(0.05, (self.cooling_until - self.now).total_seconds())
        best: float | None = None
        for (_, w), rows in self.used.items():
            limit = self.budget.limits[w]
            if limit and rows and sum(p for _, p in rows) >= limit:
                at = (rows[0][0] + WINDOWS[w] - self.now).total_seconds()
                best = at if best is None else min(best, at)
        return max(0.05, best if best is not None else 1.0)


#: Device ids per `IN (…)` (SQLite caps bound parameters; padded to a power of two).
_CHUNK = 512
_d = table_of(Device).c
#: Each phone's own budget, pacing and cool-down (built once: every dispatch round runs it).
_ROOMS = select(
    _d.id,
    _d.parts_per_minute,
    _d.parts_per_hour,
    _d.parts_per_day,
    _d.cooling_down_until,
    _d.send_interval_ms,
).where(_d.id.in_(bindparam("r_ids", expanding=True)))


def effective(
    own: tuple[int | None, int | None, int | None],
    send_interval_ms: int | None,
    defaults: Budget,
    default_interval_ms: int | None,
) -> Budget:
    """A phone's budget: its own values, else the defaults — which apply to paced phones
    only: a phone set to send without pacing (`send_interval_ms` 0, for modems and tests) has
    only the budget it was given."""
    interval = default_interval_ms if send_interval_ms is None else send_interval_ms
    return (defaults if interval != 0 else Budget()).resolve(own)


def rooms_for(
    session: Session,
    device_ids: Sequence[str],
    now: dt.datetime,
    defaults: Budget,
    default_interval_ms: int | None = None,
) -> dict[str, Room]:
    """Each phone's room now, from its row (own budget, pacing, cool-down) and its ledger: two
    reads for a whole round, whatever the number of phones. `default_interval_ms` is the
    server's pacing (None: every phone counts as paced)."""
    ids = sorted(set(device_ids))
    rooms: dict[str, Room] = {}
    for chunk in padded_chunks(ids, _CHUNK):
        rows = session.connection().execute(_ROOMS, {"r_ids": chunk})
        for device_id, minute, hour, day, cooling, interval in rows:
            budget = effective((minute, hour, day), interval, defaults, default_interval_ms)
            room = rooms[device_id] = Room(now=now, budget=budget)
            if cooling is not None and cooling > now:
                room.cooling_until = cooling
    depth = {
        d: max(
            (w for w, limit in zip(WINDOWS, r.budget.limits, strict=True) if limit), default=None
        )
        for d, r in rooms.items()
        if r.cooling_until is None
    }
    counted = sorted(d for d, longest in depth.items() if longest is not None)
    if not counted:
        return rooms
    longest = max(w for w in depth.values() if w is not None)
    for chunk in padded_chunks(counted, _CHUNK):
        ledger = session.execute(
            select(
                col(DeviceSend.device_id),
                col(DeviceSend.sim_slot),
                col(DeviceSend.handed_at),
                col(DeviceSend.parts),
            )
            .where(col(DeviceSend.device_id).in_(chunk), col(DeviceSend.handed_at) > now - longest)
            .order_by(col(DeviceSend.handed_at))
        )
        for device_id, slot, handed_at, parts in ledger:
            room = rooms[device_id]
            for w, (window, limit) in enumerate(zip(WINDOWS, room.budget.limits, strict=True)):
                if limit and handed_at > now - window:
                    room.used.setdefault((slot, w), []).append((handed_at, parts))
    return rooms


def record_handed(
    session: Session, handed: Sequence[tuple[str, Sequence[ClaimedMessage]]], now: dt.datetime
) -> None:
    """Write the round's claimed messages into their phones' ledgers (one insert) and forget
    those phones' rows older than 24 h (one delete). Both statements are built once: built
    per round they were a fifth of a small round's CPU."""
    rows = [
        (device_id, m.sim_slot or 0, now, max(1, m.segments), m.id)
        for device_id, messages in handed
        for m in messages
    ]
    if not rows:
        return
    connection = session.connection()
    before = now - _LEDGER_DEPTH
    for chunk in padded_chunks(sorted({device_id for device_id, _ in handed}), _CHUNK):
        connection.execute(_FORGET, {"f_ids": chunk, "f_before": before})
    _INSERT_HANDED.execute(connection, rows)


_LEDGER = table_of(DeviceSend)
_INSERT_HANDED = RowInsert(_LEDGER, ("device_id", "sim_slot", "handed_at", "parts", "message_id"))
_FORGET = delete(_LEDGER).where(
    _LEDGER.c.device_id.in_(bindparam("f_ids", expanding=True)),
    _LEDGER.c.handed_at < bindparam("f_before"),
)


def prune_ledger(db: Database, now: dt.datetime) -> int:
    """Delete ledger rows older than the longest window, for every phone (the claims prune
    only the phones they serve; a deleted or silent phone's rows would stay). The worker runs
    it with retention."""
    table = table_of(DeviceSend)
    with db.write() as session:
        done = session.execute(delete(table).where(table.c.handed_at < now - _LEDGER_DEPTH))
        return int(done.rowcount or 0)  # type: ignore[attr-defined]  # CursorResult's
