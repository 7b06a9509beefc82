"""Whether a device is online, as every API answer computes it.

A device is online while the replica holding its stream says so (`online`) *and* its last
frame is recent: a replica that died without marking its phones offline cannot keep them
"online" longer than the heartbeat window.
"""

from __future__ import annotations

import datetime as dt

from zimsend.server.storage import Device


def is_online(device: Device, now: dt.datetime, offline_after_seconds: float) -> bool:
    if not device.online or device.last_seen_at is None or device.deleted_at is not None:
        return False
    return (now - device.last_seen_at).total_seconds() <= offline_after_seconds
