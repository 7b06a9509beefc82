"""Find the generated modules of a zimsend.v1 service by its full name."""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULE_OF_SERVICE = {
    "zimsend.v1.AuthService": "auth",
    "zimsend.v1.ApiKeyService": "api_keys",
    "zimsend.v1.DeviceService": "devices",
    "zimsend.v1.SmsService": "sms",
    "zimsend.v1.OtpService": "otp",
    "zimsend.v1.WebhookService": "webhooks",
    "zimsend.v1.DeviceLinkService": "device_link",
}


def grpc_module(service_name: str) -> ModuleType:
    return importlib.import_module(f"zimsend.v1.{_MODULE_OF_SERVICE[service_name]}_pb2_grpc")
