"""The scripted fault suite (issue 12, "Also build"): a process dies in the middle of a run and
nothing is stuck, doubled or lost.

Each scenario runs one ~2,000-message run (100 REST bulk requests of 20, ten a second, through
the real Envoy; tests/_faults.py) against a fresh deployment — server, Envoy, worker, a node
webhook receiver subscribed to every event, two simulated phones — and, at a random moment of
the sending (seeded: `ZIMSEND_FAULT_SEED=N` replays it), hurts one process:

- `kill9-server`, `kill9-worker`, `kill9-agent`: kill -9, then start it again (the server on the
  same port behind the same Envoy, a phone on the same journal and outbox);
- `sigterm-server`: SIGTERM under load; every request in flight or arriving until it has exited
  is answered 200 or 503 UNAVAILABLE (the envelope), none hangs; then it starts again;
- `kill9-replica` (issue 17, the production layout of docs/deploy.md): PostgreSQL, two server
  replicas and two workers behind one Envoy; kill -9 of the replica holding a phone: its phones
  come back online through Envoy on the other replica, its unfinished calls end 503
  UNAVAILABLE (and their retries, same Idempotency-Key, 200), then it starts again. Meanwhile a
  second client calls at a steady pace against a per-client limit of 30 a minute, which must
  hold across the replicas (`LimitProbe`).

The client retries every request cut or refused (connection error, 503, 429) with the same
Idempotency-Key until it gets 200. After the run: every accepted message is `delivered` or
`failed` (failed only as DEVICE_ERROR, at most one per phone killed mid-send: the agent reports
"outcome unknown" rather than risk a second SMS); the database holds exactly the accepted
messages (no retry made a second one); no phone's outbox has a message twice; every webhook
event stored reached the receiver (again only under the same `event_id`), signed.

Each scenario prints one summary line in the terminal summary (conftest.py), e.g.
`fault kill9-server: accepted=2000 final=2000 duplicates=0 events_lost=0 … seed=… fault_at=…`.
"""

from __future__ import annotations

import collections
import functools
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _devices import wait_for
from _faults import BulkSender, FaultStack, LimitProbe, Tally, seeded, wait_settled

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

#: How long after the last request every message and webhook must have settled.
SETTLE_TIMEOUT_S = 150.0
#: A graceful stop takes its grace (5 s) twice at most, plus the phones' goodbyes.
STOP_TIMEOUT_S = 30.0
SEED = int(os.environ.get("ZIMSEND_FAULT_SEED") or random.SystemRandom().randrange(10**6))


def _kill9_server(stack: FaultStack, rng: random.Random, sender: BulkSender) -> Outcome:
    assert stack.server is not None
    stack.server.kill(signal.SIGKILL)
    stack.server.stop()
    down = rng.uniform(0.0, 1.0)
    time.sleep(down)
    stack.start_server()
    return {"down": f"{down:.2f}s"}, []


def _kill9_worker(stack: FaultStack, rng: random.Random, sender: BulkSender) -> Outcome:
    assert stack.worker is not None
    stack.worker.kill(signal.SIGKILL)
    stack.worker.stop()
    stack.start_worker()
    return {}, []


def _kill9_agent(stack: FaultStack, rng: random.Random, sender: BulkSender) -> Outcome:
    n = rng.randrange(len(stack.phones))
    program = stack.phones[n].program
    assert program is not None
    program.kill(signal.SIGKILL)
    program.stop()
    stack.start_phone(n)
    return {"phone": n}, []


def _sigterm_server(stack: FaultStack, rng: random.Random, sender: BulkSender) -> Outcome:
    """SIGTERM; then what was in flight or arrived until the exit must be 200 or UNAVAILABLE."""
    server = stack.server
    assert server is not None
    problems = []
    signalled = time.monotonic()
    server.kill(signal.SIGTERM)
    try:
        code = server.proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill(signal.SIGABRT)  # faulthandler: every thread's stack into its log
        server.proc.wait(10)
        code = None
        problems.append(
            f"the server did not exit within {STOP_TIMEOUT_S:g} s of SIGTERM under "
            f"load; its log ends:\n{server.output()[-6000:]}"
        )
    exited = time.monotonic()
    server.stop()
    if code not in (0, None):
        problems.append(f"the graceful stop exited {code}:\n{server.output()[-3000:]}")
    stack.start_server()
    sender.join()  # every answer of the window is in by now
    window = [a for a in sender.answers if a.ended >= signalled and a.started <= exited]
    outcomes = collections.Counter(
        "200" if a.status == 200 else f"{a.status}:{a.code}" for a in window
    )
    odd = {k: v for k, v in outcomes.items() if k not in ("200", "503:UNAVAILABLE")}
    if not window:
        problems.append("no request was in flight around the stop")
    if odd:
        problems.append(
            f"requests in flight or arriving during the graceful stop were answered "
            f"otherwise than 200 or 503 UNAVAILABLE: {dict(outcomes)}"
        )
    return {
        "stop": f"{exited - signalled:.2f}s",
        "window": ",".join(f"{k}x{v}" for k, v in sorted(outcomes.items())),
    }, problems


