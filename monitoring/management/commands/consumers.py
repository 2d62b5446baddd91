"""``consumers [--json | --procfile | --run-workers | --ping-workers]``: the registry, as
deployment needs it; ``consumers pause NAME [--reason TEXT]`` and ``consumers resume NAME``:
hold a consumer on every host, and let it go (``events.control``).

``--run-workers`` and ``--ping-workers`` are the compose stack's ``workers`` service and
its healthcheck: every worker the registry wants, so a new consumer app needs no edit of
``docker-compose.yml``.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.deployment import host_nodenames, procfile, run_workers, unanswered_workers
from events.control import pause_consumer, resume_consumer
from events.registry import Consumer, all_consumers

# The listing's flags, none of which goes with pause or resume.
FLAGS = ("json", "procfile", "run_workers", "ping_workers")


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
        "of objects; --procfile prints the Procfile that bin/start runs; --run-workers runs "
        "every worker of the registry in the foreground (the compose workers service); "
        "--ping-workers exits 1 unless each of this host's workers answers a ping. "
        "'pause NAME [--reason TEXT]' holds a consumer's deliveries on every host (no "
        "attempt counted); 'resume NAME' lets the relay send what waited, each once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        output = parser.add_mutually_exclusive_group()
        output.add_argument("--json", action="store_true", help="print a JSON list of objects")
        output.add_argument(
            "--procfile", action="store_true", help="print the Procfile derived from the registry"
        )
        output.add_argument(
            "--run-workers",
            action="store_true",
            help="run one Celery worker per queue of the registry, in the foreground, until "
            "SIGTERM (passed on as a warm shutdown) or until one of them exits",
        )
        output.add_argument(
            "--ping-workers",
            action="store_true",
            help="exit 1 unless every worker --run-workers starts on this host answers a ping",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=10.0,
            help="seconds --ping-workers waits for the answers (default 10)",
        )
        actions = parser.add_subparsers(dest="action", metavar="{pause,resume}")
        pause = actions.add_parser(
            "pause", help="hold a consumer: its deliveries wait, uncounted, until resume"
        )
        pause.add_argument("name", help="the consumer to pause")
        pause.add_argument(
            "--reason", default="", help="why, shown in event_status, /metrics and admin"
        )
        resume = actions.add_parser("resume", help="let a paused consumer run again")
        resume.add_argument("name", help="the consumer to resume")

    def handle(self, *args: object, **options: Any) -> None:
        if options.get("action"):
            self._control(options)
            return
        if options["procfile"]:
            self.stdout.write(procfile(), ending="")
            return
        if options["run_workers"]:
            status = run_workers(say=self._say)
            if status:
                raise SystemExit(status)
            return
        if options["ping_workers"]:
            self._ping_workers(timeout=options["timeout"])
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

    def _control(self, options: dict[str, Any]) -> None:
        flags = [f"--{flag.replace('_', '-')}" for flag in FLAGS if options[flag]]
        if flags:
            raise CommandError(f"{' '.join(flags)} does not go with {options['action']}")
        name = options["name"]
        try:
            if options["action"] == "pause":
                state = pause_consumer(name=name, reason=options["reason"])
                since = state.paused_at.isoformat(timespec="seconds") if state.paused_at else ""
                self.stdout.write(f"{name} paused since {since}: its deliveries wait until resume")
                return
            result = resume_consumer(name=name)
        except (LookupError, ValueError) as exc:
            raise CommandError(str(exc).strip("'\"")) from None
        if not result.was_paused:
            self.stdout.write(f"{name} was not paused")
            return
        self.stdout.write(
            f"{name} resumed: the relay sends its {result.parked} waiting deliveries "
            "on its next pass"
        )

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def _ping_workers(self, *, timeout: float) -> None:
        missing = unanswered_workers(timeout=timeout)
        if missing:
            raise CommandError(f"no answer within {timeout:g} s from {', '.join(missing)}")
        self.stdout.write(f"every worker answers: {', '.join(host_nodenames())}")
