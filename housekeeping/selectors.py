"""Reads that replay and retention share: the event log walked in chunks."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Q, QuerySet

from events.models import Event


def events_in_chunks(events: QuerySet[Event], *, chunk_size: int) -> Iterator[list[Event]]:
    """``events`` in (occurred_at, id) order, by keyset, ``chunk_size`` at a time.

    Keyset rather than OFFSET: each page is an index range scan from the last row seen,
    so the millionth event costs what the first did, and rows appended (new uploads) or
    deleted (a prune) meanwhile do not shift the pages.
    """
    ordered = events.order_by("occurred_at", "id")
    last: Event | None = None
    while True:
        page = ordered
        if last is not None:
            page = page.filter(
                Q(occurred_at__gt=last.occurred_at)
                | Q(occurred_at=last.occurred_at, id__gt=last.id)
            )
        chunk = list(page[:chunk_size])
        if not chunk:
            return
        yield chunk
        if len(chunk) < chunk_size:
            return
        last = chunk[-1]
