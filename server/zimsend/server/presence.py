"""Whether a device is online, as every API answer computes it.

A device is connected while the replica holding its stream says so (`online`) *and* its last
frame is recent: a replica that died without marking its phones offline cannot keep them
"online" longer than the heartbeat window. It is online — may be given messages — while it is
connected and its last heartbeat did not say it cannot send (`cannot_send_reason`: modem
unplugged, SIM PIN needed, no network); a connected phone that cannot send shows `offline`.
"""

from __future__ import annotations

import datetime as dt

from zimsend.server.storage import Device

__all__ = ["is_connected", "is_online"]


def is_connected(device: Device, now: dt.datetime, offline_after_seconds: float) -> bool:
    """Its stream is up (the accept path passes rows with the same attribute names)."""
    if not device.online or device.last_seen_at is None or device.deleted_at is not None:
        return False
    return (now - device.last_seen_at).total_seconds() <= offline_after_seconds


def is_online(device: Device, now: dt.datetime, offline_after_seconds: float) -> bool:
    """Connected and able to send (what `status: online` means)."""
    return not device.cannot_send_reason and is_connected(device, now, offline_after_seconds)
