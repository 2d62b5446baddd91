"""Search does bounded work: snippets come from a prefix of each text, and on PostgreSQL a
web request's statements are cancelled after DATABASE_STATEMENT_TIMEOUT_MS.

Runs on whichever database the suite uses (SQLite FTS5 or PostgreSQL).
"""

from __future__ import annotations

import os
import sys

import pytest
from django.db import connection
from django.test import Client

from indexing import search as search_module
from indexing import services
from indexing.extraction import HIGHLIGHT_START, Extraction
from indexing.search import SNIPPET_SOURCE_CHARS

pytestmark = pytest.mark.django_db

# A sentence of ordinary words, none of them the terms searched for below.
FILLER = "the survey counted herons and egrets along the northern shore every spring. "


def index(upload_id: int, owner_id: int, name: str, text: str) -> None:
    services.index_upload(
        upload_id=upload_id, owner_id=owner_id, name=name, extraction=Extraction(text, "")
    )


def long_text(*, early: str, late: str) -> str:
    """``early`` within the snippet prefix, ``late`` only after it."""
    head = early + " " + FILLER * 10
    body = FILLER * (SNIPPET_SOURCE_CHARS // len(FILLER) + 10)
    return head + body + " " + late + " " + FILLER


def test_the_snippet_prefix_is_bounded_well_under_the_whole_text():
    assert 10_000 <= SNIPPET_SOURCE_CHARS <= 200_000


def test_a_term_beyond_the_prefix_finds_the_file_but_the_snippet_stays_in_the_prefix(user):
    text = long_text(early="openingword", late='"zanzibar quokka" closingword')
    index(1, user.pk, "survey.txt", text)

    hits = services.search_uploads(query="closingword", owner_id=user.pk)

    assert [hit.upload_id for hit in hits] == [1]
    snippet = hits[0].marked_snippet
    assert "closingword" not in snippet
    assert "zanzibar" not in snippet
    assert snippet.replace(HIGHLIGHT_START, "").strip()  # still something to show


def test_a_phrase_beyond_the_prefix_finds_the_file_without_a_snippet_from_there(user):
    text = long_text(early="openingword", late="zanzibar quokka")
    index(1, user.pk, "survey.txt", text)

    hits = services.search_uploads(query='"zanzibar quokka"', owner_id=user.pk)

    assert [hit.upload_id for hit in hits] == [1]
    assert "quokka" not in hits[0].snippet.lower()


def test_a_term_in_the_prefix_is_highlighted_in_the_snippet(user):
    index(1, user.pk, "survey.txt", long_text(early="openingword", late="closingword"))

    hits = services.search_uploads(query="openingword", owner_id=user.pk)

    assert [hit.upload_id for hit in hits] == [1]
    assert f"{HIGHLIGHT_START}openingword" in hits[0].marked_snippet


def test_a_name_match_still_shows_the_highlighted_name(user):
    index(1, user.pk, "quarterly-zanzibar.txt", long_text(early="x", late="y"))

    hits = services.search_uploads(query="zanzibar", owner_id=user.pk)

    assert [hit.upload_id for hit in hits] == [1]
    assert f"{HIGHLIGHT_START}zanzibar" in hits[0].marked_snippet


@pytest.mark.skipif(connection.vendor != "postgresql", reason="statement_timeout is PostgreSQL's")
def test_a_search_that_hits_the_statement_timeout_answers_with_a_message(
    user, settings, monkeypatch
):
    settings.DATABASE_STATEMENT_TIMEOUT_MS = 50

    def slow_search(**kwargs: object) -> list[object]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(2)")
        return []

    monkeypatch.setattr("indexing.views.search_uploads", slow_search)
    client = Client()
    client.force_login(user)

    response = client.get("/search/", {"q": "anything"})

    assert response.status_code == 503
    assert "took too long" in response.content.decode()
    # The request's transaction is still usable: the page rendered, and so does the next.
    settings.DATABASE_STATEMENT_TIMEOUT_MS = 30_000
    monkeypatch.setattr("indexing.views.search_uploads", search_module.search)
    assert client.get("/search/", {"q": "anything"}).status_code == 200


@pytest.mark.skipif(connection.vendor != "postgresql", reason="statement_timeout is PostgreSQL's")
def test_web_requests_run_under_the_statement_timeout(user, settings):
    settings.DATABASE_STATEMENT_TIMEOUT_MS = 12_345
    client = Client()
    client.force_login(user)

    client.get("/search/", {"q": "anything"})

    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] in ("12345ms", "12345")


def test_the_phrase_benchmark_runs_at_a_tiny_size(subprocesses):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    result = subprocesses.run(
        [sys.executable, "bench/search_phrase.py", "--documents", "2", "--megabytes", "0.05"],
        env=env,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "snippets from the first" in result.stdout
    assert "(2 hits)" in result.stdout
