"""Client scoping: another client's row answers exactly like a missing one (DESIGN)."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from sqlmodel import Session

__all__ = ["get_for_client"]


class _Owned(Protocol):
    client_id: str


T = TypeVar("T", bound=_Owned)


def get_for_client(session: Session, model: type[T], id: Any, client_id: str) -> T | None:
    """The row with primary key `id` if it belongs to `client_id`, else None."""
    row = session.get(model, id)
    if row is None or row.client_id != client_id:
        return None
    return row
