"""``consumers [--json] [--procfile]``: the consumer registry, as deployment needs it."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from config.deployment import procfile
from events.registry import Consumer, all_consumers


def describe(consumer: Consumer) -> dict[str, Any]:
    """What deployment needs to know about ``consumer``, JSON-safe."""
    return {
        "name": consumer.name,
        "queue": consumer.queue,
        "event_types": list(consumer.handlers),
        "max_attempts": consumer.max_attempts,
        "time_limit": consumer.time_limit,
        "soft_time_limit": consumer.soft_time_limit,
        "concurrency": consumer.concurrency,
    }


class Command(BaseCommand):
    help = (
        "List the registered consumers: name, queue, event types, max attempts, time limits "
        "(soft/hard, seconds) and concurrency (worker processes wanted). --json prints a list "
        "of objects; --procfile prints the Procfile that bin/start runs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        output = parser.add_mutually_exclusive_group()
        output.add_argument("--json", action="store_true", help="print a JSON list of objects")
        output.add_argument(
            "--procfile", action="store_true", help="print the Procfile derived from the registry"
        )

    def handle(self, *args: object, **options: Any) -> None:
        if options["procfile"]:
            self.stdout.write(procfile(), ending="")
            return
        rows = [describe(consumer) for consumer in all_consumers()]
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        header = ("name", "queue", "event types", "attempts", "time limits", "concurrency")
        table = [header] + [
            (
                row["name"],
                row["queue"],
                ",".join(row["event_types"]),
                str(row["max_attempts"]),
                f"{row['soft_time_limit']}/{row['time_limit']} s",
                str(row["concurrency"]),
            )
            for row in rows
        ]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for line in table:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            )
