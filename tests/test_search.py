"""Searching the index: ranking, snippets, owners, the search page and the search command.

These run on whichever database the suite uses: FTS5 on SQLite, full-text search on
PostgreSQL.
"""

from __future__ import annotations

import io
import json

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from indexing import services
from indexing.extraction import HIGHLIGHT_END, HIGHLIGHT_START, Extraction
from indexing.search import fts5_query, highlight_html

pytestmark = pytest.mark.django_db

FILLER = (
    "The annual survey covered the wetlands, the estuary and the northern meadows, where "
    "volunteers counted many birds over several weekends in changing weather. "
)


def index(upload_id: int, owner_id: int, name: str, text: str = "", note: str = "") -> None:
    services.index_upload(
        upload_id=upload_id,
        owner_id=owner_id,
        name=name,
        extraction=Extraction(text, note),
    )


def ids(query: str, **kwargs) -> list[int]:
    return [hit.upload_id for hit in services.search_uploads(query=query, **kwargs)]


# ------------------------------------------------------------------------------
# The search service
# ------------------------------------------------------------------------------
def test_more_relevant_files_rank_first(user):
    index(1, user.pk, "passing.txt", FILLER * 5 + "One zebra was seen. " + FILLER * 5)
    index(2, user.pk, "herd.txt", "A zebra herd: zebra foals, zebra mares and a zebra stallion.")
    index(3, user.pk, "other.txt", FILLER)

    assert ids("zebra") == [2, 1]


def test_a_match_in_the_name_ranks_above_a_passing_mention(user):
    index(1, user.pk, "notes.txt", FILLER * 3 + "and a heron. " + FILLER * 3)
    index(2, user.pk, "heron.txt", FILLER)

    assert ids("heron") == [2, 1]


def test_snippet_highlights_the_matched_words(user):
    index(1, user.pk, "trip.txt", FILLER * 4 + "At noon a kingfisher dived. " + FILLER * 4)

    [hit] = services.search_uploads(query="kingfisher")

    assert f"{HIGHLIGHT_START}kingfisher{HIGHLIGHT_END}" in hit.marked_snippet
    assert "kingfisher dived" in hit.snippet
    assert HIGHLIGHT_START not in hit.snippet
    assert "<mark>kingfisher</mark>" in hit.snippet_html
    # A snippet, not the whole text.
    assert len(hit.snippet) < len(FILLER) * 3


def test_snippet_html_escapes_the_text_and_keeps_only_the_marks(user):
    index(1, user.pk, "evil.html", 'Tom & Jerry <img src=x onerror="alert(1)"> saw a puffin.')

    [hit] = services.search_uploads(query="puffin")

    html = str(hit.snippet_html)
    assert "<mark>puffin</mark>" in html
    assert "&amp;" in html
    assert "<img" not in html and "<" not in html.replace("<mark>", "").replace("</mark>", "")


def test_highlight_html_escapes_everything_but_balanced_marks():
    marked = f"<b>{HIGHLIGHT_START}a&b{HIGHLIGHT_END} {HIGHLIGHT_END}{HIGHLIGHT_START}open"

    assert highlight_html(marked) == "&lt;b&gt;<mark>a&amp;b</mark> <mark>open</mark>"


def test_file_matched_by_name_only_gets_its_name_highlighted(user):
    index(1, user.pk, "albatross_sightings-2024.pdf", "", note="PDF is encrypted; indexed by name")

    [hit] = services.search_uploads(query="albatross")

    assert hit.name == "albatross_sightings-2024.pdf"
    assert f"{HIGHLIGHT_START}albatross{HIGHLIGHT_END}" in hit.marked_snippet
    assert hit.note == "PDF is encrypted; indexed by name"


def test_search_is_limited_to_the_owner_when_one_is_given(user, other_user):
    index(1, user.pk, "alice.txt", "a gannet colony")
    index(2, other_user.pk, "bob.txt", "a gannet diving")

    assert ids("gannet", owner_id=user.pk) == [1]
    assert ids("gannet", owner_id=other_user.pk) == [2]
    assert sorted(ids("gannet")) == [1, 2]


def test_deleted_files_never_match(user):
    index(1, user.pk, "shrike.txt", "a shrike on the fence")
    services.remove_upload(upload_id=1, owner_id=user.pk, name="shrike.txt")

    assert ids("shrike") == []


def test_words_match_other_forms_of_the_same_word(user):
    index(1, user.pk, "log.txt", "Two swallows were nesting under the roof.")

    assert ids("swallow nest") == [1]


