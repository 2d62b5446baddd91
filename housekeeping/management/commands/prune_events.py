"""``prune_events --older-than DAYS [--dead-older-than DAYS] [--dry-run]``: drop old events.

Examples::

    bin/manage prune_events --older-than 30 --dry-run    # what would go
    bin/manage prune_events --older-than 30              # delete it

Events whose deliveries are all done go after ``--older-than`` days, those with a dead
delivery after ``--dead-older-than`` (default ``EVENTS_DEAD_RETENTION_DAYS``), with the
consumers' own rows for them (``housekeeping.retention``). Events with a delivery still
waiting are kept, and the audit log is never touched. Beat runs the same thing daily
with ``EVENTS_RETENTION_DAYS``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from housekeeping.management.arguments import positive_int
from housekeeping.progress import terminal_progress
from housekeeping.retention import (
    DEFAULT_CHUNK_SIZE,
    PruneReport,
    count_prunable,
    cutoff_for,
    prune_consumer_rows,
    prune_events,
)


class Command(BaseCommand):
    help = (
        "Delete events older than DAYS whose deliveries are all done (or dead, past "
        "--dead-older-than), with their deliveries, attempts and consumer rows. Never events "
        "with a waiting delivery, never the audit log."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        # Checked in handle(), so a missing or bad value gets the same clear message.
        parser.add_argument("--older-than", metavar="DAYS", help="age in days (required)")
        parser.add_argument(
            "--dead-older-than",
            metavar="DAYS",
            help="age in days after which events with a dead delivery go too "
            "(default EVENTS_DEAD_RETENTION_DAYS; never fewer than --older-than)",
        )
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
        dead_days = (
            settings.EVENTS_DEAD_RETENTION_DAYS
            if options["dead_older_than"] is None
            else positive_int("--dead-older-than", options["dead_older_than"])
        )
        cutoff = cutoff_for(days)
        dead_cutoff = cutoff_for(max(days, dead_days))
        with terminal_progress(
            self.stdout,
            total=lambda: count_prunable(cutoff=cutoff, dead_cutoff=dead_cutoff),
            desc="dry run" if options["dry_run"] else "pruning",
            unit="events",
        ) as on_progress:
            report = prune_events(
                cutoff=cutoff,
                dead_cutoff=dead_cutoff,
                dry_run=options["dry_run"],
                chunk_size=chunk_size,
                on_progress=on_progress,
            )
        if not options["dry_run"]:
            report.consumer_rows += prune_consumer_rows(cutoff=cutoff)
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
    if report.consumer_rows:
        lines.append(f"{verb} {report.consumer_rows} rows of the consumers for them")
    if report.kept:
        lines.append(
            f"kept {report.kept} older events that still have a delivery not done "
            "(waiting, or dead and younger than --dead-older-than; see event_status)"
        )
    if report.dry_run:
        lines.append("dry run: nothing was deleted")
    return lines
