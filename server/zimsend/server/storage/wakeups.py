"""Wake-ups between processes on PostgreSQL: LISTEN for what the database NOTIFYs at commit.

Several server replicas and workers share one PostgreSQL. A message accepted on replica A for a
phone held by replica B, or a webhook event written by a server for a worker, must wake that
other process now, not at its next poll. The engine does it: triggers (migration 0008) NOTIFY
`WORK_CHANNEL` (payload: the client id) when a message becomes queued and due, and
`OUTBOX_CHANNEL` when outbox events are inserted — inside the writing transaction, so the
notification is sent exactly when the rows are visible, and never for a rollback.

`Listener` holds one extra connection per process (not from the pool: a LISTENing connection
must stay open and idle) in a daemon thread, and calls the channel's callback from that thread
for each notification (callbacks must be thread-safe and quick: a trio token's
`run_sync_soon` in the worker). The asyncio server listens in its event loop instead
(`listen_in_loop`, psycopg's async connection): the notification wakes the loop directly, one
thread hand-off fewer on the way from another replica's commit to a phone. Either way, when
the connection is lost it reconnects with backoff and calls `on_reconnect` (notifications
sent while it was away are lost: the caller treats it as "maybe everything changed"). The
pollers stay as a safety net; `connected` says whether they may be slow. On SQLite nothing
listens: `Listener.for_database` returns None, `listen_in_loop` returns at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping

import psycopg
from psycopg import sql

from zimsend.server import logs

from .database import Database

__all__ = ["OUTBOX_CHANNEL", "WORK_CHANNEL", "Listener", "listen_in_loop"]

log = logs.get("zimsend.storage.wakeups")

#: Payload: a client id with a message queued and due (migration 0008).
WORK_CHANNEL = "zimsend_work"
#: Payload: empty; outbox events were inserted (migration 0008).
OUTBOX_CHANNEL = "zimsend_outbox"
#: How often the listening thread looks at `stop()` between notifications.
_TICK_S = 0.5
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 5.0


class Listener:
    """A thread LISTENing on `callbacks`' channels of `db`'s PostgreSQL (see module doc)."""

    def __init__(
        self,
        db: Database,
        callbacks: Mapping[str, Callable[[str], None]],
        *,
        on_reconnect: Callable[[], None] | None = None,
        name: str = "wakeups",
    ) -> None:
        url = db.engine.url.set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._callbacks = dict(callbacks)
        self._on_reconnect = on_reconnect
        self._stop = threading.Event()
        #: Set while LISTENing: a notification sent now will be heard.
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.heard = 0

    @classmethod
    def for_database(
        cls,
        db: Database,
        callbacks: Mapping[str, Callable[[str], None]],
        *,
        on_reconnect: Callable[[], None] | None = None,
        name: str = "wakeups",
    ) -> Listener | None:
        """A started listener on PostgreSQL; None on SQLite (one writer, in-process wake-ups)."""
        if db.dialect != "postgresql":
            return None
        listener = cls(db, callbacks, on_reconnect=on_reconnect, name=name)
        listener._thread.start()
        return listener

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * _TICK_S + 1)

    def _run(self) -> None:
        backoff = _FIRST_BACKOFF_S
        was_connected = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                    application_name="zimsend-listener",
                ) as conn:
                    for channel in self._callbacks:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.connected.set()
                    backoff = _FIRST_BACKOFF_S
                    log.info("wakeups.listening", channels=list(self._callbacks))
                    if was_connected:
                        log.info("wakeups.reconnected")
                        self._call(self._on_reconnect)
                    was_connected = True
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=_TICK_S):
                            self.heard += 1
                            callback = self._callbacks.get(notify.channel)
                            if callback is not None:
                                self._call(callback, notify.payload)
                            if self._stop.is_set():
                                break
            except psycopg.Error as exc:
                self.connected.clear()
                if self._stop.is_set():
                    return
                log.warning("wakeups.connection_lost", error=str(exc), retry_in_s=backoff)
                self._stop.wait(backoff)
                backoff = min(_MAX_BACKOFF_S, backoff * 2)
        self.connected.clear()

    @staticmethod
    def _call(callback: Callable[..., None] | None, *args: str) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:  # a listener outlives any one callback
            logs.failure(log, "wakeups.callback_failed", exc)


async def listen_in_loop(
    db: Database,
    callbacks: Mapping[str, Callable[[str], None]],
    *,
    on_reconnect: Callable[[], None] | None = None,
) -> None:
    """`Listener`'s loop as an asyncio task (cancel it to stop): callbacks run in the event
    loop. Returns at once on SQLite.

    It skips the notifications `db`'s own connections sent (libpq names the notifying
    backend; `Database.backend_pids`): the server wakes its dispatcher in-process when it
    queues work, so hearing its own commit again only cost a second round. The worker's
    `Listener` hears everything: its own sweeps' events reach it only that way."""
    if db.dialect != "postgresql":
        return
    own = db.backend_pids
    conninfo = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    backoff = _FIRST_BACKOFF_S
    was_connected = False
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo,
                autocommit=True,
                connect_timeout=5,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                application_name="zimsend-listener",
            ) as conn:
                for channel in callbacks:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                backoff = _FIRST_BACKOFF_S
                log.info("wakeups.listening", channels=list(callbacks))
                if was_connected:
                    log.info("wakeups.reconnected")
                    Listener._call(on_reconnect)
                was_connected = True
                async for notify in conn.notifies():
                    if notify.pid in own:
                        continue
                    callback = callbacks.get(notify.channel)
                    if callback is not None:
                        Listener._call(callback, notify.payload)
        except psycopg.Error as exc:
            log.warning("wakeups.connection_lost", error=str(exc), retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(_MAX_BACKOFF_S, backoff * 2)
