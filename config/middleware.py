"""Request correlation id: taken from ``X-Request-ID`` when sane, else made; echoed back."""

from __future__ import annotations

from collections.abc import Callable

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
