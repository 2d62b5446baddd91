"""``replay_events``: re-deliver stored events to consumers, streaming the event log.

Examples::

    manage.py replay_events --consumer indexing --since 2024-05-01      # what indexing missed
    manage.py replay_events --dead                                      # every dead delivery
    manage.py replay_events --consumer search2 --inline                 # backfill a new consumer
    manage.py replay_events --upload 42 --force --dry-run               # what a forced replay would do

Deliveries already ``done`` are skipped unless ``--force``; a forced replay is safe
because every handler is idempotent (see ``events/replay.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from events.progress import terminal_progress
from events.replay import (
    DEFAULT_CHUNK_SIZE,
    ConsumerTally,
    Mode,
    ReplayArgumentError,
    ReplayReport,
    count_selected_events,
    parse_selection,
    replay_events,
)


class Command(BaseCommand):
    help = (
        "Re-deliver stored events to their consumers. Deliveries already done are skipped "
        "unless --force; missing deliveries (a consumer added later) are created. Reads the "
        "event log in chunks, so memory stays flat however many events there are."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--consumer",
            action="append",
            default=[],
            dest="consumers",
            metavar="NAME",
            help="only this consumer (repeatable; default: every registered consumer)",
        )
        parser.add_argument(
            "--type",
            action="append",
            default=[],
            dest="types",
            metavar="TYPE",
            help="only events of this type, e.g. file.uploaded (repeatable)",
        )
        parser.add_argument(
            "--since", metavar="ISO", help="only events that occurred at or after this time"
        )
        parser.add_argument(
            "--until", metavar="ISO", help="only events that occurred before this time"
        )
        parser.add_argument(
            "--event",
            action="append",
            default=[],
            dest="events",
            metavar="UUID",
            help="only this event (repeatable)",
        )
        parser.add_argument(
            "--upload",
            action="append",
            default=[],
            dest="uploads",
            metavar="ID",
            help="only events about this upload (repeatable)",
        )
        parser.add_argument(
            "--dead",
            action="store_true",
            help="only dead deliveries: no backfill, open ones left alone (with --force, done ones too)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="also deliveries already done: reset them to pending and run them again",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what would be done per consumer; change and publish nothing",
        )
        parser.add_argument(
            "--inline",
            action="store_true",
            help="run the handlers in this process through the same ledger, without the broker",
        )
        parser.add_argument(
            "--chunk-size",
            default=str(DEFAULT_CHUNK_SIZE),
            metavar="N",
            help=f"events read per query (default {DEFAULT_CHUNK_SIZE})",
        )

    def handle(self, *args: object, **options: Any) -> None:
        try:
            selection = parse_selection(
                consumers=options["consumers"],
                types=options["types"],
                since=options["since"],
                until=options["until"],
                event_ids=options["events"],
                upload_ids=options["uploads"],
                dead_only=options["dead"],
                force=options["force"],
            )
        except ReplayArgumentError as exc:
            raise CommandError(str(exc)) from None
        chunk_size = _positive_int("--chunk-size", options["chunk_size"])
        if options["dry_run"]:
            mode = Mode.DRY_RUN
        elif options["inline"]:
            mode = Mode.INLINE
        else:
            mode = Mode.PUBLISH

        with terminal_progress(
            self.stdout,
            total=lambda: count_selected_events(selection),
            desc=_LABELS[mode],
            unit="events",
        ) as on_progress:
            report = replay_events(
                selection=selection, mode=mode, chunk_size=chunk_size, on_progress=on_progress
            )
        for line in summary_lines(report, force=selection.force):
            self.stdout.write(line)
        if report.broker_failed:
            raise CommandError(
                f"the broker is unreachable: {report.unpublished} deliveries wait in the "
                "outbox, and the relay will publish them when it is back"
            )


_LABELS = {Mode.PUBLISH: "replaying", Mode.INLINE: "running", Mode.DRY_RUN: "dry run"}


def _positive_int(option: str, value: object) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise CommandError(f"{option}: {value!r} is not a positive integer")
    return int(text)


def summary_lines(report: ReplayReport, *, force: bool) -> list[str]:
    """The human summary: one line per consumer, then a total."""
    lines = []
    verb = {
        Mode.DRY_RUN: "would deliver",
        Mode.PUBLISH: "re-delivering",
        Mode.INLINE: "ran",
    }[report.mode]
    for name, tally in report.consumers.items():
        done_part = (
            f"{tally.reset_done} done reset" if force else f"{tally.skipped_done} done skipped"
        )
        line = (
            f"{name}: {verb} {tally.selected} ("
            f"{tally.backfilled} missing created, {tally.reset_dead} dead reset, "
            f"{tally.resent} open, {done_part})"
        )
        if report.mode is Mode.INLINE and tally.outcomes:
            line += " -> " + ", ".join(f"{n} {o}" for o, n in sorted(tally.outcomes.items()))
        lines.append(line)
    if report.events_scanned == 0:
        lines.append("no stored event matches the selection")
    if report.mode is Mode.DRY_RUN:
        lines.append(
            f"dry run: {report.events_scanned} events read, {report.selected} deliveries "
            "would be re-delivered; nothing was changed or published"
        )
    elif report.mode is Mode.INLINE:
        left = _left_retrying(report.consumers.values())
        lines.append(
            f"{report.events_scanned} events read, {report.selected} deliveries run in this "
            "process"
            + (
                f"; {left} left retrying: the relay re-sends them once due, or run this again"
                if left
                else ""
            )
        )
    else:
        lines.append(
            f"{report.events_scanned} events read, "
            f"{report.selected - report.unpublished} deliveries published"
        )
    return lines


def _left_retrying(tallies: Iterable[ConsumerTally]) -> int:
    return sum(tally.outcomes.get("retry", 0) for tally in tallies)
