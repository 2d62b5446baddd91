"""``event_status [--json] [--check [--max-dead N] [--max-waiting-seconds S]
[--max-paused-seconds S] [--max-breaker-open-seconds S]]``.

Per consumer, what the ledger says, whether an operator paused it and which of its
breakers are open. ``--check`` turns
it into an alert for cron or a monitoring agent: exit 0 when every consumer is within the
limits, 1 with one line per breach otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from monitoring.selectors import pipeline_status, public_state_names, status_breaches

DEFAULT_MAX_DEAD = 0
DEFAULT_MAX_WAITING_SECONDS = 300.0


def _non_negative(kind: type[int] | type[float]) -> Any:
    """An argparse ``type`` accepting a number of ``kind`` that is zero or more."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text!r} is negative")
        return value

    return parse


class Command(BaseCommand):
    help = (
        "Show per consumer how many deliveries are in each state and how long the oldest "
        "has waited. --check exits 1 with one line per breach of the limits."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--check",
            action="store_true",
            help="exit 0 when every consumer is within the limits, 1 otherwise",
        )
        parser.add_argument(
            "--max-dead",
            type=_non_negative(int),
            metavar="N",
            help=f"with --check: dead deliveries allowed per consumer (default {DEFAULT_MAX_DEAD})",
        )
        parser.add_argument(
            "--max-waiting-seconds",
            type=_non_negative(float),
            metavar="S",
            help=(
                "with --check: how long a delivery may wait before it is a breach "
                f"(default {DEFAULT_MAX_WAITING_SECONDS:g})"
            ),
        )
        parser.add_argument(
            "--max-breaker-open-seconds",
            type=_non_negative(float),
            metavar="S",
            help="with --check: how long a breaker may stay open (default 0: any open one)",
        )
        parser.add_argument(
            "--max-paused-seconds",
            type=_non_negative(float),
            metavar="S",
            help="with --check: how long a consumer may stay paused (default: no limit)",
        )

    def handle(self, *args: object, **options: Any) -> None:
        limits = (
            "max_dead",
            "max_waiting_seconds",
            "max_paused_seconds",
            "max_breaker_open_seconds",
        )
        limits_given = any(options[limit] is not None for limit in limits)
        if limits_given and not options["check"]:
            raise CommandError(
                "--max-dead, --max-waiting-seconds, --max-paused-seconds and "
                "--max-breaker-open-seconds go with --check"
            )
        status = pipeline_status()
        if options["check"]:
            self._check(status, options)
        elif options["json"]:
            self.stdout.write(json.dumps(status))
        else:
            self._table(status)

    def _check(self, status: dict[str, Any], options: dict[str, Any]) -> None:
        max_dead = options["max_dead"]
        max_dead = DEFAULT_MAX_DEAD if max_dead is None else max_dead
        max_waiting = options["max_waiting_seconds"]
        max_waiting = DEFAULT_MAX_WAITING_SECONDS if max_waiting is None else max_waiting
        max_paused = options["max_paused_seconds"]
        breaches = status_breaches(
            status,
            max_dead=max_dead,
            max_waiting_seconds=max_waiting,
            max_paused_seconds=max_paused,
            max_breaker_open_seconds=options["max_breaker_open_seconds"] or 0.0,
        )
        for line in breaches:
            self.stdout.write(line)
        if breaches:
            self.stdout.flush()
            sys.exit(1)
        self.stdout.write(
            f"ok: {len(status['consumers'])} consumers within the limits "
            f"(at most {max_dead} dead, nothing waiting over {max_waiting:g} s"
            + ("" if max_paused is None else f", none paused over {max_paused:g} s")
            + ")"
        )

    def _table(self, status: dict[str, Any]) -> None:
        events = status["events"]
        self.stdout.write(
            f"events: {events['total']} total, {events['unenqueued']} with no message out"
            " (a retry before its time, a parked or paused delivery, or due for the relay)"
        )
        columns = (*public_state_names(), "oldest_pending_seconds")
        header = ("consumer", *columns, "held")
        rows = [
            (
                name,
                *("-" if figures[c] is None else str(figures[c]) for c in columns),
                _held(figures),
            )
            for name, figures in status["consumers"].items()
        ]
        widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            self.stdout.write(
                "  ".join(
                    str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )


def _held(figures: dict[str, Any]) -> str:
    """What holds a consumer, for the table: ``paused (reason)``, ``breaker open`` (with
    its keys), both, or ``-``."""
    held = []
    if figures.get("paused"):
        reason = figures.get("paused_reason")
        held.append(f"paused ({reason})" if reason else "paused")
    keys = [breaker["key"] for breaker in figures.get("breakers_open", ())]
    if keys:
        named = [key for key in keys if key]
        held.append("breaker open" + (f" [{', '.join(named)}]" if named else ""))
    return "; ".join(held) or "-"
