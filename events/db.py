"""Small query helpers for the delivery hot path."""

from __future__ import annotations

from typing import TypeVar

from django.db.models import Model, QuerySet

M = TypeVar("M", bound=Model)


def one_or_none(queryset: QuerySet[M]) -> M | None:
    """The row a unique lookup (pk, or a unique field) matches, or ``None``.

    ``.first()`` would add ``ORDER BY pk LIMIT 1``, which a unique lookup does not need
    and which costs a third of such a query's time in the ORM: several of these run in
    every delivery.
    """
    rows = list(queryset)
    if len(rows) > 1:
        raise queryset.model.MultipleObjectsReturned(
            f"one_or_none matched {len(rows)} {queryset.model._meta.verbose_name_plural}"
        )
    return rows[0] if rows else None
