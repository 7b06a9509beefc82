"""SendOtp's fields, checked before anything is written (SPEC.md §6).

The phone number and metadata go through the very checks SendSms uses (`sending.fields`), and
every violation is collected into one error, so a caller learns all that is wrong at once
("length: must be 4-8 digits (got 3); expiry: must be 1-1800 seconds (got 3600)").

What comes out is an `OtpPlan`. It knows everything about the SMS except the code: the code is
`length` decimal digits (GSM-7, one character each), so the real text's size, segments and
encoding follow from the template and the length alone. The plan is therefore complete, and
checked, before the code exists — and the code never has to pass through a validation path.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from zimsend.server.errors import ErrorCode
from zimsend.server.sending import fields
from zimsend.server.sending.fields import MAX_MESSAGE_CHARS, Violations
from zimsend.server.sending.validation import Draft, SendPlan, segment
from zimsend.v1 import otp_pb2 as pb

__all__ = [
    "DEFAULT_EXPIRY_SECONDS",
    "DEFAULT_LENGTH",
    "DEFAULT_TEMPLATE",
    "MASK",
    "MAX_EXPIRY_SECONDS",
    "OTP_PRIORITY",
    "PLACEHOLDER",
    "OtpPlan",
    "check_send",
]

PLACEHOLDER = "{{code}}"
DEFAULT_TEMPLATE = "Votre code de vérification est : {{code}}"
DEFAULT_LENGTH = 6
MIN_LENGTH, MAX_LENGTH = 4, 8
DEFAULT_EXPIRY_SECONDS = 300
MAX_EXPIRY_SECONDS = 1800
#: What history, exports and webhooks show in place of the code. Always six bullets, whatever
#: the code's length: the stored text does not even tell how long the code was.
MASK = "••••••"
#: SPEC §3: "OTP messages go out as `urgent`".
OTP_PRIORITY = 1


@dataclass(frozen=True)
class OtpPlan:
    """A checked SendOtp request."""

    to: str  # E.164
    length: int
    expiry: dt.timedelta
    template: str  # contains PLACEHOLDER at least once
    meta: dict[str, Any] | None
    segments: int  # of the real text (digits in place of the placeholder)
    encoding: str  # storage spelling, "GSM-7" / "UCS-2"

    def text(self, code: str) -> str:
        """The SMS as the phone sends it. Call it with the real code only to seal it."""
        return self.template.replace(PLACEHOLDER, code)

    @property
    def masked_text(self) -> str:
        """The SMS as ZimSend stores and shows it (`Message.body`)."""
        return self.text(MASK)

    def send_plan(self) -> SendPlan:
        """The plan `sending.intake` queues: one immediate, urgent message whose stored body
        is masked but whose segments and encoding are those of the text actually sent."""
        draft = Draft(self.to, self.masked_text, self.segments, self.encoding, self.meta)
        return SendPlan("single", [draft], OTP_PRIORITY, webhook_url=None, scheduled_at=None)


def check_send(request: pb.SendOtpRequest) -> OtpPlan:
    """Check every field of a SendOtp request; raise one `ApiError` listing all violations.

    Absent fields, zeros and JSON `null` take their defaults (proto3 cannot tell them apart;
    ZimSend's own wrapper sends `"template": null`).
    """
    v = Violations()
    to = fields.phone(v, "to", request.to)
    length = _bounded(v, "length", request.length, DEFAULT_LENGTH, MIN_LENGTH, MAX_LENGTH, "digits")
    expiry = _bounded(
        v, "expiry", request.expiry, DEFAULT_EXPIRY_SECONDS, 1, MAX_EXPIRY_SECONDS, "seconds"
    )
    template = _template(v, request.template)
    if template is not None and length is not None:
        size = len(template.replace(PLACEHOLDER, "0" * length))
        if size > MAX_MESSAGE_CHARS:
            v.add(
                ErrorCode.MESSAGE_TOO_LONG,
                "template",
                f"with the {length}-digit code in place must be at most {MAX_MESSAGE_CHARS} "
                f"characters (got {size})",
            )
            template = None
    meta = fields.metadata(
        v, "metadata", request.metadata if request.HasField("metadata") else None
    )
    v.raise_if_any()
    assert to is not None
    assert length is not None
    assert expiry is not None
    assert template is not None
    segments, encoding = segment(template.replace(PLACEHOLDER, "0" * length))
    return OtpPlan(to, length, dt.timedelta(seconds=expiry), template, meta, segments, encoding)


def _bounded(
    v: Violations, name: str, value: int, default: int, low: int, high: int, unit: str
) -> int | None:
    """0 (absent, null) means `default`; otherwise `low`..`high` inclusive."""
    if value == 0:
        return default
    if not low <= value <= high:
        v.add(
            ErrorCode.INVALID_REQUEST,
            name,
            f"must be {low}-{high} {unit} (got {value}); omit it for the default {default}",
        )
        return None
    return value


def _template(v: Violations, value: str) -> str | None:
    """Empty means the default French text; anything else must carry the placeholder."""
    if value == "":
        return DEFAULT_TEMPLATE
    if PLACEHOLDER not in value:
        v.add(
            ErrorCode.INVALID_REQUEST,
            "template",
            f"must contain {PLACEHOLDER} where the code goes, e.g. "
            f"'Your code is {PLACEHOLDER}' (got {fields.shown(value)})",
        )
        return None
    return value
