"""The zimsend.v1 services, one module each.

Each module defines `register(server: ZimSendServer) -> str`: it adds its servicer to the gRPC
server (and may add startup/shutdown hooks) and returns the service's full name.
`registrations()` is the one list of them; tests/test_auth.py checks that it serves every
service of the protos.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer


def registrations() -> tuple[Callable[[ZimSendServer], str], ...]:
    """Every service's `register`, in order. Imported here, not at the top: domain modules
    import `services.convert`, and importing the package must not pull in every service
    (`zimsend.server.otp` imported first would meet itself half-initialised)."""
    from zimsend.server.services import (
        api_keys,
        auth_service,
        device_link,
        devices,
        opt_outs,
        otp,
        settings,
        sms,
        webhooks,
    )

    return (
        auth_service.register,
        api_keys.register,
        devices.register,
        sms.register,
        otp.register,
        webhooks.register,
        opt_outs.register,
        settings.register,
        device_link.register,
    )


def register_all(server: ZimSendServer) -> list[str]:
    """Add every service to `server`; returns their full names (for health and reflection)."""
    return [register(server) for register in registrations()]
