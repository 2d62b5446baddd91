"""Small query helpers for the delivery hot path."""

from __future__ import annotations

import functools
from typing import TypeVar

from django.db import connection
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


def now_sql() -> str:
    """The database's clock in SQL, as Django's ``Now()`` writes it for this database."""
    if connection.vendor == "postgresql":
        return "STATEMENT_TIMESTAMP()"
    return "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW')"


def now_plus_seconds_sql() -> str:
    """The database's clock plus a ``%s`` parameter of seconds, in SQL."""
    return _now_shifted_sql("+")


def seconds_ago_sql() -> str:
    """The database's clock minus a ``%s`` parameter of seconds, in SQL."""
    return _now_shifted_sql("-")


def _now_shifted_sql(sign: str) -> str:
    if connection.vendor == "postgresql":
        return f"(STATEMENT_TIMESTAMP() {sign} make_interval(secs => %s))"
    return f"STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW', '{sign}' || %s || ' seconds')"


def fetch_instance(model: type[M], pk: object) -> M | None:
    """The row of ``model`` with primary key ``pk``, read with one bare ``SELECT``.

    What ``model.objects.get(pk=pk)`` returns, without building a queryset: on the
    delivery path that costs more than the query itself. Values pass through the same
    converters the ORM applies (UUIDs, datetimes, JSON).
    """
    sql, _, _ = _select_by_pk(model, connection.alias)
    with connection.cursor() as cursor:
        cursor.execute(sql, [pk])
        row = cursor.fetchone()
    if row is None:
        return None
    return instance_from_row(model, row)


def select_columns(model: type[Model]) -> str:
    """``model``'s columns as ``fetch_instance`` reads them, qualified by its table."""
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    return ", ".join(f"{table}.{quote(f.column)}" for f in model._meta.concrete_fields)


def instance_from_row(model: type[M], row: tuple) -> M:
    """An instance of ``model`` from a row of ``select_columns``, through the ORM's converters."""
    _, attnames, converters = _select_by_pk(model, connection.alias)
    values = []
    for value, (column, field_converters) in zip(row, converters, strict=True):
        for convert in field_converters:
            value = convert(value, column, connection)
        values.append(value)
    return model.from_db(connection.alias, attnames, values)


@functools.cache
def _select_by_pk(model: type[Model], alias: str) -> tuple[str, list[str], list[tuple]]:
    """The SELECT, field names and per-column converters of ``model``, built once."""
    fields = model._meta.concrete_fields
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    sql = (
        f"SELECT {columns} FROM {quote(model._meta.db_table)} "
        f"WHERE {quote(model._meta.pk.column)} = %s"
    )
    converters = []
    for field in fields:
        column = field.get_col(model._meta.db_table)
        converters.append(
            (
                column,
                connection.ops.get_db_converters(column) + field.get_db_converters(connection),
            )
        )
    return sql, [field.attname for field in fields], converters
