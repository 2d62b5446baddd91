"""``consumers [--json | --procfile | --run-workers | --ping-workers]``: the registry, as
deployment needs it. The controls (``housekeeping.controls``, each recorded in the audit
log): ``consumers pause NAME [--reason TEXT]`` and ``consumers resume NAME`` hold a
consumer on every host and let it go; ``consumers breakers`` lists the breakers,
``consumers close-breaker NAME [--key KEY]`` closes an open one and ``consumers
probe-breaker NAME [--key KEY]`` has the relay probe it on its next pass.

``--run-workers`` and ``--ping-workers`` are the compose stack's ``workers`` service and
its healthcheck: every worker the registry wants, so a new consumer app needs no edit of
``docker-compose.yml``.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from config.deployment import host_nodenames, procfile, run_workers, unanswered_workers
from events.breaker import BreakerState, all_breakers
from events.control import parked_deliveries
from events.registry import Consumer, all_consumers
from housekeeping.controls import Control, Operator, run_control
from monitoring.overview import format_age, next_probe_at

# The listing's flags, none of which goes with a subcommand.
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


def describe_breaker(breaker: BreakerState) -> tuple[str, str, str, str, str]:
    """A row of ``consumers breakers``: name, state, failures, next probe, parked."""
    if breaker.opened_at is None:
        return (breaker.name, "counting", str(breaker.failures), "-", "-")
    now = timezone.now()
    probe = next_probe_at(breaker.probe_at)
    if breaker.probe_delivery_id is not None:
        probe += f" (#{breaker.probe_delivery_id} out)"
    parked = parked_deliveries(consumer=breaker.consumer, key=breaker.key).count()
    return (
        breaker.name,
        f"open {format_age((now - breaker.opened_at).total_seconds())}",
        str(breaker.failures),
        probe,
        str(parked),
    )


class Command(BaseCommand):
    help = (
        "List the registered consumers: name, queue, event types, max attempts, time limits "
        "(soft/hard, seconds) and concurrency (worker processes wanted). --json prints a list "
        "of objects; --procfile prints the Procfile that bin/start runs; --run-workers runs "
        "every worker of the registry in the foreground (the compose workers service); "
        "--ping-workers exits 1 unless each of this host's workers answers a ping. "
        "'pause NAME [--reason TEXT]' holds a consumer's deliveries on every host (no "
        "attempt counted); 'resume NAME' lets the relay send what waited, each once. "
        "'breakers' lists the breakers (open, or counting failures); 'close-breaker NAME "
        "[--key KEY]' closes an open one when its dependency is back (what it parked goes "
        "out at once); 'probe-breaker NAME [--key KEY]' has the relay send a probe on its "
        "next pass instead of at the probe interval. Each control is recorded in the audit "
        "log; an unknown consumer or a breaker that is not open is an error (exit 1)."
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
        actions = parser.add_subparsers(
            dest="action", metavar="{pause,resume,breakers,close-breaker,probe-breaker}"
        )
        pause = actions.add_parser(
            "pause", help="hold a consumer: its deliveries wait, uncounted, until resume"
        )
        pause.add_argument("name", help="the consumer to pause")
        pause.add_argument(
            "--reason", default="", help="why, shown in event_status, /metrics and admin"
        )
        resume = actions.add_parser("resume", help="let a paused consumer run again")
        resume.add_argument("name", help="the consumer to resume")
        actions.add_parser(
            "breakers",
            help="list the breakers: open (for how long, next probe, parked deliveries) "
            "or counting failures",
        )
        for action, text in (
            (
                Control.CLOSE_BREAKER,
                "close an open breaker: its dependency is back, what it parked goes out at "
                "once (if it is still down, the breaker opens again after a few failures)",
            ),
            (
                Control.PROBE_BREAKER,
                "have the relay send a probe on its next pass instead of at the probe "
                "interval (a success closes the breaker)",
            ),
        ):
            control = actions.add_parser(action, help=text)
            control.add_argument("name", help="the consumer whose breaker it is")
            control.add_argument(
                "--key",
                default="",
                help="the breaker's key, for a consumer with one breaker per key (webhook_calls: "
                "the endpoint id); default: the consumer's own breaker",
            )

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
        self._write_table(table)

    def _control(self, options: dict[str, Any]) -> None:
        flags = [f"--{flag.replace('_', '-')}" for flag in FLAGS if options[flag]]
        if flags:
            raise CommandError(f"{' '.join(flags)} does not go with {options['action']}")
        if options["action"] == "breakers":
            self._list_breakers()
            return
        try:
            outcome = run_control(
                action=Control(options["action"]),
                consumer=options["name"],
                key=options.get("key", ""),
                reason=options.get("reason", ""),
                operator=Operator.at_command_line(),
            )
        except (LookupError, ValueError) as exc:
            raise CommandError(str(exc).strip("'\"")) from None
        self.stdout.write(outcome)

    def _list_breakers(self) -> None:
        breakers = all_breakers()
        if not breakers:
            self.stdout.write("no breaker has counted a failure: every consumer's deliveries run")
            return
        header = ("breaker", "state", "failures", "next probe", "parked")
        self._write_table([header] + [describe_breaker(breaker) for breaker in breakers])

    def _write_table(self, table: list[tuple[str, ...]]) -> None:
        """Left-aligned columns, two spaces apart, the first row the header."""
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for line in table:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            )

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def _ping_workers(self, *, timeout: float) -> None:
        missing = unanswered_workers(timeout=timeout)
        if missing:
            raise CommandError(f"no answer within {timeout:g} s from {', '.join(missing)}")
        self.stdout.write(f"every worker answers: {', '.join(host_nodenames())}")
