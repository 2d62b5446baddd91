"""``event_status [--json]``: per consumer, what the ledger says."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandParser

from events.selectors import pipeline_status

COLUMNS = ("done", "pending", "retrying", "dead", "oldest_pending_seconds")


class Command(BaseCommand):
    help = "Show per consumer how many deliveries are done, pending, retrying and dead."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: object, **options: object) -> None:
        status = pipeline_status()
        if options["json"]:
            self.stdout.write(json.dumps(status))
            return
        events = status["events"]
        self.stdout.write(
            f"events: {events['total']} total, {events['unenqueued']} not yet enqueued"
        )
        header = ("consumer", *COLUMNS)
        rows = [
            (name, *("-" if figures[c] is None else str(figures[c]) for c in COLUMNS))
            for name, figures in status["consumers"].items()
        ]
        widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            self.stdout.write(
                "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
            )
