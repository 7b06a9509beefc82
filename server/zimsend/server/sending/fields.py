"""One check per request field, and the collector that turns them into one error.

Each check takes a `Violations` collector, the field's path as the request spells it
(`to`, `recipients[3]`, `messages[0].message`), and the raw value; it returns the normalised
value, or None after recording what is wrong. Descriptions say what is allowed and what was
received ("must be 1-1600 characters (got 1601)"), so the error message alone tells the caller
what to change (SPEC.md §10). Nothing here touches the database.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from google.protobuf import json_format, struct_pb2
from phonenumbers import phonenumberutil as _pnu

from zimsend.server.errors import ApiError, ErrorCode, FieldViolation, Reason, violations_error
from zimsend.server.webhook_delivery.urls import WebhookUrlError, check_webhook_url

from .dates import iso, parse_instant

__all__ = [
    "DEFAULT_PRIORITY",
    "MAX_MESSAGE_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_RECIPIENTS",
    "MAX_SCHEDULE_AHEAD",
    "PHONE_EXAMPLE",
    "Violations",
    "metadata",
    "phone",
    "priority",
    "scheduled_at",
    "shown",
    "sim_slot",
    "text",
    "webhook_url",
]

MAX_MESSAGE_CHARS = 1600
MAX_METADATA_BYTES = 1024
MAX_RECIPIENTS = 100
MAX_SCHEDULE_AHEAD = dt.timedelta(days=30)
PHONE_EXAMPLE = "+33612345678"
PRIORITY_NAMES = ("urgent", "high", "normal", "low", "very_low")
DEFAULT_PRIORITY = 3
SIM_SLOTS = (0, 1)

# What a typed international number may contain: "+" then digits and the usual separators.
# Letters are refused on purpose (phonenumbers would read "+1-800-FLOWERS" as digits).
_PHONE_CHARS = re.compile(r"\+[0-9 \-.()/\u00a0]+")
#: A number written as E.164 already: "+" and 3-17 ASCII digits (`_parse_plain`).
_PLAIN_E164 = re.compile(r"\+[0-9]{3,17}")
_SHOWN_CHARS = 40
_SUMMARY_ITEMS = 10


@dataclass
class Violations:
    """Every problem of a request, in field order; `raise_if_any` makes them one `ApiError`.

    The error's code is the first specific one (INVALID_PHONE_NUMBER, MESSAGE_TOO_LONG, …);
    INVALID_REQUEST only when every violation is generic. BadRequest lists them all; the
    message lists the first ten.
    """

    items: list[tuple[Reason, FieldViolation]] = field(default_factory=list)

    def add(self, code: Reason, field_name: str, description: str) -> None:
        self.items.append((code, FieldViolation(field_name, description)))

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> ApiError:
        codes = [code for code, _ in self.items]
        code = next((c for c in codes if c != ErrorCode.INVALID_REQUEST), codes[0])
        violations = [v for _, v in self.items]
        lines = [f"{v.field}: {v.description}" for v in violations[:_SUMMARY_ITEMS]]
        if len(violations) > _SUMMARY_ITEMS:
            lines.append(f"and {len(violations) - _SUMMARY_ITEMS} more")
        return violations_error(code, violations, "; ".join(lines))

    def raise_if_any(self) -> None:
        if self.items:
            raise self.error()


def shown(value: str) -> str:
    """A user-supplied value quoted for an error message: truncated, control characters made
    visible, never long enough to flood a log line."""
    text = value if len(value) <= _SHOWN_CHARS else value[: _SHOWN_CHARS - 1] + "…"
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return f"'{text}'"


def phone(v: Violations, name: str, raw: str) -> str | None:
    """An international number, returned as E.164."""
    value = raw.strip()
    if not value:
        v.add(
            ErrorCode.INVALID_REQUEST,
            name,
            f"is required: a phone number in international format, e.g. {PHONE_EXAMPLE}",
        )
        return None
    if not value.startswith("+"):
        v.add(
            ErrorCode.INVALID_PHONE_NUMBER,
            name,
            f"{shown(raw)} is not in international format: start with + and the country "
            f"code, e.g. {PHONE_EXAMPLE}",
        )
        return None
    number = _parse_plain(value) if _PLAIN_E164.fullmatch(value) else None
    if number is None and _PHONE_CHARS.fullmatch(value):
        try:
            number = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException:
            number = None
    if number is None or number.extension or not _is_valid(number):
        v.add(
            ErrorCode.INVALID_PHONE_NUMBER,
            name,
            f"{shown(raw)} is not a valid phone number (international format, e.g. "
            f"{PHONE_EXAMPLE})",
        )
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _parse_plain(value: str) -> phonenumbers.PhoneNumber | None:
    """`phonenumbers.parse(value, None)` for a number written as E.164 ("+" and digits), or
    None: then the full `parse` decides. It takes `parse`'s own steps for such a number —
    country code, the national prefix stripped when the rest keeps a possible length,
    Italian leading zeros — and skips what only other writings need (extensions, separators,
    letters, IDD prefixes, RFC 3966): a third of `parse`'s time, and parsing was the larger
    part of validating a request (docs/benchmarks.md). Anything unusual (an unknown country
    code, a national number shorter than 2 or longer than 17 digits) goes back to `parse`.
    tests/test_call_path.py compares the two on every country code."""
    country_code, national = _pnu._extract_country_code(value[1:])
    if country_code == 0 or not 2 <= len(national) <= 17:
        return None
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if metadata is None:
        return None
    _carrier, stripped, _ = _pnu._maybe_strip_national_prefix_carrier_code(national, metadata)
    if _pnu._test_number_length(stripped, metadata) not in _TOO_SHORT_TO_STRIP:
        national = stripped
    if not 2 <= len(national) <= 17:
        return None
    number = phonenumbers.PhoneNumber(country_code=country_code)
    _pnu._set_italian_leading_zeros_for_phone_number(national, number)
    number.national_number = int(national)
    return number


def _is_valid(number: phonenumbers.PhoneNumber) -> bool:
    """`phonenumbers.is_valid_number`, its own steps, with the number types tried mobile
    first: it asks which type a number is — premium rate, toll free and six more before
    fixed line and mobile — and a number is valid when it is any of them. Phones that
    receive SMS are mostly mobile: one pattern instead of up to eleven (docs/benchmarks.md).
    tests/test_call_path.py compares the two on every country code."""
    region = phonenumbers.region_code_for_number(number)
    country_code = number.country_code
    if region is None or country_code is None:  # no region without a country code
        return False
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, region.upper()
    )
    if metadata is None or (
        region != phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY
        and country_code != phonenumbers.country_code_for_valid_region(region)
    ):
        return False
    national = phonenumbers.national_significant_number(number)
    matches = _pnu._is_number_matching_desc
    if not matches(national, metadata.general_desc):
        return False
    # `_number_type_helper` counts mobile only where its pattern differs from fixed line's.
    if not metadata.same_mobile_and_fixed_line_pattern and matches(national, metadata.mobile):
        return True
    return any(
        matches(national, desc)
        for desc in (
            metadata.fixed_line,
            metadata.premium_rate,
            metadata.toll_free,
            metadata.shared_cost,
            metadata.voip,
            metadata.personal_number,
            metadata.pager,
            metadata.uan,
            metadata.voicemail,
        )
    )


#: `parse` keeps a national number as written when stripping its prefix leaves one of these.
_TOO_SHORT_TO_STRIP = (
    _pnu.ValidationResult.TOO_SHORT,
    _pnu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    _pnu.ValidationResult.INVALID_LENGTH,
)


def text(v: Violations, name: str, value: str) -> str | None:
    """The SMS text: 1-1600 characters (Unicode code points), not blank."""
    if not value.strip():
        v.add(
            ErrorCode.INVALID_REQUEST,
            name,
            f"is required and must not be blank (1-{MAX_MESSAGE_CHARS} characters)",
        )
        return None
    if len(value) > MAX_MESSAGE_CHARS:
        v.add(
            ErrorCode.MESSAGE_TOO_LONG,
            name,
            f"must be 1-{MAX_MESSAGE_CHARS} characters (got {len(value)})",
        )
        return None
    return value


def priority(v: Violations, name: str, value: int) -> int | None:
    """PRIORITY_UNSPECIFIED (absent, JSON null) is `normal`; 1-5 as given; any other integer
    reaches us as an open-enum value and is refused."""
    if value == 0:
        return DEFAULT_PRIORITY
    if 1 <= value <= 5:
        return value
    v.add(
        ErrorCode.INVALID_PRIORITY, name, f"must be 1-5 or {'/'.join(PRIORITY_NAMES)} (got {value})"
    )
    return None


def metadata(v: Violations, name: str, value: struct_pb2.Struct | None) -> dict[str, Any] | None:
    """A JSON object of at most 1 KB as compact JSON (UTF-8 bytes)."""
    if value is None:
        return None
    try:
        data: dict[str, Any] = _plain(json_format.MessageToDict(value))
        size = len(
            json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        )
    except (ValueError, TypeError):
        v.add(ErrorCode.INVALID_REQUEST, name, "must be a JSON object of plain JSON values")
        return None
    if size > MAX_METADATA_BYTES:
        v.add(
            ErrorCode.INVALID_REQUEST,
            name,
            f"must be at most {MAX_METADATA_BYTES} bytes serialized as compact JSON "
            f"(got {size} bytes)",
        )
        return None
    return data


def scheduled_at(v: Violations, name: str, value: str, now: dt.datetime) -> dt.datetime | None:
    """Empty means "now"; otherwise a future RFC 3339 time at most 30 days ahead."""
    if not value.strip():
        return None
    try:
        when = parse_instant(value)
    except ValueError as exc:
        v.add(ErrorCode.INVALID_SCHEDULED_DATE, name, f"{exc} (got {shown(value)})")
        return None
    if when <= now:
        v.add(
            ErrorCode.INVALID_SCHEDULED_DATE,
            name,
            f"must be in the future (got {iso(when)}; server time is {iso(now)})",
        )
        return None
    latest = now + MAX_SCHEDULE_AHEAD
    if when > latest:
        v.add(
            ErrorCode.INVALID_SCHEDULED_DATE,
            name,
            f"must be at most {MAX_SCHEDULE_AHEAD.days} days ahead, i.e. not after "
            f"{iso(latest)} (got {iso(when)})",
        )
        return None
    return when


def webhook_url(v: Violations, name: str, value: str, *, allow_insecure: bool) -> str | None:
    """A message's own webhook URL, checked exactly as `POST /v1/webhooks/configure` checks an
    endpoint's (`check_webhook_url`: HTTPS, a host, no credentials, no private or local
    address literal). Where a name resolves is checked at every delivery (SPEC.md §7)."""
    if not value.strip():
        return None
    try:
        return check_webhook_url(value, allow_insecure=allow_insecure)
    except WebhookUrlError as exc:
        v.add(ErrorCode.INVALID_WEBHOOK_URL, name, exc.problem)
        return None


def sim_slot(v: Violations, name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if value not in SIM_SLOTS:
        v.add(ErrorCode.INVALID_REQUEST, name, f"must be 0 or 1 (got {value})")
        return None
    return value


def _plain(value: Any) -> Any:
    """Struct numbers are doubles: give integral ones back as the integers the caller sent."""
    if isinstance(value, dict):
        return {k: _plain(item) for k, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a JSON number")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
    return value