def test_web_search_syntax_phrases_or_and_exclusion(user):
    index(1, user.pk, "a.txt", "the black stork flew over the lake")
    index(2, user.pk, "b.txt", "a stork that was black flew past")
    index(3, user.pk, "c.txt", "a white egret")

    assert ids('"black stork"') == [1]
    assert sorted(ids("stork black")) == [1, 2]
    assert sorted(ids("egret or lake")) == [1, 3]
    assert ids("stork -lake") == [2]


def test_limit_caps_the_number_of_hits(user):
    for number in range(1, 6):
        index(number, user.pk, f"{number}.txt", "a wren")

    assert len(ids("wren", limit=3)) == 3


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '"unclosed phrase',
        "AND(",
        "OR",
        "NOT",
        "*",
        "wren*",
        "NEAR(wren owl)",
        "text:wren",
        "^wren",
        "-",
        "--wren",
        "wren OR",
        "(wren",
        "'; DROP TABLE indexing_indexentry; --",
        "   ",
        "\x00wren\x07",
        "-wren",
        "!!! ??? ...",
        "wren " * 200,
    ],
)
def test_query_syntax_in_user_input_never_raises(user, query):
    index(1, user.pk, "wren.txt", "a wren sang")

    hits = services.search_uploads(query=query)

    assert all(hit.upload_id == 1 for hit in hits)


def test_fts5_query_quotes_every_term():
    assert fts5_query('AND( "black stork" -lake or wren*') == (
        '(("AND(" AND "black stork") NOT "lake") OR ("wren*")'
    )
    assert fts5_query("-only -exclusions") == ""
    assert fts5_query('* ( " ') == ""


def test_queries_without_anything_to_find_return_nothing_on_every_backend(user):
    index(1, user.pk, "wren.txt", "a wren sang")

    assert ids("-owl") == []
    assert ids("* ?") == []
    assert ids("") == []


# ------------------------------------------------------------------------------
# The search page
# ------------------------------------------------------------------------------
def test_search_page_shows_only_the_signed_in_users_files(client, user, other_user):
    index(1, user.pk, "alice-puffins.txt", "puffins on the cliff")
    index(2, other_user.pk, "bob-puffins.txt", "puffins at sea")
    client.force_login(user)

    response = client.get("/search/", {"q": "puffins"})

    assert response.status_code == 200
    page = response.content.decode()
    assert "alice-puffins.txt" in page and "bob-puffins.txt" not in page
    assert "<mark>puffins</mark>" in page
    assert 'href="/uploads/1/"' in page


def test_search_page_escapes_names_and_snippets(client, user):
    index(1, user.pk, "<script>x</script>.txt", "<script>alert(1)</script> a skua")
    client.force_login(user)

    page = client.get("/search/", {"q": "skua"}).content.decode()

    assert "<mark>skua</mark>" in page
    assert "<script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;.txt" in page


def test_search_page_without_a_query_shows_the_form(client, user):
    client.force_login(user)

    response = client.get("/search/")

    assert response.status_code == 200
    assert b'name="q"' in response.content


def test_search_page_requires_login(client):
    response = client.get("/search/", {"q": "anything"})

    assert response.status_code == 302
    assert response["Location"].startswith(settings.LOGIN_URL)


# ------------------------------------------------------------------------------
# The search command
# ------------------------------------------------------------------------------
def test_search_command_json_is_a_list_of_upload_id_name_and_snippet(user, other_user):
    index(1, user.pk, "alice.txt", "an osprey with a fish")
    index(2, other_user.pk, "bob.txt", "an osprey nest")
    out = io.StringIO()

    call_command("search", "osprey", "--owner", "alice", "--json", stdout=out)

    assert json.loads(out.getvalue()) == [
        {"upload_id": 1, "name": "alice.txt", "snippet": "an osprey with a fish"}
    ]


def test_search_command_without_owner_searches_everyone_and_prints_highlights(user, other_user):
    index(1, user.pk, "alice.txt", "an osprey with a fish")
    index(2, other_user.pk, "bob.txt", "an osprey nest")
    out = io.StringIO()

    call_command("search", "osprey", stdout=out)

    text = out.getvalue()
    assert "1\talice.txt" in text and "2\tbob.txt" in text
    assert "an [osprey] with a fish" in text


def test_search_command_with_no_hits_prints_an_empty_json_list(user):
    out = io.StringIO()

    call_command("search", "nothing", "--json", stdout=out)

    assert json.loads(out.getvalue()) == []


def test_search_command_rejects_an_unknown_owner(user):
    with pytest.raises(CommandError, match="unknown owner 'nobody'"):
        call_command("search", "osprey", "--owner", "nobody")


def test_search_command_exits_non_zero_for_an_unknown_owner(run_manage):
    result = run_manage("search", "osprey", "--owner", "nobody", "--json")

    assert result.returncode != 0
    assert "unknown owner 'nobody'" in result.stderr
    assert result.stdout == ""
