"""The search page: the signed-in user's own uploads only."""

from __future__ import annotations

import logging

from django.contrib.auth.decorators import login_required
from django.db import OperationalError, transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from indexing.search import MAX_QUERY_CHARS
from indexing.services import search_uploads

logger = logging.getLogger(__name__)

RESULTS_PER_PAGE = 20
# PostgreSQL's SQLSTATE for a statement cancelled by statement_timeout.
QUERY_CANCELED = "57014"
TOO_SLOW_MESSAGE = (
    "This search took too long and was stopped. Try fewer or more specific words, "
    "or a phrase in quotes."
)


@require_safe
@login_required
def search(request: HttpRequest) -> HttpResponse:
    """``/search/?q=``: ranked matches among the user's uploads, with highlighted snippets."""
    query = request.GET.get("q", "").strip()[:MAX_QUERY_CHARS]
    hits: list[object] = []
    error = ""
    status = 200
    if query:
        try:
            # A savepoint, so a cancelled statement leaves the request's transaction usable.
            with transaction.atomic():
                hits = search_uploads(query=query, owner_id=request.user.pk, limit=RESULTS_PER_PAGE)
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != QUERY_CANCELED:
                raise
            logger.warning("search cancelled by statement_timeout (%d chars)", len(query))
            error, status = TOO_SLOW_MESSAGE, 503
    return render(
        request,
        "indexing/search.html",
        {"query": query, "hits": hits, "limit": RESULTS_PER_PAGE, "error": error},
        status=status,
    )
