"""Web-request middleware.

- Request correlation id: taken from ``X-Request-ID`` when sane, else made; echoed back.
- A statement timeout on PostgreSQL for the web process's database connections.
- A client that disconnects mid-body: one warning line and a 400, not a 500 traceback.
- A Content-Security-Policy on every HTML page (django-csp is not installed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, UnreadablePostError

from config.correlation import HTTP_HEADER, correlation_scope, sanitize

logger = logging.getLogger(__name__)


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
    held to a web timeout. Loading it connects a ``connection_created`` receiver, so
    the ``SET`` runs when the process opens a connection (a request that needs no
    database opens none); a connection already open is set on its next request.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        connection_created.connect(_on_connection_created, dispatch_uid=__name__ + ".timeout")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if connection.vendor == "postgresql" and connection.connection is not None:
            apply_statement_timeout(connection)
        return self.get_response(request)


def _on_connection_created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    if connection.vendor == "postgresql":
        apply_statement_timeout(connection)


def apply_statement_timeout(db: BaseDatabaseWrapper) -> None:
    """Set ``statement_timeout`` on the open connection ``db`` unless it already has it."""
    milliseconds = settings.DATABASE_STATEMENT_TIMEOUT_MS
    applied = (id(db.connection), milliseconds)
    if getattr(db, "_statement_timeout_applied", None) == applied:
        return
    with db.cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, false)", [str(milliseconds)])
    db._statement_timeout_applied = applied


class _DisconnectAwareStream:
    """The request body stream, noting on the request when the client went away.

    A reset connection makes the WSGI server raise ``OSError`` (gunicorn's
    ``NoMoreData`` is one), which Django turns into ``UnreadablePostError`` and
    ``CsrfViewMiddleware`` swallows, leaving the view an empty ``request.FILES``. A
    connection closed cleanly mid-body just reads short: fewer bytes than asked for
    while ``Content-Length`` says more are due.
    """

    def __init__(self, stream: Any, request: HttpRequest) -> None:
        self._stream = stream
        self._request = request
        try:
            self._due: int | None = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            self._due = None

    def __getattr__(self, name: str) -> Any:
        # Everything else (close, seek, the server's own attributes) is the stream's.
        return getattr(self._stream, name)

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._stream.read(size)
        except OSError:
            self._request.client_disconnected = True
            raise
        if self._due is not None:
            expected = self._due if size is None or size < 0 else min(size, self._due)
            self._due -= len(data)
            if len(data) < expected:
                self._request.client_disconnected = True
        return data

    def readline(self, *args: Any, **kwargs: Any) -> bytes:
        try:
            line = self._stream.readline(*args, **kwargs)
        except OSError:
            self._request.client_disconnected = True
            raise
        if self._due is not None:
            self._due -= len(line)
        return line


class ClientDisconnectMiddleware:
    """Answer a request whose client left mid-body with one warning line and a 400.

    Nobody reads that answer; the point is the log: without this the view either
    raised ``UnreadablePostError`` (a 500 with a traceback) or, after the CSRF
    middleware swallowed it, refused an upload as "missing". Right after the
    correlation id middleware, so the line carries the request's id.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.client_disconnected = False
        stream = getattr(request, "_stream", None)
        if stream is not None:
            request._stream = _DisconnectAwareStream(stream, request)
        response = self.get_response(request)
        if not request.client_disconnected:
            return response
        logger.warning(
            "client disconnected before sending the whole request body: %s %s "
            "(Content-Length %s); answered 400",
            request.method,
            request.path,
            request.META.get("CONTENT_LENGTH", "?"),
        )
        answer = HttpResponseBadRequest("The request body was cut short.")
        # Django's own "Bad Request: <path>" line would be a second line for one event.
        answer._has_been_logged = True
        return answer

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Turn the view's ``UnreadablePostError`` into the answer above."""
        if isinstance(exception, UnreadablePostError):
            request.client_disconnected = True
            return HttpResponseBadRequest()
        return None


# Scripts, styles, fonts and frames from this site only; images also as data: URLs
# (the favicon is an SVG file, the admin's icons are data URLs in its CSS).
SITE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
# The admin's own templates, and the event overview's (monitoring/templates), carry
# inline styles, so there styles may be inline; scripts stay the site's files only.
ADMIN_CSP = SITE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


class ContentSecurityPolicyMiddleware:
    """Set ``Content-Security-Policy`` on HTML responses that have none.

    Django 5.2 has no CSP support of its own. A response that already sets a policy
    keeps it: downloads send ``default-src 'none'; sandbox``. Non-HTML answers (JSON,
    files, metrics) get none: a policy governs documents a browser renders.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" in response:
            return response
        if not response.get("Content-Type", "").startswith("text/html"):
            return response
        response["Content-Security-Policy"] = (
            ADMIN_CSP if request.path.startswith(_admin_prefix()) else SITE_CSP
        )
        return response


def _admin_prefix() -> str:
    from django.urls import reverse

    return reverse("admin:index")
