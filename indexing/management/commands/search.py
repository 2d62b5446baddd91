"""``python manage.py search QUERY [--owner USERNAME] [--json]``: full-text search of uploads."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from indexing.extraction import HIGHLIGHT_END, HIGHLIGHT_START
from indexing.services import search_uploads


class Command(BaseCommand):
    help = (
        "Search the full-text index of uploads. QUERY takes web-search syntax: words, "
        '"a phrase", this or that, -excluded. --json prints a list of objects with '
        "upload_id, name and snippet."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "query", nargs="+", metavar="QUERY", help="what to search for (words are joined)"
        )
        parser.add_argument("--owner", metavar="USERNAME", help="only this user's uploads")
        parser.add_argument(
            "--limit", type=int, default=20, help="at most this many hits (default 20)"
        )
        parser.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        query = " ".join(options["query"]).strip()
        if not query:
            raise CommandError("the query is empty")
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        owner_id = None
        if options["owner"] is not None:
            owner_id = self._owner_id(options["owner"])
        hits = search_uploads(query=query, owner_id=owner_id, limit=options["limit"])

        if options["json"]:
            self.stdout.write(json.dumps([hit.as_json() for hit in hits], ensure_ascii=False))
            return
        if not hits:
            self.stdout.write("no matches")
            return
        for hit in hits:
            self.stdout.write(f"{hit.upload_id}\t{hit.name}")
            # Highlights as [brackets]: readable in any terminal and in a pipe.
            snippet = hit.marked_snippet.replace(HIGHLIGHT_START, "[").replace(HIGHLIGHT_END, "]")
            snippet = " ".join(snippet.split())
            if snippet:
                self.stdout.write(f"\t{snippet}")
            if hit.note:
                self.stdout.write(f"\t({hit.note})")

    def _owner_id(self, username: str) -> int:
        User = get_user_model()
        owner = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
        if owner is None:
            raise CommandError(f"unknown owner {username!r}: no user has that username")
        return owner.pk
