"""Web-request middleware.

- Request correlation id: taken from ``X-Request-ID`` when sane, else made; echoed back.
- A statement timeout on PostgreSQL for the web process's database connections.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse

from config.correlation import HTTP_HEADER, correlation_scope, sanitize


class CorrelationIdMiddleware:
    """Give each request a correlation id for its events, its tasks and its log lines.

    A proxy or client may send ``X-Request-ID``; it is kept when it is 1-64 safe
    characters (it ends up in logs and in ``Event.correlation_id``), otherwise a new id
    replaces it. The response always carries the id, so a user reporting a problem can
    quote it. First in ``MIDDLEWARE``, so every later log line has it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with correlation_scope(sanitize(request.headers.get(HTTP_HEADER))) as correlation_id:
            request.correlation_id = correlation_id
            response = self.get_response(request)
        response[HTTP_HEADER] = correlation_id
        return response


class StatementTimeoutMiddleware:
    """Hold every SQL statement of a web request to ``DATABASE_STATEMENT_TIMEOUT_MS``.

    PostgreSQL only; 0 turns it off. It is a middleware, not a connection option in
    ``DATABASES``, so it applies to the processes that serve requests and never to
    workers, beat or management commands, whose long jobs (a reindex, a prune) are not
    held to a web timeout. The ``SET`` runs once per connection and value: a persistent
    connection (``CONN_MAX_AGE``) keeps it for the requests after.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if connection.vendor == "postgresql":
            apply_statement_timeout(settings.DATABASE_STATEMENT_TIMEOUT_MS)
        return self.get_response(request)


def apply_statement_timeout(milliseconds: int) -> None:
    """Set ``statement_timeout`` on the default connection unless it already has it."""
    connection.ensure_connection()
    applied = (id(connection.connection), milliseconds)
    if getattr(connection, "_statement_timeout_applied", None) == applied:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, false)", [str(milliseconds)])
    connection._statement_timeout_applied = applied
