"""What the operator's reads cost on a large ledger: /metrics, the overview charts, a prune.

    .venv/bin/python bench/ledger_reads.py [--events 50000] [--database-url URL]

Fills a temporary SQLite database (or ``--database-url``, which it empties first) with
N events, one delivery per registered consumer each, all done with an attempt, spread
over the last 60 days (a twentieth of them in the last hour), then times one
``/metrics`` render, the overview charts, and ``prune_events --older-than 30`` (with the
peak Python memory it allocated). Nothing runs against the machine's Redis or ``var/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="ledger-reads-")
    os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{tmp}/db.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    from events.models import Delivery, DeliveryAttempt, Event
    from events.registry import all_consumers
    from housekeeping.retention import cutoff_for, prune_events
    from monitoring.charts import overview_charts
    from monitoring.metrics import render_metrics

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    consumers = [c.name for c in all_consumers()]
    now = timezone.now()
    for start in range(0, args.events, 5000):
        events = []
        for i in range(start, min(start + 5000, args.events)):
            recent = i % 20 == 0
            age = dt.timedelta(
                seconds=(i * 7) % 3600 if recent else 3600 + (i * 977) % (60 * 86400)
            )
            events.append(
                Event(
                    id=uuid.uuid4(),
                    type="file.uploaded",
                    version=2,
                    occurred_at=now - age - dt.timedelta(seconds=2),
                    aggregate_id=str(i),
                    payload={"n": i},
                )
            )
        Event.objects.bulk_create(events)
        deliveries = Delivery.objects.bulk_create(
            [
                Delivery(
                    event=e,
                    consumer=name,
                    state="done",
                    attempts=1,
                    completed_at=e.occurred_at + dt.timedelta(seconds=2),
                )
                for e in events
                for name in consumers
            ]
        )
        DeliveryAttempt.objects.bulk_create(
            [
                DeliveryAttempt(
                    delivery=d, number=1, started_at=now, finished_at=now, outcome="done"
                )
                for d in deliveries
            ]
        )
    total = Delivery.objects.count()
    print(f"{args.events} events, {total} deliveries ({len(consumers)} consumers)")

    for name, run in (
        ("/metrics render", render_metrics),
        ("overview charts", lambda: overview_charts(consumers=consumers)),
    ):
        run()  # warm caches once
        began = time.perf_counter()
        for _ in range(5):
            run()
        print(f"{name}: {(time.perf_counter() - began) / 5 * 1000:.0f} ms")

    tracemalloc.start()
    began = time.perf_counter()
    report = prune_events(cutoff=cutoff_for(30))
    elapsed = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"prune --older-than 30: {report.events} events, {report.deliveries} deliveries in "
        f"{elapsed:.1f} s ({report.events / elapsed:.0f} events/s), "
        f"peak Python allocation {peak / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
