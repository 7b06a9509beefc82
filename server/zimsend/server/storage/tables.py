"""The Core `Table` behind a SQLModel class, typed.

Hot paths run prebuilt Core statements on the tables instead of ORM queries (see the modules
that use this). SQLModel's metaclass sets `__table__` on every table class but does not declare
it, so it is read here, once, and everything else keeps the type checker's help.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import SQLModel


def table_of(model: type[SQLModel]) -> Table:
    """`model.__table__`, for a `table=True` SQLModel class."""
    table = model.__table__  # type: ignore[attr-defined]  # set by SQLModel, not declared
    assert isinstance(table, Table)
    return table