def _kill9_replica(stack: FaultStack, rng: random.Random, sender: BulkSender) -> Outcome:
    """kill -9 the replica holding a phone; its phones must come back through Envoy on another
    replica; the calls it had when it died end 503 UNAVAILABLE; then it starts again."""
    held = {p.device_id: stack.replica_of(p.device_id) for p in stack.phones}
    candidates = sorted({i for i in held.values() if i is not None})
    assert candidates, f"no phone is held by a live replica: {held}"
    index = rng.choice(candidates)
    victims = [device for device, i in held.items() if i == index]
    program = stack.replicas[index]
    assert program is not None
    # While a request is in flight (on this replica or the other): a call cut by the death.
    wait_for(lambda: sender.in_flight > 0, 30, "a request in flight")
    killed_at = time.monotonic()
    program.kill(signal.SIGKILL)
    program.stop()

    def moved_on(device_id: str) -> bool:
        return stack.replica_of(device_id) not in (None, index) and stack.online(device_id)

    for device_id in victims:
        wait_for(
            functools.partial(moved_on, device_id),
            60,
            f"phone {device_id} online again on another replica",
        )
    moved = time.monotonic() - killed_at
    down = rng.uniform(0.5, 2.0)
    time.sleep(down)
    stack.start_server(index)
    sender.join()
    cut = [a for a in sender.answers if a.started < killed_at < a.ended]
    outcomes = collections.Counter(
        "200" if a.status == 200 else f"{a.status}:{a.code}" for a in cut
    )
    problems = []
    odd = {k: v for k, v in outcomes.items() if k not in ("200", "503:UNAVAILABLE")}
    if odd:
        problems.append(
            f"calls in flight when a replica died were answered otherwise than 200 "
            f"(another replica) or 503 UNAVAILABLE: {dict(outcomes)}"
        )
    return {
        "replica": index + 1,
        "phones_moved": len(victims),
        "back_online": f"{moved:.1f}s",
        "cut": ",".join(f"{k}x{v}" for k, v in sorted(outcomes.items())),
    }, problems


#: What a fault reports: details for the summary line, and the promises it saw broken.
Outcome = tuple[dict[str, object], list[str]]
Fault = Callable[[FaultStack, random.Random, BulkSender], Outcome]
FAULTS: dict[str, tuple[Fault, int]] = {  # scenario -> (fault, messages allowed to fail)
    "kill9-server": (_kill9_server, 0),
    "kill9-worker": (_kill9_worker, 0),
    "kill9-agent": (_kill9_agent, 1),
    "sigterm-server": (_sigterm_server, 0),
    "kill9-replica": (_kill9_replica, 0),
}
#: Scenarios on the production layout: PostgreSQL, replicas and workers (docs/deploy.md).
TOPOLOGY = {"kill9-replica": {"replicas": 2, "workers": 2}}
#: `LimitProbe`'s per-client limit (requests a minute).
PROBE_LIMIT = 30


@pytest.mark.parametrize("scenario", list(FAULTS))
def test_nothing_stuck_doubled_or_lost(
    scenario: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    request: pytest.FixtureRequest,
) -> None:
    fault, failures_allowed = FAULTS[scenario]
    rng = seeded(SEED, scenario)
    topology: dict[str, Any] = dict(TOPOLOGY.get(scenario, {}))
    if topology:
        topology["database_url"] = request.getfixturevalue("postgres_database_url")
    with FaultStack(tmp_path, **topology) as stack:
        probe = (
            LimitProbe(stack.envoy.base_url, stack.limited_client(PROBE_LIMIT), PROBE_LIMIT)
            if topology
            else None
        )
        sender = BulkSender(stack.envoy.base_url, stack.auth, run_id=f"{scenario}-{SEED}")
        fault_at = rng.uniform(0.5, 0.9 * sender.seconds)
        if probe is not None:
            probe.start()
        sender.start()
        time.sleep(max(0.0, sender.started_at + fault_at - time.monotonic()))
        detail, fault_problems = fault(stack, rng, sender)
        sender.join()
        if probe is not None:
            probe.stop()
            detail["limit"] = probe.summary()
            fault_problems += probe.problems()
        ids = sender.message_ids()
        wait_settled(stack, ids, SETTLE_TIMEOUT_S)
        tally = Tally.count(stack, ids)
        seconds = time.monotonic() - sender.started_at

    hangs = [a for a in sender.answers if a.status == 0 and "Timeout" in a.code]
    retried_codes = collections.Counter(
        f"{a.status}:{a.code}" if a.code else str(a.status)
        for a in sender.answers
        if a.status != 200
    )
    line = tally.line(
        scenario,
        hangs=len(hangs),
        retried=sender.retried,
        refused=len(sender.refused),
        seed=SEED,
        fault_at=f"{fault_at:.2f}s",
        **detail,
        seconds=round(seconds),
    )
    record_property("summary", line)
    problems = fault_problems + tally.problems(failures_allowed=failures_allowed)
    if hangs:
        problems.append(f"{len(hangs)} requests hung (no answer within the client's timeout)")
    if sender.refused:
        problems.append(f"requests refused for good: {sender.refused[:5]}")
    offered = sender.requests * sender.per_request
    if tally.accepted != offered and not sender.refused:
        problems.append(f"{tally.accepted} of {offered} messages accepted, none refused")
    assert not problems, "\n".join(
        [
            line,
            *problems,
            f"answers other than 200: {dict(retried_codes)}",
            f"replay: ZIMSEND_FAULT_SEED={SEED} pytest tests/test_faults.py -k {scenario}",
            f"logs: {tmp_path}",
        ]
    )
