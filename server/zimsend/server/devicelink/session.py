"""One phone's open stream, as the hub and the dispatcher see it.

Why a queue between the server and the stream: the hub, the dispatcher and the management
RPCs push frames from many tasks, while grpc.aio allows one writer per call. `push()` never
blocks; the stream's writer task drains the queue in order. `close()` is how anyone ends a
stream: with a final Reconnect frame (the phone is told why) or without (the phone is gone),
and with a deadline after which the call ends even if the phone stopped reading.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field

from zimsend.server.devicelink.connections import DeviceConfig
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["CommandRecord", "DeviceSession"]

#: How long a stream told to reconnect may take to drain before its call ends anyway.
CLOSE_GRACE_S = 2.0
#: At most one ReportAck frame per phone this often; reports stored meanwhile wait for it.
ACK_INTERVAL_S = 0.1


@dataclass(frozen=True)
class CommandRecord:
    """A command pushed to the phone and not yet acknowledged."""

    kind: str  # "send" or "cancel"
    message_id: str


@dataclass(eq=False)
class DeviceSession:
    """State of one connected stream. Lives in the event loop thread only."""

    device_id: str
    client_id: str
    connection_id: str
    name: str
    config: DeviceConfig
    ip_address: str | None = None
    #: Dispatcher state: messages `processing` on this phone without a sent/failed report yet.
    in_flight: set[str] = field(default_factory=set)
    #: Earliest monotonic time the next message may be pushed (pacing).
    next_send_at: float = 0.0
    #: Earliest monotonic time its send budget or cool-down may allow more (the claim checks
    #: both in the database; this only spares rounds that would find nothing). A settings
    #: change clears it.
    held_until: float = 0.0
    #: UTC day and number of messages handed to this phone that day (daily cap).
    sent_day: dt.date | None = None
    sent_on_day: int = 0
    #: Why the phone cannot send, from its latest heartbeat frame ("" while it can): set at once
    #: when the frame arrives (not at the heartbeat flush), so the next round gives it nothing.
    cannot_send_reason: str = ""
    #: Where the dispatcher keeps this phone between rounds (`dispatcher.Readiness`): "new",
    #: "ready", "paced", "idle", "blocked" or "claiming"; and the sequence number of its current
    #: place, so the entries it left behind in the dispatcher's heaps are recognised as stale.
    dispatch_place: str = "new"
    dispatch_seq: int = 0
    commands: dict[str, CommandRecord] = field(default_factory=dict)
    last_frame: float = field(default_factory=time.monotonic)
    ready: bool = False  # Welcome sent: commands may follow
    closed: bool = False
    detached: bool = False  # the hub has forgotten it (and recorded the disconnect)
    disconnect_reason: str = "CONNECTION_LOST"
    disconnect_detail: str | None = None
    task: asyncio.Task[object] | None = None
    #: Stored reports not yet acknowledged, the monotonic time of the last ReportAck, and the
    #: timer that sends the next one (`ack_reports`).
    _acks: list[str] = field(default_factory=list)
    _acked_at: float = float("-inf")
    _ack_timer: asyncio.TimerHandle | None = None
    #: Set when the stream must end now (the handler returns, whatever the writer is doing).
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _queue: asyncio.Queue[pb.ServerFrame | None] = field(default_factory=asyncio.Queue)

    def touch(self) -> None:
        """Any frame from the phone proves it is alive (the watchdog reads this)."""
        self.last_frame = time.monotonic()

    def push(self, frame: pb.ServerFrame) -> bool:
        """Queue a frame for the phone; False when the stream is closing."""
        if self.closed:
            return False
        self._queue.put_nowait(frame)
        return True

    def ack_reports(self, report_ids: list[str]) -> None:
        """Acknowledge stored reports. At once when no ReportAck went to this phone in the last
        `ACK_INTERVAL_S`, else with the next one, `ACK_INTERVAL_S` after it: the protocol allows
        any batching, and each frame is a write on the stream — one per report batch was ~2
        writes per message end to end (`zimsend bench`), each dearer than the ids it carries."""
        if self.closed:
            return
        self._acks.extend(report_ids)
        if self._ack_timer is not None:
            return  # they go with the frame already scheduled
        wait = self._acked_at + ACK_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._send_acks()
        else:
            self._ack_timer = asyncio.get_running_loop().call_later(wait, self._send_acks)

    def _send_acks(self) -> None:
        self._ack_timer = None
        if self._acks and not self.closed:
            ids, self._acks = self._acks, []
            self._acked_at = time.monotonic()
            self._queue.put_nowait(pb.ServerFrame(report_ack=pb.ReportAck(report_ids=ids)))

    async def next_frame(self) -> pb.ServerFrame | None:
        """The writer's side: the next frame, or None when the stream must end."""
        return await self._queue.get()

    def close(
        self,
        *,
        reconnect: pb.Reconnect.Reason.ValueType | None = None,
        retry_after_ms: int = 0,
        disconnect_reason: str = "CONNECTION_LOST",
        detail: str | None = None,
        grace: float = CLOSE_GRACE_S,
    ) -> None:
        """End the stream. With `reconnect`, a Reconnect frame goes out first and the call is
        ended anyway if the phone has not read it within `grace`; without, it ends at once.
        `disconnect_reason` is what `device.disconnected` will say (if this connection is still
        the device's current one when it ends). The Reconnect carries the reason twice: as
        `reason_code` and, for agents older than that field, as its name in `reason`."""
        if self.closed:
            return
        if reconnect is not None:
            self._send_acks()  # what was stored goes out before the Reconnect
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self.closed = True
        self.disconnect_reason, self.disconnect_detail = disconnect_reason, detail
        if reconnect is not None:
            frame = pb.ServerFrame(
                reconnect=pb.Reconnect(
                    reason_code=reconnect,
                    reason=pb.Reconnect.Reason.Name(reconnect),
                    retry_after_ms=retry_after_ms,
                )
            )
            self._queue.put_nowait(frame)
            self._queue.put_nowait(None)
            asyncio.get_running_loop().call_later(grace, self.ended.set)
        else:
            self._queue.put_nowait(None)
            self.ended.set()

    # --- dispatcher helpers ------------------------------------------------------------------

    @property
    def free_at(self) -> float:
        """When the dispatcher may next claim for it: pacing, budget and cool-down."""
        return max(self.next_send_at, self.held_until)

    def interval_ms(self, default_ms: int) -> int:
        value = self.config.send_interval_ms
        return default_ms if value is None else value

    def cap_left(self, today: dt.date) -> int | None:
        """Messages this phone may still take today; None when there is no cap."""
        cap = self.config.daily_cap
        if not cap:
            return None
        used = self.sent_on_day if self.sent_day == today else 0
        return max(0, cap - used)

    def settings_frame(self, default_ms: int, heartbeat_s: int) -> pb.DeviceSettings:
        return pb.DeviceSettings(
            send_interval_ms=self.interval_ms(default_ms),
            daily_cap=self.config.daily_cap or 0,
            heartbeat_interval_seconds=heartbeat_s,
            enabled=self.config.enabled,
        )
