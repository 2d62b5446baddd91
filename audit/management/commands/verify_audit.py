"""``verify_audit``: check the audit hash chain end to end, and against anchors kept elsewhere."""

from __future__ import annotations

import re
from argparse import ArgumentParser, ArgumentTypeError

from django.core.management.base import BaseCommand, CommandError

from audit.models import AuditEntry
from audit.services import verify_chain
from housekeeping.progress import terminal_progress


def _hash(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value.lower()):
        raise ArgumentTypeError("must be a SHA-256 hash: 64 hexadecimal characters")
    return value.lower()


def _count(value: str) -> int:
    if not value.isdecimal() or len(value) > 18:
        raise ArgumentTypeError("must be a whole number of entries")
    return int(value)


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chain and that every event the audit consumer finished "
        "has its entry; print the count and the head hash. Keep those elsewhere and pass them "
        "back with --expect-head/--expect-count to detect entries removed from the end. "
        "Exit 1 with the first problem. Draws a progress bar on a terminal."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--expect-head",
            type=_hash,
            metavar="HASH",
            help="a head hash printed earlier: it must still be an entry of the chain",
        )
        parser.add_argument(
            "--expect-count",
            type=_count,
            metavar="N",
            help="a count printed earlier: there must be at least N entries (with "
            "--expect-head, entry N must have that hash)",
        )

    def handle(self, *args: object, **options: object) -> None:
        with terminal_progress(
            self.stdout, total=AuditEntry.objects.count, desc="verifying", unit="entries"
        ) as on_progress:
            report = verify_chain(
                on_progress=on_progress,
                expect_head=options["expect_head"],
                expect_count=options["expect_count"],
            )
        if report.broken is not None:
            entry = report.broken
            raise CommandError(
                f"audit chain broken at entry {entry.pk} (event {entry.event_id}, "
                f"{entry.event_type}): {report.reason}; {report.checked} entries before it are intact",
                returncode=1,
            )
        if not report.intact:
            raise CommandError(f"audit log not intact: {report.reason}", returncode=1)
        self.stdout.write(
            f"audit chain intact: {report.checked} entries checked, head {report.head}"
        )
