"""A graceful stop of the server (issue 12, item 10): new calls are refused before phones go.

Real processes: `zimsend serve` behind a real Envoy, REST senders hammering it, a phone that
stays connected. The phone is a `RawPhone` that ignores the server's Reconnect frame, so the
device hub waits its full shutdown time for it: a window of more than a second in which sends
keep arriving. Before the call gate, they got 503 NO_DEVICE_AVAILABLE (the phone was being
dropped while calls were still taken); now each gets 200 (accepted before the stop) or
UNAVAILABLE "shutting down" in the JSON envelope, and none hangs.

This module's only test SIGTERMs the module's `server`: keep other tests out of it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from typing import Any

import httpx
from _devices import RawPhone, Tenant, wait_for
from conftest import GatewayFactory, RunningServer

from zimsend.gateway import RateLimit


def test_sigterm_refuses_new_calls_before_dropping_phones(
    server: RunningServer, gateway_factory: GatewayFactory, tenant: Tenant
) -> None:
    program, address = server
    envoy = gateway_factory(rate_limit=RateLimit(requests_per_minute=1_000_000))
    device = tenant.create_device("stays connected")
    phone = RawPhone(address, tenant.client_id, device.device_id, device.device_password)
    try:
        phone.hello()
        wait_for(lambda: tenant.online(device.device_id), 15, "the phone online")

        answers: list[tuple[float, int, Any]] = []
        stop_sending = threading.Event()

        def send_forever() -> None:
            headers = {"X-API-Key": tenant.live_key, "X-Client-ID": tenant.client_id}
            with httpx.Client(base_url=envoy.base_url, headers=headers, timeout=20) as http:
                while not stop_sending.is_set():
                    started = time.monotonic()
                    try:
                        reply = http.post(
                            "/v1/sms/send", json={"to": "+33612345678", "message": "stop test"}
                        )
                        body = reply.json() if reply.content else None
                        answers.append((started, reply.status_code, body))
                    except httpx.HTTPError as exc:  # a hung or cut request is a failure
                        answers.append((started, 0, repr(exc)))

        senders = [threading.Thread(target=send_forever) for _ in range(4)]
        for sender in senders:
            sender.start()
        try:
            try:
                wait_for(lambda: sum(1 for a in answers if a[1] == 200) >= 20, 30, "sends accepted")
            except AssertionError:
                raise AssertionError(f"sends not accepted: {answers[-3:]}") from None
            signalled = time.monotonic()
            program.kill(signal.SIGTERM)
            program.proc.wait(30)
        finally:
            stop_sending.set()
            for sender in senders:
                sender.join(30)
    finally:
        phone.close()

    after = [(status, body) for started, status, body in answers if started >= signalled]
    codes = Counter(
        body["error"]["code"] if isinstance(body, dict) and "error" in body else status
        for status, body in after
    )
    assert after, "no request was sent after SIGTERM"
    assert "NO_DEVICE_AVAILABLE" not in codes, codes
    odd = [(status, body) for status, body in after if status not in (200, 503)]
    assert set(codes) <= {200, "UNAVAILABLE"}, (codes, odd[:3])
    refused = [body for status, body in after if status == 503]
    assert all(body["success"] is False for body in refused)
    shutting_down = [body for body in refused if "shutting down" in body["error"]["message"]]
    assert shutting_down, codes  # the RawPhone holds the window open for over a second
    assert program.proc.returncode == 0, program.output()[-3000:]
