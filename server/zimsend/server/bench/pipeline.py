"""Scenarios 4 and 6: messages all the way through, at a sustainable rate and in overload.

The pipeline: SendSms accepted (load generator) → SendCommand on a phone (fleet) → `sent`
report stored (database) → `delivered` report stored → `sms.delivered` webhook received (the
worker drains the outbox to the receiver). Each stage is counted at both edges of a measured
window, so the table shows where the flow narrows; the end-to-end rate is the last stage's.

4. `e2e`: open loop at `rate` messages/s (1,000/s; the goal is 500) for the window, then wait
   until every accepted message's `sms.delivered` webhook has arrived. The end-to-end rate is
   messages completed / (window + drain): a pipeline with a long tail (webhooks lag behind
   sends) is not credited for work it has not finished. If the stack cannot carry the offered
   rate, this is what it does carry: the sustainable rate. The per-stage rates inside the
   window show where the flow narrows. Then a second phase at half the sustainable rate
   measures accept → command-on-phone latency: the server's `queued_at` (in the SendSms
   response) against the phone's arrival time of the SendCommand.
6. `overload`: closed loop with many calls in flight, offering sends as fast as the server
   accepts them. Reported: the end-to-end rate during the overload against scenario 4's
   (goal ≥ 80 %: accepted work keeps flowing), what callers saw (latency, error codes) and the
   backlog left when the offer stops.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from zimsend.server.bench.measure import summarize_ms
from zimsend.server.bench.rpc import run_loadgens
from zimsend.server.bench.stack import Phones, Stack, Tenant, receiver_counts

#: Issue 18: messages a second end to end (accept -> webhook delivered).
E2E_GOAL_RPS = 500


class Counters:
    """Snapshots of every stage's cumulative count for one tenant."""

    def __init__(self, stack: Stack, tenant: Tenant, phones: Phones, receiver_url: str) -> None:
        self.db_path = stack.data_dir / "zimsend.db"
        self.postgres = stack.env.get("ZIMSEND_DATABASE_URL")  # bench/postgres.py
        self.client_id = tenant.client_id
        self.phones = phones
        self.receiver_url = receiver_url
        self.marks: dict[str, dict[str, float]] = {}

    def _counts(self) -> tuple[int, int, int]:
        sql = (
            "SELECT count(*), count(sent_at), count(delivered_at) FROM messages WHERE client_id = ?"
        )
        if self.postgres:
            import psycopg

            with psycopg.connect(self.postgres.replace("+psycopg", "")) as pg:
                row = pg.execute(sql.replace("?", "%s"), (self.client_id,)).fetchone()
        else:
            with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30) as db:
                row = db.execute(sql, (self.client_id,)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def snapshot(self) -> dict[str, float]:
        accepted, sent, delivered = self._counts()
        phone = self.phones.stats()
        hooks = receiver_counts(self.receiver_url)
        return {
            "at": time.monotonic(),
            "accepted": accepted,
            "on_phone": phone.get("commands", 0),
            "sent": sent,
            "delivered": delivered,
            "webhook_sent": hooks.get("sms.sent", 0),
            "webhook_delivered": hooks.get("sms.delivered", 0),
        }

    def mark(self, name: str) -> None:
        self.marks[name] = self.snapshot()

    def rates(self) -> dict[str, float]:
        a, b = self.marks["start"], self.marks["end"]
        seconds = max(1e-9, b["at"] - a["at"])
        return {k: round((b[k] - a[k]) / seconds, 1) for k in a if k != "at"}

    def drain(self, timeout: float) -> dict[str, float]:
        """Wait until every accepted message's `sms.delivered` webhook arrived (or timeout);
        returns how long that took and what was left."""
        started = time.monotonic()
        while True:
            now = self.snapshot()
            left = now["accepted"] - now["webhook_delivered"]
            if left <= 0 or time.monotonic() - started > timeout:
                return {"drain_s": round(time.monotonic() - started, 1), "backlog_left": left}
            time.sleep(0.5)


def _watch(stack: Stack, phones: Phones) -> dict[str, int]:
    """Every process of the pipeline, for its CPU share over the window."""
    named = {"server": stack.server, "phones": phones.program}
    named.update({p.name: p for p in stack.programs if p.name in ("worker", "receiver")})
    return {name: p.pid for name, p in named.items() if p is not None}


def accept_to_phone(result: dict[str, Any], phones: Phones) -> dict[str, Any]:
    """Accept (the server's `queued_at`) to the phone's arrival of the SendCommand, for the
    messages a recorded load run accepted."""
    arrivals = phones.arrivals()
    gaps = [arrivals[m] - q for m, q in result.get("accepted") or [] if m in arrivals]
    return {**summarize_ms(gaps), "samples": len(gaps)}


def e2e(
    stack: Stack,
    tenant: Tenant,
    phones: Phones,
    receiver_url: str,
    *,
    rate: float,
    concurrency: int,
    duration: float,
    warmup: float,
    drain: float,
) -> dict[str, Any]:
    counters = Counters(stack, tenant, phones, receiver_url)
    assert stack.server is not None
    begin = counters.snapshot()
    full = run_loadgens(
        stack,
        "e2e",
        mode="grpc",
        target=stack.server_address,
        tenant=tenant,
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
        rate=rate,
        record=True,
        watch=_watch(stack, phones),
        on_window=counters.mark,
    )
    stages = counters.rates()
    drained = counters.drain(drain)
    finish = counters.snapshot()
    completed = finish["webhook_delivered"] - begin["webhook_delivered"]
    sustainable = round(completed / max(1e-9, finish["at"] - begin["at"]), 1)
    half_rate = max(1.0, round(sustainable / 2))
    counters.marks.clear()
    half = run_loadgens(
        stack,
        "e2e-half",
        mode="grpc",
        target=stack.server_address,
        tenant=tenant,
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
        rate=half_rate,
        record=True,
        watch=_watch(stack, phones),
        on_window=counters.mark,
    )
    half_stages = counters.rates()
    latency = accept_to_phone(half, phones)
    half_drained = counters.drain(drain)
    return {
        "offered_rps": rate,
        "accepted_rps": full["rps"],
        "stages_rps": stages,
        "e2e_rps": sustainable,
        "completed": completed,
        "send_latency": full["latency"],
        "send_outcomes": full["outcomes"],
        "cpu_share_of": full["cpu_share_of"],
        "generator_cpu_share": full["cpu_share"],
        **drained,
        "half_load": {
            "offered_rps": half_rate,
            "stages_rps": half_stages,
            "accept_to_phone": latency,
            **half_drained,
        },
        "goal": f"e2e >= {E2E_GOAL_RPS} msg/s; p99 accept->phone <= 20 ms at half load",
        "met": sustainable >= E2E_GOAL_RPS and (latency["p99_ms"] or 1e9) <= 20,
    }


def overload(
    stack: Stack,
    tenant: Tenant,
    phones: Phones,
    receiver_url: str,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    sustainable_rps: float | None,
) -> dict[str, Any]:
    counters = Counters(stack, tenant, phones, receiver_url)
    assert stack.server is not None
    result = run_loadgens(
        stack,
        "overload",
        mode="grpc",
        target=stack.server_address,
        tenant=tenant,
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
        watch=_watch(stack, phones),
        on_window=counters.mark,
    )
    stages = counters.rates()
    end = counters.marks["end"]
    ratio = round(stages["webhook_delivered"] / sustainable_rps, 3) if sustainable_rps else None
    return {
        "accepted_rps": result["rps"],
        "stages_rps": stages,
        "e2e_rps": stages["webhook_delivered"],
        "ratio": ratio,
        "caller_latency": result["latency"],
        "caller_outcomes": result["outcomes"],
        "backlog_at_end": end["accepted"] - end["webhook_delivered"],
        "cpu_share_of": result["cpu_share_of"],
        "goal": "e2e rate during overload >= 0.80 x sustainable",
        "met": ratio is not None and ratio >= 0.8,
    }
