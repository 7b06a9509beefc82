"""Structured logs: one JSON object per line on stderr (key=value text on a terminal).

Why structlog: every log line of the server, the worker and the supervisor carries the same
keys (`event`, `level`, `timestamp`, plus the call's `client_id`, `device_id`, `message_id`), so
an operator can grep or ship them without parsing prose. Secrets never reach a logger: API
keys, device passwords, OTP codes and webhook secrets are not passed to log calls at all.

Every accepted send writes a line, so the JSON path is kept cheap without changing a byte of
its format: one `json.JSONEncoder` built once (`json.dumps` with structlog's `default` builds
one per call), the timestamp's date and time formatted once a second (`_utc_timestamp`, what
`TimeStamper(fmt="iso", utc=True)` writes), a plain write + flush instead of `print`, and
`hot_info` for the lines written per message (`sms.accepted`, `sms.status`; docs/benchmarks.md).
"""

from __future__ import annotations

import datetime as dt
import json as jsonlib
import logging
import sys
import time
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

#: What `configure` set up, for `hot_info`: (the processors, the logger they write to, whether
#: INFO lines are written). None until `configure` runs.
_hot: tuple[tuple[Processor, ...], structlog.WriteLogger, bool] | None = None


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process (the one place: the
    loggers `hot_info` writes to are set up here too)."""
    global _hot
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Processor = _render_json if json else structlog.dev.ConsoleRenderer(colors=False)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s", force=True)
    processors: tuple[Processor, ...] = (
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _utc_timestamp,
        structlog.processors.format_exc_info,
        renderer,
    )
    min_level: int = logging.getLevelName(level)
    factory = structlog.WriteLoggerFactory(sys.stderr)
    structlog.configure(
        processors=list(processors),
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    _hot = (processors, factory(), min_level <= logging.INFO)


def _json_fallback(value: Any) -> Any:
    """What structlog's `JSONRenderer` writes for a value JSON has no type for."""
    structlog_form = getattr(value, "__structlog__", None)
    return structlog_form() if structlog_form is not None else repr(value)


#: `json.dumps`'s defaults (separators `", "` and `": "`, ASCII only), built once.
_ENCODER = jsonlib.JSONEncoder(default=_json_fallback)


def _render_json(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> str:
    """`structlog.processors.JSONRenderer()`'s line, from an encoder built once."""
    return _ENCODER.encode(event_dict)


#: (the second, its "YYYY-MM-DDTHH:MM:SS" in UTC) of the last line's timestamp.
_second: tuple[int, str] = (-1, "")


def _utc_timestamp(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """`timestamp` as `TimeStamper(fmt="iso", utc=True)` writes it ("…T12:34:56.789012Z", or
    "…T12:34:56Z" on a whole second, like `datetime.isoformat`), the date and time formatted
    once per second."""
    global _second
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    if _second[0] != seconds:
        stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (seconds, stamp)
    whole = _second[1]
    event_dict["timestamp"] = f"{whole}.{micros:06d}Z" if micros else f"{whole}Z"
    return event_dict


def get(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def hot_info(logger: structlog.stdlib.BoundLogger, event: str, **fields: Any) -> None:
    """`logger.info(event, **fields)` for a line written per message (`sms.accepted`,
    `sms.status`): the same processors and the same write, so the same bytes, without
    structlog's per-call machinery around them (the lazy proxy, the bound logger's context
    copy, the dispatch by method name) — the loggers of `get` carry no context of their own.
    Before `configure`, simply `logger.info`."""
    hot = _hot
    if hot is None:
        logger.info(event, **fields)
        return
    processors, out, enabled = hot
    if not enabled:
        return
    fields["event"] = event
    event_dict: Any = fields
    try:
        for processor in processors:
            event_dict = processor(out, "info", event_dict)
    except structlog.DropEvent:
        return
    out.msg(event_dict)


def failure(
    logger: structlog.stdlib.BoundLogger, event: str, exc: BaseException, **fields: object
) -> None:
    """Log an unexpected failure with its traceback, except a storage problem (full or
    read-only database): the database says that once when it starts and once when it ends
    (`storage.availability`), not once per failed request or loop turn."""
    from zimsend.server.storage.availability import storage_problem

    if storage_problem(exc) is None:
        logger.error(event, exc_info=exc, **fields)
