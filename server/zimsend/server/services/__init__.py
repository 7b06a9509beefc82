"""The zimsend.v1 services, one module each.

Each module defines `register(server: ZimSendServer) -> str`: it adds its servicer to the gRPC
server (and may add startup/shutdown hooks) and returns the service's full name. `REGISTER` is
the one list of them; tests/test_auth.py checks that it serves every service of the protos.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from zimsend.server.services import (
    api_keys,
    auth_service,
    device_link,
    devices,
    otp,
    sms,
    webhooks,
)

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer

REGISTER: tuple[Callable[[ZimSendServer], str], ...] = (
    auth_service.register,
    api_keys.register,
    devices.register,
    sms.register,
    otp.register,
    webhooks.register,
    device_link.register,
)


def register_all(server: ZimSendServer) -> list[str]:
    """Add every service to `server`; returns their full names (for health and reflection)."""
    return [register(server) for register in REGISTER]
