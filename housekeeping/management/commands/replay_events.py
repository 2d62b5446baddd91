"""``replay_events``: re-deliver stored events to consumers, streaming the event log.

Examples::

    manage.py replay_events --consumer indexing --since 2024-05-01      # what indexing missed
    manage.py replay_events --dead                                      # every dead delivery
    manage.py replay_events --dead --error-contains timeout --since 2024-05-01T14:00
    manage.py replay_events --consumer search2 --inline                 # backfill a new consumer
    manage.py replay_events --upload 42 --force --dry-run               # what a forced replay would do

Deliveries already ``done`` are skipped unless ``--force``; a forced replay is safe
because every handler is idempotent (see ``housekeeping/replay.py``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from events.models import Event
from events.registry import all_consumers, get_consumer
from events.schemas import schemas
from housekeeping.controls import Operator
from housekeeping.management.arguments import positive_int
from housekeeping.progress import terminal_progress
from housekeeping.replay import (
    DEFAULT_CHUNK_SIZE,
    ConsumerTally,
    Mode,
    ReplayReport,
    ReplaySelection,
    count_selected_events,
    record_replay,
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
            "--error-contains",
            metavar="TEXT",
            help="only deliveries whose last error contains TEXT (case-insensitive); "
            "with --dead, the dead ones among them",
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
        selection = parse_selection(
            consumers=options["consumers"],
            types=options["types"],
            since=options["since"],
            until=options["until"],
            event_ids=options["events"],
            upload_ids=options["uploads"],
            dead_only=options["dead"],
            force=options["force"],
            error_contains=options["error_contains"],
        )
        chunk_size = positive_int("--chunk-size", options["chunk_size"])
        if options["dry_run"]:
            mode = Mode.DRY_RUN
        elif options["inline"]:
            mode = Mode.INLINE
        else:
            mode = Mode.PUBLISH

        read = 0

        def on_progress_and_count(events_read: int) -> None:
            nonlocal read
            read = events_read
            if on_progress is not None:  # no bar when the output is not a terminal
                on_progress(events_read)

        try:
            with terminal_progress(
                self.stdout,
                total=lambda: count_selected_events(selection),
                desc=_LABELS[mode],
                unit="events",
            ) as on_progress:
                report = replay_events(
                    selection=selection,
                    mode=mode,
                    chunk_size=chunk_size,
                    on_progress=on_progress_and_count,
                )
        except BaseException as exc:
            # Ctrl-C or a failure half way: the chunks already committed were replayed.
            outcome = f"stopped by {type(exc).__name__} after {read} events read"
            record_replay(
                selection=selection.to_json(), mode=mode, operator=_operator(), outcome=outcome
            )
            raise
        outcome = summary_lines(report, selection=selection)[-1]
        record_replay(
            selection=selection.to_json(), mode=mode, operator=_operator(), outcome=outcome
        )
        missing = missing_event_count(selection)
        if missing:
            self.stdout.write(
                f"{missing} of the {len(selection.event_ids)} selected events are not in the "
                "event log (pruned, or never stored)"
            )
        for line in summary_lines(report, selection=selection):
            self.stdout.write(line)
        if report.broker_failed:
            raise CommandError(
                f"the broker is unreachable: {report.unpublished} deliveries wait in the "
                "outbox, and the relay will publish them when it is back"
            )


def _operator() -> Operator:
    return Operator.at_command_line()


def parse_selection(
    *,
    consumers: Sequence[str] = (),
    types: Sequence[str] = (),
    since: str | None = None,
    until: str | None = None,
    event_ids: Sequence[str] = (),
    upload_ids: Sequence[str] = (),
    dead_only: bool = False,
    force: bool = False,
    error_contains: str | None = None,
) -> ReplaySelection:
    """Check command-line style values and build a ``ReplaySelection``.

    Raises ``CommandError`` with a one-line reason for an unknown consumer or
    event type, a malformed date, UUID or upload id, ``since`` not before ``until``, or
    consumers that handle none of the types. No consumers means every registered one.
    ``since`` is inclusive and ``until`` exclusive; a date without a time means midnight
    and a time without a zone means the project's time zone.
    """
    for name in consumers:
        try:
            get_consumer(name)
        except LookupError as exc:
            raise CommandError(str(exc)) from None
    known_types = set(schemas.types()) | {t for c in all_consumers() for t in c.handlers}
    for event_type in types:
        if event_type not in known_types:
            raise CommandError(
                f"unknown event type {event_type!r} (known: {', '.join(sorted(known_types))})"
            )
    if error_contains is not None and not error_contains.strip():
        raise CommandError("--error-contains: give the text to look for")
    since_at = _parse_datetime("--since", since)
    until_at = _parse_datetime("--until", until)
    if since_at and until_at and since_at >= until_at:
        raise CommandError(
            f"--since ({since_at.isoformat()}) must be before --until ({until_at.isoformat()})"
        )
    selection = ReplaySelection(
        consumers=tuple(dict.fromkeys(consumers or [c.name for c in all_consumers()])),
        types=tuple(dict.fromkeys(types)),
        since=since_at,
        until=until_at,
        event_ids=tuple(dict.fromkeys(_parse_uuid(value) for value in event_ids)),
        upload_ids=tuple(dict.fromkeys(_parse_upload_id(value) for value in upload_ids)),
        dead_only=dead_only,
        force=force,
        error_contains=(error_contains or "").strip(),
    )
    if types and not selection.handled_types():
        raise CommandError(
            f"no selected consumer ({', '.join(selection.consumers)}) handles "
            f"the selected event types ({', '.join(selection.types)})"
        )
    return selection


def _parse_datetime(option: str, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise CommandError(
            f"{option}: {value!r} is not an ISO 8601 date or date-time "
            "(e.g. 2024-05-01 or 2024-05-01T12:00:00+00:00)"
        ) from None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


def _parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except (ValueError, AttributeError):
        raise CommandError(f"--event: {value!r} is not a UUID") from None


def _parse_upload_id(value: str) -> int:
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise CommandError(f"--upload: {value!r} is not an upload id (a positive integer)")
    return int(text)


def missing_event_count(selection: ReplaySelection) -> int:
    """How many ``--event`` ids name no stored event: pruned ones, as far as we can tell."""
    if not selection.event_ids:
        return 0
    stored = Event.objects.filter(id__in=selection.event_ids).count()
    return len(selection.event_ids) - stored


_LABELS = {Mode.PUBLISH: "replaying", Mode.INLINE: "running", Mode.DRY_RUN: "dry run"}


def summary_lines(report: ReplayReport, *, selection: ReplaySelection) -> list[str]:
    """The human summary: one line per consumer, then a total; one line when nothing matched."""
    if report.events_scanned == 0:
        # Per-consumer lines of zeros would only repeat it.
        if selection.dead_only:
            return ["no dead delivery matches the selection: nothing to re-deliver"]
        if selection.error_contains:
            return [
                f"no delivery whose last error contains {selection.error_contains!r} "
                "matches the selection: nothing to re-deliver"
            ]
        return ["no stored event matches the selection"]
    force = selection.force
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
