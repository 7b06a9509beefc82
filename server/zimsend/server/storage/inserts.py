"""Whole rows inserted with the driver's `executemany`, for the hottest INSERT: the accept
lane's messages, one statement per lane batch.

A Core `insert(table)` executed with a list of dicts compiles once (cached), but per row it
still builds the parameters from the compiled statement and runs every column's bind
processor — on SQLite most of the INSERT's CPU was SQLAlchemy's, not SQLite's
(docs/benchmarks.md). `RowInsert` does the per-dialect work once: the SQL text with
positional parameters in a fixed column order, and each column's bind processor, taken from
the column's own type — the conversion the Core path applies, so the rows written are the
same (tests/test_row_insert.py compares them on SQLite and PostgreSQL). Rows are tuples in
that order. Within one `execute` a processor runs once per distinct value (a batch's rows
share their times: accepted at one instant, most scheduled for the same few).

Columns left out of `columns` are not bound: the database stores its default (NULL where
the table declares none), so leave out only columns whose value would be that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import JSON, Connection, Dialect, Table

__all__ = ["RowInsert"]

_Processor = Callable[[Any], Any]


class RowInsert:
    """`INSERT INTO table (columns…) VALUES (…)` run with `executemany` on tuples (see the
    module docstring). Build one per statement shape at import; thread-safe."""

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        self.table = table
        self.columns = tuple(columns)
        missing = [name for name in self.columns if name not in table.c]
        if missing:
            raise ValueError(f"{table.name} has no column(s) {missing}")
        #: Per dialect name: the SQL text, and (position, processor, memoized) per column
        #: that has a bind processor.
        self._prepared: dict[str, tuple[str, list[tuple[int, _Processor, bool]]]] = {}

    def execute(self, connection: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert `rows` (tuples in `columns` order) in the connection's transaction."""
        if not rows:
            return
        dialect = connection.dialect
        prepared = self._prepared.get(dialect.name)
        if prepared is None:
            prepared = self._prepared[dialect.name] = self._prepare(dialect)
        sql, processors = prepared
        parameters: Sequence[tuple[Any, ...]] = rows
        if processors:
            values = list(zip(*rows, strict=True))
            for position, process, memoized in processors:
                column = values[position]
                if memoized:
                    seen: dict[Any, Any] = {}
                    converted = []
                    for value in column:
                        try:
                            converted.append(seen[value])
                        except KeyError:
                            converted.append(seen.setdefault(value, process(value)))
                    values[position] = tuple(converted)
                else:
                    values[position] = tuple(map(process, column))
            parameters = list(zip(*values, strict=True))
        connection.exec_driver_sql(sql, parameters)

    def _prepare(self, dialect: Dialect) -> tuple[str, list[tuple[int, _Processor, bool]]]:
        quote = dialect.identifier_preparer
        placeholder = "?" if dialect.paramstyle in ("qmark", "numeric") else "%s"
        if dialect.paramstyle not in ("qmark", "format", "pyformat"):
            raise NotImplementedError(f"RowInsert: paramstyle {dialect.paramstyle}")
        names = ", ".join(quote.format_column(self.table.c[name]) for name in self.columns)
        marks = ", ".join([placeholder] * len(self.columns))
        sql = f"INSERT INTO {quote.format_table(self.table)} ({names}) VALUES ({marks})"
        processors: list[tuple[int, _Processor, bool]] = []
        for position, name in enumerate(self.columns):
            column_type = self.table.c[name].type
            process = column_type._cached_bind_processor(dialect)
            if process is not None:
                # Documents (JSON) are not hashable: converted one by one.
                processors.append((position, process, not isinstance(column_type, JSON)))
        return sql, processors
