"""``verify_audit``: check the audit hash chain end to end."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.models import AuditEntry
from audit.services import verify_chain
from events.progress import terminal_progress


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chain; exit 1 at the first broken entry. Draws a "
        "progress bar on a terminal."
    )

    def handle(self, *args: object, **options: object) -> None:
        with terminal_progress(
            self.stdout, total=AuditEntry.objects.count, desc="verifying", unit="entries"
        ) as on_progress:
            report = verify_chain(on_progress=on_progress)
        if report.broken is not None:
            entry = report.broken
            raise CommandError(
                f"audit chain broken at entry {entry.pk} (event {entry.event_id}, "
                f"{entry.event_type}): {report.reason}; {report.checked} entries before it are intact",
                returncode=1,
            )
        self.stdout.write(f"audit chain intact: {report.checked} entries checked")
