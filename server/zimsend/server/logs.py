"""Structured logs: one JSON object per line on stderr (key=value text on a terminal).

Why structlog: every log line of the server, the worker and the supervisor carries the same
keys (`event`, `level`, `timestamp`, plus the call's `client_id`, `device_id`, `message_id`), so
an operator can grep or ship them without parsing prose. Secrets never reach a logger: API
keys, device passwords, OTP codes and webhook secrets are not passed to log calls at all.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s", force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def failure(
    logger: structlog.stdlib.BoundLogger, event: str, exc: BaseException, **fields: object
) -> None:
    """Log an unexpected failure with its traceback, except a storage problem (full or
    read-only database): the database says that once when it starts and once when it ends
    (`storage.availability`), not once per failed request or loop turn."""
    from zimsend.server.storage.availability import storage_problem

    if storage_problem(exc) is None:
        logger.error(event, exc_info=exc, **fields)
