"""How long a relay pass holds SQLite's write lock, at a million delivery rows.

    .venv/bin/python bench/relay_lock.py [--rows 1000000] [--due 500] [--passes 20]

Fills a temporary SQLite database (WAL, as configured) with ``--rows`` deliveries, all
``done`` but ``--due`` that wait unsent and due (as retries whose time has come) and as
many that wait with a message out. Then runs ``--passes`` relay passes, each after
making ``--due`` deliveries due again, against the in-memory broker, and times every
statement that writes (in autocommit each is its own transaction, so its duration is how
long it holds the write lock; uploads and claims wait that long at most). The reads of a
pass run in WAL mode beside writers and hold no lock. For contrast it times one full
scan of the delivery table, what the old relay ran inside its write transaction.

Prints the longest and the median write-lock hold per pass, and the whole pass time.
The target (issue 17): at most 5 ms at 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WRITES = ("UPDATE", "INSERT", "DELETE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=500)
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch}/relay.sqlite3"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
        os.environ["DJANGO_DEBUG"] = "false"
        os.environ["DJANGO_SECRET_KEY"] = uuid.uuid4().hex * 2
        os.environ["CELERY_BROKER_URL"] = "memory://"
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        run(rows=args.rows, due=args.due, passes=args.passes)


def consumers_of_uploads() -> list[str]:
    """The registered consumers of ``file.uploaded``, as the registry has them."""
    from events.registry import consumers_for
    from uploads.events import FILE_UPLOADED

    return [consumer.name for consumer in consumers_for(FILE_UPLOADED)]


def fill(rows: int, due: int) -> None:
    """``rows`` deliveries, one per consumer of ``file.uploaded`` and event, all done but
    ``due`` of the first consumer's, sent and waiting."""
    from django.db import connection, transaction

    consumers = consumers_of_uploads()
    per_event = len(consumers)
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        for first in range(0, rows // per_event, 10_000):
            events = []
            deliveries = []
            for n in range(first, min(first + 10_000, rows // per_event)):
                event_id = uuid.UUID(int=n + 1).hex
                events.append((event_id, "file.uploaded", 1, "2026-01-01 00:00:00", str(n), "{}"))
                for consumer in consumers:
                    deliveries.append((event_id, consumer))
            cursor.executemany(
                "INSERT INTO events_event (id, type, version, occurred_at, aggregate_id, payload,"
                " correlation_id, recorded_at) VALUES (%s, %s, %s, %s, %s, %s, '',"
                " '2026-01-01 00:00:00')",
                events,
            )
            cursor.executemany(
                "INSERT INTO events_delivery (event_id, consumer, state, attempts,"
                " attempts_at_redrive, last_error, task_id, breaker_key, created_at, updated_at,"
                " completed_at) VALUES (%s, %s, 'done', 1, 0, '', '', '', '2026-01-01 00:00:00',"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
                deliveries,
            )
        cursor.execute(
            "UPDATE events_delivery SET state = 'pending', enqueued_at = '2026-01-01 00:00:00'"
            " WHERE id IN (SELECT id FROM events_delivery WHERE consumer = %s"
            " ORDER BY id DESC LIMIT %s)",
            [consumers[0], due],
        )
    print(f"filled {rows:,} deliveries in {time.perf_counter() - started:.0f} s")


def make_due(due: int) -> None:
    """``due`` done deliveries become retries whose time has come, with no message out."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE events_delivery SET state = 'retrying', enqueued_at = NULL,"
            " retry_at = '2026-01-01 00:00:00' WHERE id IN (SELECT id FROM events_delivery"
            " WHERE state = 'done' AND consumer = %s LIMIT %s)",
            [consumers_of_uploads()[-1], due],
        )


@contextmanager
def timing_writes(holds: list[float]) -> Iterator[None]:
    from django.db import connection

    def wrapper(execute: Callable[..., Any], sql: str, *rest: Any) -> Any:
        if not sql.lstrip().upper().startswith(WRITES):
            return execute(sql, *rest)
        started = time.perf_counter()
        try:
            return execute(sql, *rest)
        finally:
            holds.append(time.perf_counter() - started)

    with connection.execute_wrapper(wrapper):
        yield


def run(*, rows: int, due: int, passes: int) -> None:
    from django.db import connection

    from events.relay import relay_outbox

    fill(rows, due)
    with connection.cursor() as cursor:
        started = time.perf_counter()
        cursor.execute("SELECT COUNT(*) FROM events_delivery WHERE last_error = ''")
        scan_ms = (time.perf_counter() - started) * 1000
    relay_outbox()  # warm: the first pass also declares the consumers
    longest: list[float] = []
    medians: list[float] = []
    pass_ms: list[float] = []
    for _ in range(passes):
        make_due(due)
        holds: list[float] = []
        started = time.perf_counter()
        with timing_writes(holds):
            result = relay_outbox()
        pass_ms.append((time.perf_counter() - started) * 1000)
        assert result.published == due, result
        longest.append(max(holds) * 1000)
        medians.append(statistics.median(holds) * 1000)
    print(f"{rows:,} delivery rows, {due} due per pass, {passes} passes (SQLite, WAL)")
    print(
        f"write-lock hold, longest statement per pass: max {max(longest):.2f} ms, "
        f"median {statistics.median(longest):.2f} ms"
    )
    print(f"write-lock hold, median statement: {statistics.median(medians):.2f} ms")
    print(
        f"whole pass (reads beside writers, sends, marks): median "
        f"{statistics.median(pass_ms):.1f} ms"
    )
    print(
        f"for contrast, one scan of the delivery table (the old relay, under its lock): "
        f"{scan_ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
