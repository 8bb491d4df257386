"""One page of rows and the total they were cut from: the pagination every list uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

__all__ = ["page"]

RowT = TypeVar("RowT")


def page(
    session: Session,
    model: type[RowT],
    *,
    where: Sequence[ColumnElement[bool]],
    order_by: Sequence[InstrumentedAttribute[Any] | ColumnElement[Any]],
    offset: int,
    limit: int,
) -> tuple[list[RowT], int]:
    """Rows of ``model`` matching every ``where`` clause, ordered, sliced, with their count.

    Args:
        session: the unit of work.
        model: the mapped class.
        where: clauses, all of which must hold (none: every row).
        order_by: the order, most significant first; end with a unique column for stable pages.
        offset: rows to skip.
        limit: most rows to return.

    Returns:
        The page's rows and the number of rows across all pages.
    """
    count = session.scalar(select(func.count()).select_from(model).where(*where)) or 0
    rows = session.scalars(
        select(model).where(*where).order_by(*order_by).offset(offset).limit(limit)
    )
    return list(rows), count
