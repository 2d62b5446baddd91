"""Health check: can this process reach the database and the broker?"""

from __future__ import annotations

import logging

from celery import current_app
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)

# Seconds a broker check may take: a load balancer's probe must get an answer quickly.
BROKER_TIMEOUT = 2


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception as exc:
        # The reason goes to the log, never to the response (it may name hosts or users).
        logger.warning("health: database unreachable: %s: %s", type(exc).__name__, exc)
        return False


def _broker_ok() -> bool:
    # A new connection to the URL in the app's configuration now (not one cached at
    # import), so the check follows the broker the app would publish to. Kombu's Redis
    # transport pings the server when it connects.
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT)
        return True
    except Exception as exc:
        logger.warning("health: broker unreachable: %s", type(exc).__name__)
        return False


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """200 when the database and the broker answer, 503 otherwise; no details beyond that.

    Open to anyone (load balancers, compose healthchecks), so it says only which part
    failed: never a URL, host name, version or error message.
    """
    checks = {"database": _database_ok(), "broker": _broker_ok()}
    status = 200 if all(checks.values()) else 503
    return JsonResponse(
        {"status": "ok" if status == 200 else "unavailable", **checks}, status=status
    )
