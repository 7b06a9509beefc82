"""The zimsend.v1 services, one module each.

Each module defines `register(server: ZimSendServer) -> str`: it adds its servicer to the gRPC
server (and may add startup/shutdown hooks) and returns the service's full name. A service whose
module does not exist yet is registered as `unimplemented` (after authentication, so the auth
contract holds for every public RPC from day one).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from zimsend.server.services._unimplemented import register_unimplemented

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer

# (module under zimsend.server.services, full service name)
SERVICES: list[tuple[str, str]] = [
    ("auth_service", "zimsend.v1.AuthService"),
    ("api_keys", "zimsend.v1.ApiKeyService"),
    ("devices", "zimsend.v1.DeviceService"),
    ("sms", "zimsend.v1.SmsService"),
    ("otp", "zimsend.v1.OtpService"),
    ("webhooks", "zimsend.v1.WebhookService"),
    ("device_link", "zimsend.v1.DeviceLinkService"),
]


def register_all(server: ZimSendServer) -> list[str]:
    names = []
    for module_name, service_name in SERVICES:
        try:
            module = importlib.import_module(f"zimsend.server.services.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"zimsend.server.services.{module_name}":
                raise
            names.append(register_unimplemented(server, service_name))
        else:
            names.append(module.register(server))
    return names
