"""``prune_events --older-than DAYS [--dry-run]``: drop old events that are all done.

Examples::

    bin/manage prune_events --older-than 30 --dry-run    # what would go
    bin/manage prune_events --older-than 30              # delete it

Events with a delivery still waiting or dead are kept, and the audit log is never
touched. Beat runs the same thing daily with ``EVENTS_RETENTION_DAYS``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from housekeeping.management.arguments import positive_int
from housekeeping.progress import terminal_progress
from housekeeping.retention import (
    DEFAULT_CHUNK_SIZE,
    PruneReport,
    count_prunable,
    cutoff_for,
    prune_events,
)


class Command(BaseCommand):
    help = (
        "Delete events older than DAYS whose deliveries are all done, with their deliveries "
        "and attempts. Never events with a waiting or dead delivery, never the audit log."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        # Checked in handle(), so a missing or bad value gets the same clear message.
        parser.add_argument("--older-than", metavar="DAYS", help="age in days (required)")
        parser.add_argument(
            "--dry-run", action="store_true", help="print what would be deleted; delete nothing"
        )
        parser.add_argument(
            "--chunk-size",
            default=str(DEFAULT_CHUNK_SIZE),
            metavar="N",
            help=f"events per transaction (default {DEFAULT_CHUNK_SIZE})",
        )

    def handle(self, *args: object, **options: Any) -> None:
        if options["older_than"] is None:
            raise CommandError("--older-than DAYS is required, e.g. --older-than 30")
        days = positive_int("--older-than", options["older_than"])
        chunk_size = positive_int("--chunk-size", options["chunk_size"])
        cutoff = cutoff_for(days)
        with terminal_progress(
            self.stdout,
            total=lambda: count_prunable(cutoff=cutoff),
            desc="dry run" if options["dry_run"] else "pruning",
            unit="events",
        ) as on_progress:
            report = prune_events(
                cutoff=cutoff,
                dry_run=options["dry_run"],
                chunk_size=chunk_size,
                on_progress=on_progress,
            )
        for line in summary_lines(report, days=days):
            self.stdout.write(line)


def summary_lines(report: PruneReport, *, days: int) -> list[str]:
    """What was (or would be) deleted, and what older events were kept and why."""
    verb = "would delete" if report.dry_run else "deleted"
    lines = [
        f"{verb} {report.events} events, {report.deliveries} deliveries, "
        f"{report.attempts} attempts older than {days} days "
        f"(before {report.cutoff.isoformat(timespec='seconds')})"
    ]
    if report.kept:
        lines.append(
            f"kept {report.kept} older events that still have a delivery not done "
            "(waiting or dead; see event_status)"
        )
    if report.dry_run:
        lines.append("dry run: nothing was deleted")
    return lines
