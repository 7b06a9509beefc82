"""Column types that behave the same on SQLite and PostgreSQL.

SQLite has no time zones: a `DateTime(timezone=True)` column stores naive text and returns
naive datetimes, while PostgreSQL's `timestamptz` returns aware ones. `UTCDateTime` makes both
engines look like PostgreSQL: it refuses naive datetimes on the way in (a naive value is a bug:
whose local time is it?), stores UTC, and always returns aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, TypeDecorator
from sqlmodel import SQLModel

__all__ = ["JSONValue", "UTCDateTime", "utcnow"]

UTC = dt.UTC

# Deterministic constraint names: Alembic batch migrations on SQLite can only drop or alter a
# constraint that has a name. Set before any table is declared.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """The current time, aware, in UTC: the only kind of datetime storage accepts."""
    return dt.datetime.now(UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime on every engine (see module docstring)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: storage only accepts aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    # On SQLite, the two steps of each direction (ours above, then SQLite's DATETIME text
    # conversion) as one function: the same values (tests/test_call_path.py compares them),
    # one Python call per value instead of three. Every message row carries several of
    # these; the accept lane's INSERT and its queue snapshot (`queue_gauge`) were ~10% of the
    # server's CPU under `zimsend bench` in them. PostgreSQL keeps the generic path.

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: dt.datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"naive datetime {value!r}: storage only accepts aware datetimes")
            # SQLite DATETIME's storage format: "2026-12-05 20:56:19.168553" (always 6 digits).
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        parse = self.impl_instance.result_processor(dialect, coltype)
        if parse is None:
            return super().result_processor(dialect, coltype)

        def process(value: Any) -> dt.datetime | None:
            if value is None:
                return None
            parsed: dt.datetime | None = parse(value)
            assert parsed is not None  # SQLite's conversion of a non-NULL text
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)

        return process


# Plain JSON on both engines: documents are stored and returned whole, never queried inside.
JSONValue = JSON(none_as_null=True)
