"""Few statement shapes for batches: a list bound to `IN (…)`, or the rows of a multi-row
`INSERT … RETURNING`, is padded to a power of two.

Why: SQLAlchemy writes an expanding `IN` and a multi-row INSERT with one placeholder per item,
so every batch size is a different SQL text, and each connection keeps every text it runs as a
prepared statement — Python's sqlite3 keeps the last 128 per connection, psycopg prepares a
statement after 5 runs and keeps 100. Those statements are not small (tens to hundreds of KiB
for the report batch's reads), and with batches of every size each pooled connection's cache
filled with one-off statements, prepared over and over: the server's memory kept growing in the
soak (docs/benchmarks.md, "The soak"). Padded, a batch statement has at most one shape per power
of two up to its chunk size.

Padding repeats the last item: `IN` does not care, and a repeated row of `INSERT … ON CONFLICT
DO NOTHING` is skipped, on SQLite and on PostgreSQL (only DO UPDATE refuses to touch a row
twice in one statement). `RETURNING` returns each inserted row once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["padded", "padded_chunks"]

T = TypeVar("T")


def padded(items: Sequence[T]) -> list[T]:
    """`items` followed by copies of its last item, up to the next power of two."""
    n = len(items)
    if n <= 1:
        return list(items)
    return [*items, *[items[-1]] * ((1 << (n - 1).bit_length()) - n)]


def padded_chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """`items` in chunks of `size` (a power of two), the last one padded."""
    if size <= 0 or size & (size - 1):
        raise ValueError(f"chunk size must be a power of two, not {size}")
    for start in range(0, len(items), size):
        yield padded(items[start : start + size])
