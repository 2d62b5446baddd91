"""How long a phrase search takes over five 1 MB documents, snippets bounded or not.

    .venv/bin/python bench/search_phrase.py [--documents 5] [--megabytes 1] [--database-url URL]

Fills a temporary SQLite database (or ``--database-url``, which it empties first) with
N documents of M MB of ordinary text in which the phrase "alpha beta" recurs, indexed
through ``indexing.services.index_upload`` as the indexing consumer does, then times
``search_uploads('"alpha beta"')`` (the search page's call) with snippets made from the
first ``SNIPPET_SOURCE_CHARS`` characters, and once more from whole texts (the behaviour
before issue 21) for comparison. Prints the times; asserts nothing about them.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = [
    "the",
    "survey",
    "counted",
    "herons",
    "egrets",
    "and",
    "plovers",
    "along",
    "the",
    "northern",
    "shore",
    "while",
    "volunteers",
    "kept",
    "notes",
    "on",
    "weather",
    "tides",
    "and",
    "the",
    "state",
    "of",
    "the",
    "reeds",
]


def document(size: int, seed: int) -> str:
    """About ``size`` characters of prose with "alpha beta" every few sentences."""
    parts: list[str] = []
    total = 0
    sentence = 0
    while total < size:
        sentence += 1
        words = [WORDS[(seed + sentence * 7 + i * 3) % len(WORDS)] for i in range(14)]
        if sentence % 3 == 0:
            words[5:5] = ["alpha", "beta"]
        line = " ".join(words).capitalize() + ". "
        parts.append(line)
        total += len(line)
    return "".join(parts)


def timed(label: str, run) -> float:
    started = time.perf_counter()
    hits = run()
    elapsed = time.perf_counter() - started
    print(f"{label}: {elapsed:.3f} s ({len(hits)} hits)")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=5)
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--database-url")
    parser.add_argument("--query", default='"alpha beta"')
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="search-phrase-")
    os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{tmp}/db.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + secrets.token_urlsafe(50))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from indexing import search, services
    from indexing.extraction import Extraction

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    size = int(args.megabytes * 1_000_000)
    for n in range(1, args.documents + 1):
        services.index_upload(
            upload_id=n,
            owner_id=1,
            name=f"survey-{n}.txt",
            extraction=Extraction(document(size, seed=n), ""),
        )
    print(
        f"{connection.vendor}: {args.documents} documents of {size:,} characters, "
        f"query {args.query}"
    )

    def run() -> list[object]:
        return services.search_uploads(query=args.query, owner_id=1)

    run()  # warm the caches, as a running site has them
    timed(f"snippets from the first {search.SNIPPET_SOURCE_CHARS:,} characters", run)
    bounded = search.SNIPPET_SOURCE_CHARS
    search.SNIPPET_SOURCE_CHARS = size * 2
    try:
        timed("snippets from whole texts (before issue 21)", run)
    finally:
        search.SNIPPET_SOURCE_CHARS = bounded


if __name__ == "__main__":
    main()
