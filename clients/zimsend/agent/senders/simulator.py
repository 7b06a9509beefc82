"""A phone that sends nothing: the sender for tests, demos and load (`--backend simulator`).

Decisions come from `zimsend.agent.simulation.Simulation` (deterministic with a seed); this
module only adds trio's sleeping. Every SMS it "sends" is one line in the outbox file, so a
test can count sends per message id and prove "at most once".

Cancellation: `send()` sleeps for the simulated handoff; the agent shields it, so a shutdown
waits for it. `run()` owns the delayed delivery reports: cancelling it drops the reports not
yet due, as a phone switched off before the network answered. Like a real network, which
keeps a status report until the phone is back, the simulated network still delivers them: on
start `run()` asks the journal which parts await a report and schedules them again.
"""

from __future__ import annotations

import math
import platform

import trio

from zimsend.agent.senders.base import (
    Capabilities,
    DeliveryReport,
    DeviceInfo,
    Health,
    InboundSms,
    Recorder,
    SenderEvent,
    SendRequest,
    SendResult,
    SimInfo,
)
from zimsend.agent.simulation import Simulation, SimulationConfig

__all__ = ["SimulatorSender"]


class SimulatorSender:
    """The `Sender` of a simulated phone (one SIM, slot 0)."""

    def __init__(self, config: SimulationConfig | None = None, *, device_id: str = "sim") -> None:
        self.simulation = Simulation(config or SimulationConfig(), device_id=device_id)
        send, receive = trio.open_memory_channel[tuple[float, SenderEvent]](math.inf)
        self._scheduled_send, self._scheduled = send, receive

    def describe(self) -> DeviceInfo:
        return DeviceInfo(
            model="ZimSend Simulator",
            android_version=f"{platform.system()} {platform.release()}".strip(),
            sims=(SimInfo(slot=0, carrier="SimNet"),),
            capabilities=Capabilities(
                backend="simulator",
                inbound_sms=True,
                delivery_reports=self.simulation.config.delivery_delay is not None,
            ),
        )

    async def health(self) -> Health:
        return self.simulation.health()

    async def send(self, request: SendRequest) -> SendResult:
        decision = self.simulation.decide(request.message_id)
        await trio.sleep(decision.delay)
        result = self.simulation.complete(request, decision)
        if result.ok and decision.delivery_delay is not None:
            for report in self.simulation.delivery_reports(request):
                self._scheduled_send.send_nowait((decision.delivery_delay, report))
        return result

    def inject_inbound(self, sms: InboundSms | None = None) -> InboundSms:
        """Make the phone "receive" an SMS now (a deterministic one when `sms` is None)."""
        sms = sms or self.simulation.next_inbound()
        self._scheduled_send.send_nowait((0.0, sms))
        return sms

    async def inject_periodically(self, count: int, interval: float) -> None:
        """Receive `count` simulated SMS, one every `interval` seconds (the CLI's
        `--inject-inbound`)."""
        for _ in range(count):
            await trio.sleep(interval)
            self.inject_inbound()

    async def run(self, recorder: Recorder) -> None:
        delay = self.simulation.config.delivery_delay
        if delay is not None:
            for part in recorder.awaiting_delivery():  # sent before a restart
                self._scheduled_send.send_nowait(
                    (delay, DeliveryReport(part.message_id, part.part_index, part.part_count))
                )
        async with trio.open_nursery() as nursery:
            async for after, event in self._scheduled:
                nursery.start_soon(_record_later, after, event, recorder)


async def _record_later(delay: float, event: SenderEvent, recorder: Recorder) -> None:
    await trio.sleep(delay)
    if isinstance(event, DeliveryReport):
        recorder.delivery(event)
    else:
        recorder.inbound(event)
