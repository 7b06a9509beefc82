"""The phone's health, watched: what the sender last said about battery, signal, network and
whether it can send at all.

Why a watcher instead of asking at each heartbeat: the executor must not hand a message to a
sender that cannot send (a modem unplugged, a SIM locked), and the server must learn at once
that the phone cannot send, not at the next heartbeat half a minute later. So the sender's
`health()` is polled every few seconds; a change of `can_send`, `problem` or `network` wakes
whoever waits (`changed()`): the executor re-checks, the session sends a Heartbeat now.

A phone that stays unable to send gives back what it holds: `unable_since` tells the executor
how long the gate has been closed, `give_back_code` which before-send FailureCode says why.

Cancellation: `run` is a plain loop; cancelling it only stops the polling.
"""

from __future__ import annotations

import logging

import trio

from zimsend.agent.senders.base import BEFORE_SEND_CODES, Health, Sender, failure
from zimsend.v1 import failures_pb2

__all__ = ["HealthWatch", "give_back_code"]

log = logging.getLogger("zimsend.agent")

POLL_INTERVAL_S = 5.0


class HealthWatch:
    """The latest `Health` of one sender, and a wake-up when what matters changes."""

    def __init__(self, sender: Sender, *, interval: float = POLL_INTERVAL_S) -> None:
        self._sender = sender
        self._interval = interval
        self.latest: Health | None = None
        #: trio time at which the sender last went from "can send" (or unknown) to "cannot";
        #: None while it can send or before its first answer.
        self.unable_since: float | None = None
        self._changed = trio.Event()

    @property
    def can_send(self) -> bool:
        """False until the first answer, and while the sender says it cannot send."""
        return self.latest is not None and self.latest.can_send

    async def changed(self) -> None:
        """Wait until `can_send`, `problem` or `network` changes."""
        await self._changed.wait()

    async def run(self) -> None:
        while True:
            await self.refresh()
            await trio.sleep(self._interval)

    async def refresh(self) -> Health:
        """Ask the sender now (a sender error counts as "cannot send", with its reason)."""
        try:
            health = await self._sender.health()
        except Exception as exc:  # a backend bug must not stop the agent
            log.exception("sender health failed")
            health = Health(
                None,
                None,
                None,
                can_send=False,
                problem=f"health check failed: {type(exc).__name__}",
            )
        old, self.latest = self.latest, health
        if health.can_send:
            self.unable_since = None
        elif self.unable_since is None:
            self.unable_since = trio.current_time()
        if old is None or (old.can_send, old.problem, old.network) != (
            health.can_send,
            health.problem,
            health.network,
        ):
            if not health.can_send:
                log.warning("cannot send: %s", health.problem or "no reason given")
            elif old is not None:
                log.info("can send again")
            self._changed.set()
            self._changed = trio.Event()
        return health


def give_back_code(health: Health) -> str:
    """The before-send FailureCode for commands given back while `health` says the phone
    cannot send: the sender's own (SIM_MISSING, SIM_PIN_REQUIRED…), else NO_SERVICE when the
    phone is not registered on a network, else MODEM_REFUSED (the sender refuses for a reason
    it did not name; still nothing reached the radio)."""
    if health.failure_code in BEFORE_SEND_CODES:
        return health.failure_code
    if health.network in ("searching", "denied", "not_registered"):
        return failure(failures_pb2.NO_SERVICE)
    return failure(failures_pb2.MODEM_REFUSED)
