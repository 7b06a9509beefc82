"""The process-wide state every service of one server process shares (`ServerState`), and the
in-process "new work" signal (`WorkSignal`).

Database work is synchronous SQLAlchemy (one storage layer for the asyncio server and the trio
worker, DESIGN.md); `ServerState.db_call` runs it on a small thread pool so the event loop never
waits on a disk or a network round trip.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from zimsend.server.accounts.verified_keys import VerifiedKeys
from zimsend.server.config import Settings
from zimsend.server.ratelimit import ClientRateLimiter
from zimsend.server.sending.intake import Intake
from zimsend.server.storage import Database, utcnow

if TYPE_CHECKING:
    from zimsend.server.devicelink.hub import DeviceHub

P = ParamSpec("P")
T = TypeVar("T")
#: See `WorkSignal.announce`: twice the dispatcher's fallback poll interval.
ANNOUNCE_HORIZON = dt.timedelta(seconds=2)


class WorkSignal:
    """ "There is new work for client X": the SMS service notifies, the dispatcher listens.

    In-process (DESIGN "Dispatch"); on PostgreSQL the other replicas hear of the same work
    through LISTEN/NOTIFY (`storage.wakeups`, migration 0008's trigger). Callbacks must be
    quick and non-blocking.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def notify(self, client_id: str) -> None:
        for listener in self._listeners:
            listener(client_id)

    def announce(self, client_id: str, due_at: dt.datetime | None) -> None:
        """`notify` for messages just queued that are due at `due_at` (None: nothing was
        queued). Messages due later than `ANNOUNCE_HORIZON` wake nobody: the dispatcher's
        periodic scan (at least once a second) finds them and sets its timer before they
        are due. Waking it for each far-future message cost a round per request."""
        if due_at is not None and due_at - utcnow() <= ANNOUNCE_HORIZON:
            self.notify(client_id)


@dataclass
class ServerState:
    """Process-wide state handed to every service: settings, database, pepper, the executors
    and the components the services share."""

    settings: Settings
    db: Database
    pepper: bytes
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="db")
    )
    #: The device link's own lane (dispatch rounds, report batches, heartbeat flushes): with
    #: one shared pool, a burst of API calls queued hundreds of jobs ahead of them, and work
    #: already accepted stopped flowing (`zimsend bench`, overload scenario).
    link_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-link")
    )
    new_work: WorkSignal = field(default_factory=WorkSignal)
    rate_limiter: ClientRateLimiter | None = None
    #: The accept lane: every send request of this process (`sending.intake`).
    intake: Intake = field(init=False)
    #: API keys verified in the last second (`auth`).
    verified_keys: VerifiedKeys = field(default_factory=VerifiedKeys)
    #: The phones' hub, shared by DeviceService and DeviceLinkService (`DeviceHub.of`).
    device_hub: DeviceHub | None = None

    def __post_init__(self) -> None:
        self.intake = Intake(self.db, self.settings)
        if self.rate_limiter is None:
            self.rate_limiter = ClientRateLimiter(
                self.db, self.settings.rate_limit_per_minute, self.db_call
            )

    async def db_call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking database work off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def link_call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`db_call` on the device link's lane (see `link_executor`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.link_executor, functools.partial(fn, *args, **kwargs)
        )
