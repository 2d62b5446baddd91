"""The two full-text backends behind ``indexing.services.search_uploads``.

SQLite: the FTS5 table of migration 0001, ``MATCH`` with ``bm25()`` ranking and
``snippet()``/``highlight()``. PostgreSQL: ``search_vector`` under a GIN index,
``websearch_to_tsquery``, ``ts_rank`` and ``ts_headline``. Both read the query the way
web search engines do (``"exact phrase"``, ``or``, ``-excluded``) and never raise on
what a user types: on SQLite the query is rebuilt from quoted terms, so FTS5 syntax in
user input (``AND(``, ``*``, stray quotes) is searched for as text, not parsed.

Highlighted terms come back between ``HIGHLIGHT_START`` and ``HIGHLIGHT_END``,
private-use characters that extraction removes from indexed text, so a snippet is
escaped as plain text and only those marks become HTML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.contrib.postgres.search import (
    SearchHeadline,
    SearchQuery,
    SearchRank,
    SearchVector,
)
from django.db import connection
from django.db.models import Case, F, Func, TextField, Value, When
from django.db.models.functions import Left, Length
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from indexing.extraction import HIGHLIGHT_END, HIGHLIGHT_START
from indexing.models import FTS_TABLE, IndexEntry

# Text search configuration on PostgreSQL: English stemming, like FTS5's porter.
POSTGRES_CONFIG = "english"
MAX_QUERY_CHARS = 500
MAX_QUERY_TERMS = 32
# The FTS5 tokenizer of migration 0001, for the snippet table below.
SQLITE_TOKENIZE = "porter unicode61 remove_diacritics 2"
# Per-connection scratch FTS5 table holding the page of hits' text prefixes.
SQLITE_SNIPPET_TABLE = "indexing_snippet_fts"
# bm25() weights of the FTS5 columns (name, text): a match in the name counts more.
SQLITE_COLUMN_WEIGHTS = (10.0, 1.0)
SNIPPET_TOKENS = 24
PLAIN_SNIPPET_CHARS = 160
# Snippets are made from this many characters at the start of each text, on both
# databases: snippet() (FTS5) and ts_headline (PostgreSQL) re-read the text they are
# given, and over a whole 1 MB text a phrase search took seconds (issue 21). Matching
# still covers the whole text; only the snippet shown is from this prefix.
SNIPPET_SOURCE_CHARS = 100_000
# Texts up to this long are shown whole, highlighted, on PostgreSQL.
WHOLE_TEXT_SNIPPET_CHARS = 200


@dataclass(frozen=True)
class SearchHit:
    """One matching upload, best first. ``marked_snippet`` has highlight marks in it."""

    upload_id: int
    name: str
    marked_snippet: str
    rank: float
    note: str = ""

    @property
    def snippet(self) -> str:
        """The snippet as plain text, without highlight marks."""
        return self.marked_snippet.replace(HIGHLIGHT_START, "").replace(HIGHLIGHT_END, "")

    @property
    def snippet_html(self) -> SafeString:
        """The snippet escaped for HTML, highlighted terms in ``<mark>``."""
        return highlight_html(self.marked_snippet)

    def as_json(self) -> dict[str, object]:
        """The public JSON shape (``search --json``)."""
        return {"upload_id": self.upload_id, "name": self.name, "snippet": self.snippet}


def highlight_html(marked: str) -> SafeString:
    """``marked`` escaped as text, with each marked span wrapped in ``<mark>``.

    Everything is escaped first and only the private-use marks are replaced, so no
    part of an indexed file can become markup; unbalanced marks are closed.
    """
    html: list[str] = []
    open_mark = False
    for piece in re.split(f"([{HIGHLIGHT_START}{HIGHLIGHT_END}])", marked):
        if piece == HIGHLIGHT_START:
            if not open_mark:
                html.append("<mark>")
                open_mark = True
        elif piece == HIGHLIGHT_END:
            if open_mark:
                html.append("</mark>")
                open_mark = False
        else:
            html.append(escape(piece))
    if open_mark:
        html.append("</mark>")
    # Safe: every piece of text was escaped above; only <mark> tags were added.
    return mark_safe("".join(html))


def searchable_name(name: str) -> str:
    """The name, plus its words split at punctuation for PostgreSQL's parser.

    PostgreSQL reads ``quarterly_report-2024.pdf`` as one file-name token, so a search
    for ``quarterly`` would miss it; FTS5 already splits at punctuation.
    """
    words = re.sub(r"[\W_]+", " ", name).strip()
    return f"{name} {words}" if words and words != name else name


def postgres_search_vector(*, name: str, text_expression: object = None) -> SearchVector:
    """The ``tsvector`` of an entry: its name weighted A, its text (column) weighted B."""
    return SearchVector(
        Value(searchable_name(name)), weight="A", config=POSTGRES_CONFIG
    ) + SearchVector(text_expression or "text", weight="B", config=POSTGRES_CONFIG)


def search(*, query: str, owner_id: int | None = None, limit: int = 20) -> list[SearchHit]:
    """Ranked hits for ``query`` on the database in use; empty for an empty query."""
    # NUL cannot even be sent to PostgreSQL; no control character means anything here.
    query = _CONTROL_CHARS.sub(" ", query).strip()[:MAX_QUERY_CHARS]
    if limit <= 0 or not fts5_query(query):
        # Nothing to search for: empty, punctuation only, or exclusions only (which
        # websearch_to_tsquery would turn into "every file without that word").
        return []
    if connection.vendor == "postgresql":
        return _postgres_search(query=query, owner_id=owner_id, limit=limit)
    if connection.vendor == "sqlite":
        return _sqlite_search(query=query, owner_id=owner_id, limit=limit)
    raise NotImplementedError(f"full-text search is not available on {connection.vendor}")


# ------------------------------------------------------------------------------
# SQLite FTS5
# ------------------------------------------------------------------------------
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f\ue000\ue001]")
_QUERY_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_HAS_WORD = re.compile(r"[^\W_]")


def fts5_query(query: str) -> str:
    """A safe FTS5 ``MATCH`` expression with the meaning of ``websearch_to_tsquery``.

    Every term and phrase becomes a quoted FTS5 string, so nothing the user typed is
    parsed as FTS5 syntax. Terms are ANDed; ``or`` separates alternatives; ``-term``
    excludes. Terms without a letter or digit are dropped (FTS5 would match nothing for
    them), and so is a group with exclusions only, which FTS5 cannot express. Returns
    "" when nothing searchable is left.
    """
    groups: list[tuple[list[str], list[str]]] = [([], [])]
    terms = 0
    for match in _QUERY_TOKEN.finditer(query):
        negated, phrase, word = match.groups()
        if word is not None:
            if word.lower() == "or":
                groups.append(([], []))
                continue
            negated = "-" if word.startswith("-") and len(word) > 1 else ""
            phrase = word[1:] if negated else word
        phrase = phrase.replace('"', " ").strip()
        if not _HAS_WORD.search(phrase):
            continue
        terms += 1
        if terms > MAX_QUERY_TERMS:
            break
        included, excluded = groups[-1]
        (excluded if negated else included).append(f'"{phrase}"')
    alternatives = []
    for included, excluded in groups:
        if not included:
            continue
        expression = " AND ".join(included)
        for term in excluded:
            expression = f"({expression}) NOT {term}"
        alternatives.append(f"({expression})")
    return " OR ".join(alternatives)


def _sqlite_search(*, query: str, owner_id: int | None, limit: int) -> list[SearchHit]:
    match = fts5_query(query)
    if not match:
        return []
    entries = IndexEntry._meta.db_table
    owner_clause = "AND e.owner_id = %s" if owner_id is not None else ""
    # Table names are constants and every value is a parameter. bm25() is smaller for
    # better matches; the hit's rank is its negation. No snippet() here: over a whole
    # long text it is the costly part (see _sqlite_prefix_snippets).
    sql = f"""
        SELECT e.id, e.upload_id, e.name, e.note, substr(e.text, 1, %s),
               highlight({FTS_TABLE}, 0, %s, %s),
               bm25({FTS_TABLE}, %s, %s) AS score
        FROM {FTS_TABLE}
        JOIN {entries} AS e ON e.id = {FTS_TABLE}.rowid
        WHERE {FTS_TABLE} MATCH %s AND e.deleted = 0 {owner_clause}
        ORDER BY score, e.upload_id DESC
        LIMIT %s
    """
    params: list[object] = [
        PLAIN_SNIPPET_CHARS,
        HIGHLIGHT_START,
        HIGHLIGHT_END,
        *SQLITE_COLUMN_WEIGHTS,
        match,
    ]
    if owner_id is not None:
        params.append(owner_id)
    params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    snippets = _sqlite_prefix_snippets(match=match, entry_ids=[row[0] for row in rows])
    return [
        SearchHit(
            upload_id=upload_id,
            name=name,
            marked_snippet=_choose_snippet(snippets.get(entry_id, ""), name_highlight, text),
            rank=-score,
            note=note,
        )
        for entry_id, upload_id, name, note, text, name_highlight, score in rows
    ]


def _sqlite_prefix_snippets(*, match: str, entry_ids: list[int]) -> dict[int, str]:
    """Entry id → FTS5 ``snippet()`` over the first ``SNIPPET_SOURCE_CHARS`` of its text.

    FTS5's snippet() re-tokenizes the whole column and scores every match against every
    other, so over 1 MB texts full of matches a phrase search took seconds. The page of
    hits' prefixes go into a TEMP FTS5 table (this connection's own, never written to the
    database file) with the same tokenizer, and the same MATCH gives the same snippets,
    bounded. An entry whose matches all lie beyond its prefix gets none here.
    """
    if not entry_ids:
        return {}
    entries = IndexEntry._meta.db_table
    placeholders = ", ".join(["%s"] * len(entry_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{SQLITE_SNIPPET_TABLE} "
            f"USING fts5(text, tokenize='{SQLITE_TOKENIZE}')"
        )
        cursor.execute(f"DELETE FROM temp.{SQLITE_SNIPPET_TABLE}")
        try:
            cursor.execute(
                f"INSERT INTO temp.{SQLITE_SNIPPET_TABLE}(rowid, text) "
                f"SELECT id, substr(text, 1, %s) FROM {entries} WHERE id IN ({placeholders})",
                [SNIPPET_SOURCE_CHARS, *entry_ids],
            )
            cursor.execute(
                f"SELECT rowid, snippet({SQLITE_SNIPPET_TABLE}, 0, %s, %s, '…', %s) "
                f"FROM temp.{SQLITE_SNIPPET_TABLE} WHERE {SQLITE_SNIPPET_TABLE} MATCH %s",
                [HIGHLIGHT_START, HIGHLIGHT_END, SNIPPET_TOKENS, match],
            )
            return dict(cursor.fetchall())
        finally:
            cursor.execute(f"DELETE FROM temp.{SQLITE_SNIPPET_TABLE}")


# ------------------------------------------------------------------------------
# PostgreSQL full-text search
# ------------------------------------------------------------------------------
def _postgres_search(*, query: str, owner_id: int | None, limit: int) -> list[SearchHit]:
    search_query = SearchQuery(query, search_type="websearch", config=POSTGRES_CONFIG)
    marks = {"config": POSTGRES_CONFIG, "start_sel": HIGHLIGHT_START, "stop_sel": HIGHLIGHT_END}
    fragments = {
        **marks,
        "max_words": SNIPPET_TOKENS,
        "min_words": SNIPPET_TOKENS // 3,
        "max_fragments": 2,
        "fragment_delimiter": " … ",
    }
    entries = IndexEntry.objects.filter(deleted=False, search_vector=search_query)
    if owner_id is not None:
        entries = entries.filter(owner_id=owner_id)
    # Rank and order first, then headline only the page of hits: ts_headline re-parses
    # the whole text, which is the costly part.
    best = list(
        entries.annotate(rank=SearchRank(F("search_vector"), search_query))
        .order_by("-rank", "-upload_id")
        .values_list("pk", "rank")[:limit]
    )
    if not best:
        return []
    headlines = {
        row["pk"]: row
        for row in IndexEntry.objects.filter(pk__in=[pk for pk, _ in best])
        .annotate(text_length=Length("text"))
        .annotate(
            # A short text is shown whole, as FTS5's snippet() does; a long one as
            # fragments around the matches.
            text_headline=Case(
                When(
                    text_length__lte=WHOLE_TEXT_SNIPPET_CHARS,
                    then=SearchHeadline("text", search_query, highlight_all=True, **marks),
                ),
                # ts_headline re-parses all it is given: a prefix, not the whole text.
                default=SearchHeadline(
                    Left("text", SNIPPET_SOURCE_CHARS), search_query, **fragments
                ),
            ),
            # Words of the name split at punctuation (see searchable_name), for hits
            # that matched by name only.
            name_headline=SearchHeadline(
                Func(
                    F("name"),
                    Value("[^[:alnum:]]+"),
                    Value(" "),
                    Value("g"),
                    function="regexp_replace",
                    output_field=TextField(),
                ),
                search_query,
                highlight_all=True,
                **marks,
            ),
        )
        .values("pk", "upload_id", "name", "note", "text_headline", "name_headline")
    }
    hits = []
    for pk, rank in best:
        row = headlines.get(pk)
        if row is None:
            continue  # removed between the two queries
        hits.append(
            SearchHit(
                upload_id=row["upload_id"],
                name=row["name"],
                marked_snippet=_choose_snippet(row["text_headline"], row["name_headline"], ""),
                rank=float(rank),
                note=row["note"],
            )
        )
    return hits


def _choose_snippet(text_snippet: str, name_highlight: str, text: str) -> str:
    """The text snippet when it shows a match, else the highlighted name, else the text's start."""
    if HIGHLIGHT_START in (text_snippet or ""):
        return text_snippet
    if HIGHLIGHT_START in (name_highlight or ""):
        return name_highlight
    return text_snippet or text[:PLAIN_SNIPPET_CHARS]
