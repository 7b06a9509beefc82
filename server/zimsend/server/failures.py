"""Failure codes as the server uses them: the table of `failures.proto`, read once.

Why a module: phones report a `FailureCode` name, the server stores it as is (`messages.
error_code`), and every place that shows or acts on a failure — the report path deciding
whether a message may go to another phone, status, history and webhooks showing SPEC's public
code with a hint — asks this table. The table itself is the enum values' options in the proto
(one place, shared with the agent); nothing here repeats it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zimsend.v1 import failures_pb2

__all__ = [
    "EXPIRED",
    "FALLBACK",
    "OPTED_OUT",
    "TIMEOUT",
    "FailureInfo",
    "before_send_codes",
    "error_payload",
    "hint",
    "info",
    "known",
    "normalise",
]

_NAME = failures_pb2.FailureCode.Name
#: What a report with an unknown or empty code is stored as (SPEC §7's catch-all).
FALLBACK = _NAME(failures_pb2.DEVICE_ERROR)
#: The codes the server itself gives: no phone took it in time; its phone never confirmed it.
EXPIRED = _NAME(failures_pb2.EXPIRED)
TIMEOUT = _NAME(failures_pb2.TIMEOUT)
#: The recipient opted out while the message was queued (compliance/opt_outs.py).
OPTED_OUT = _NAME(failures_pb2.OPTED_OUT)


@dataclass(frozen=True)
class FailureInfo:
    """One FailureCode and its options (see failures.proto for each field's meaning)."""

    name: str
    public_code: str
    before_send: bool
    retryable: bool
    hint: str
    message: str


def _load() -> dict[str, FailureInfo]:
    table: dict[str, FailureInfo] = {}
    for value in failures_pb2.FailureCode.DESCRIPTOR.values:
        if value.number == 0:
            continue
        option = value.GetOptions().Extensions[failures_pb2.failure]
        table[value.name] = FailureInfo(
            name=value.name,
            public_code=option.public_code or value.name,
            before_send=option.before_send,
            retryable=option.retryable,
            hint=option.hint,
            message=option.message,
        )
    return table


_TABLE = _load()


def known() -> frozenset[str]:
    """Every FailureCode name."""
    return frozenset(_TABLE)


def before_send_codes() -> tuple[str, ...]:
    """The codes that prove the SMS never left the phone (failover may re-route them)."""
    return tuple(name for name, row in _TABLE.items() if row.before_send)


def normalise(code: str | None) -> str:
    """A phone's reported code as stored: upper-cased, unknown or empty -> DEVICE_ERROR."""
    name = (code or "").strip().upper()
    return name if name in _TABLE else FALLBACK


def info(code: str | None) -> FailureInfo:
    """The table row of a stored code (unknown codes, e.g. rows from older servers: the
    fallback's row under their own name)."""
    row = _TABLE.get(code or "")
    if row is not None:
        return row
    fallback = _TABLE[FALLBACK]
    return FailureInfo(
        code or FALLBACK,
        fallback.public_code,
        False,
        fallback.retryable,
        fallback.hint,
        fallback.message,
    )


def hint(code: str | None, device_id: str | None) -> str:
    """The one-line hint of `code`, naming the phone."""
    return info(code).hint.replace("{device}", device_id or "(none)")


def error_payload(code: str | None, message: str | None, device_id: str | None) -> dict[str, Any]:
    """`error` as webhooks show it: SPEC's `{code, message}` plus `reason`, `retryable`,
    `hint`."""
    row = info(code)
    return {
        "code": row.public_code,
        "message": message or row.message,
        "reason": row.name,
        "retryable": row.retryable,
        "hint": hint(code, device_id),
    }
