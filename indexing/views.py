"""The search page: the signed-in user's own uploads only."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from indexing.search import MAX_QUERY_CHARS
from indexing.services import search_uploads

RESULTS_PER_PAGE = 20


@require_safe
@login_required
def search(request: HttpRequest) -> HttpResponse:
    """``/search/?q=``: ranked matches among the user's uploads, with highlighted snippets."""
    query = request.GET.get("q", "").strip()[:MAX_QUERY_CHARS]
    hits = (
        search_uploads(query=query, owner_id=request.user.pk, limit=RESULTS_PER_PAGE)
        if query
        else []
    )
    return render(
        request,
        "indexing/search.html",
        {"query": query, "hits": hits, "limit": RESULTS_PER_PAGE},
    )
