"""The ledger's cost per delivery, in-process: claim and finish around a no-op handler.

    .venv/bin/python bench/ledger_cost.py [--deliveries 3000] [--database-url URL]

Runs, side by side over fresh pending deliveries of a no-op consumer, three versions of
the two ledger steps a worker takes per delivery, claim and finish (the fail step costs
the same as finish and runs only on errors): ``engine``, ``events.delivery`` as shipped;
``orm``, the same statements through Django querysets (the engine's first version); and
``sql``, the engine's own statements alone (``UPDATE … RETURNING`` claim and an event read;
the fenced ``UPDATE`` and the attempt ``INSERT``), without building the event, envelope
and handler call around them. Prints microseconds per delivery for each
step. No broker is involved:
this is the database work a worker does per delivery, the part the engine controls.

Uses a temporary SQLite database (WAL, as configured) unless ``--database-url`` names
a PostgreSQL database, which must exist and is migrated and used as is.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["DATABASE_URL"] = args.database_url or f"sqlite:///{scratch}/ledger.sqlite3"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
        # As workers run in production: DEBUG off (no query log kept per statement).
        os.environ["DJANGO_DEBUG"] = "false"
        os.environ["DJANGO_SECRET_KEY"] = uuid.uuid4().hex * 2
        os.environ["CELERY_BROKER_URL"] = "memory://"
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        run(args.deliveries)


def run(count: int) -> None:
    from django.db import connection

    from events import delivery as engine
    from events.registry import Consumer

    consumer = Consumer(
        name="ledger_bench", queue="ledger_bench", handlers={"file.deleted": lambda e: None}
    )
    print(f"{connection.vendor}, {count} deliveries per variant, no-op handler")
    print(f"{'variant':<10} {'claim µs':>9} {'finish µs':>10} {'total µs':>9}")
    variants = (
        ("engine", engine_claim(engine, consumer), engine_finish(engine), {}),
        # Issue 17's claim prototypes one at a time: the claim's commit flushed to the WAL
        # as before (no_flush off), and the two v2 statements without either (sql).
        ("flushed", engine_claim(engine, consumer), engine_finish(engine), {"_no_flush": str}),
        ("orm", orm_claim(consumer), orm_finish(consumer), {}),
        ("sql", sql_claim(consumer), sql_finish(consumer), {}),
    )
    # Three times round, so that each variant is measured warm and a drift in machine
    # load reaches every variant.
    for name, claim, finish, patches in variants * 3:
        ids = make_deliveries(consumer.name, count)
        claim_s = finish_s = 0.0
        saved = {attr: getattr(engine, attr) for attr in patches}
        for attr, value in patches.items():
            setattr(engine, attr, value)
        try:
            for delivery_id in ids:
                started = time.perf_counter()
                held = claim(delivery_id)
                claimed = time.perf_counter()
                finish(held)
                claim_s += claimed - started
                finish_s += time.perf_counter() - claimed
        finally:
            for attr, value in saved.items():
                setattr(engine, attr, value)
        check_all_done(ids)
        per = 1e6 / count
        print(
            f"{name:<10} {claim_s * per:>9.0f} {finish_s * per:>10.0f} "
            f"{(claim_s + finish_s) * per:>9.0f}"
        )


def make_deliveries(consumer: str, count: int) -> list[int]:
    from django.utils import timezone

    from events.models import Delivery, Event

    events = Event.objects.bulk_create(
        [
            Event(
                id=uuid.uuid4(),
                type="file.deleted",
                version=1,
                occurred_at=timezone.now(),
                aggregate_id=str(n),
                payload={"upload_id": n, "owner_id": 1, "name": "x"},
            )
            for n in range(count)
        ]
    )
    Delivery.objects.bulk_create([Delivery(event=event, consumer=consumer) for event in events])
    return list(
        Delivery.objects.filter(consumer=consumer, state="pending")
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def check_all_done(ids: list[int]) -> None:
    from events.models import Delivery, DeliveryAttempt

    done = Delivery.objects.filter(pk__in=ids, state="done", attempts=1).count()
    tries = DeliveryAttempt.objects.filter(delivery_id__in=ids).count()
    assert done == tries == len(ids), (done, tries, len(ids))


# ------------------------------------------------------------------------------
# The engine as shipped (events.delivery)
# ------------------------------------------------------------------------------
def engine_claim(engine, consumer) -> Callable[[int], object]:
    return lambda delivery_id: engine.claim_delivery(
        delivery_id=delivery_id, consumer=consumer, task_id="bench"
    )


def engine_finish(engine) -> Callable[[object], None]:
    return lambda claim: engine.finish_delivery(claim, task_id="bench", worker="bench")


# ------------------------------------------------------------------------------
# The same steps in the Django ORM (the engine's first version)
# ------------------------------------------------------------------------------
def orm_claim(consumer) -> Callable[[int], tuple]:
    import datetime as dt

    from django.db.models import F, Q
    from django.db.models.functions import Now

    from events.delivery import lease_seconds
    from events.models import Delivery

    lease = dt.timedelta(seconds=lease_seconds(consumer))

    def claim(delivery_id: int) -> tuple:
        claimable = Q(state__in=Delivery.WAITING_STATES) | Q(
            state="running", lease_expires_at__lt=Now(), attempts__lt=consumer.max_attempts
        )
        Delivery.objects.filter(claimable, pk=delivery_id).update(
            state="running",
            attempts=F("attempts") + 1,
            lease_expires_at=Now() + lease,
            retry_at=None,
            task_id="bench",
            updated_at=Now(),
        )
        delivery = Delivery.objects.select_related("event").get(pk=delivery_id)
        return delivery.pk, delivery.attempts, time.time()

    return claim


def orm_finish(consumer) -> Callable[[tuple], None]:
    from django.db import transaction
    from django.db.models.functions import Now
    from django.utils import timezone

    from events.models import Delivery, DeliveryAttempt

    handler = consumer.handlers["file.deleted"]

    def finish(held: tuple) -> None:
        delivery_id, attempt, _ = held
        with transaction.atomic():
            handler(None)
            updated = Delivery.objects.filter(
                pk=delivery_id, state="running", attempts=attempt
            ).update(
                state="done",
                completed_at=Now(),
                lease_expires_at=None,
                retry_at=None,
                last_error="",
                updated_at=Now(),
            )
            assert updated == 1
            stamp = timezone.now()
            DeliveryAttempt.objects.create(
                delivery_id=delivery_id,
                number=attempt,
                task_id="bench",
                worker="bench",
                started_at=stamp,
                finished_at=stamp,
                outcome="done",
            )

    return finish


# ------------------------------------------------------------------------------
# The same steps by hand
# ------------------------------------------------------------------------------
def sql_claim(consumer) -> Callable[[int], tuple]:
    from django.db import connection

    from events.breaker import CLAIM_BREAKER_ROW_SQL, CLAIM_HOLD_SQL
    from events.db import now_plus_seconds_sql, now_sql
    from events.delivery import CLAIM_SQL, lease_seconds

    # Engine v2's claim: synchronous commit, the event read a statement of its own.
    claim_sql = CLAIM_SQL.format(
        now=now_sql(),
        lease=now_plus_seconds_sql(),
        no_flush="",
        hold=CLAIM_HOLD_SQL,
        breaker_row=CLAIM_BREAKER_ROW_SQL,
    )
    event_sql = "SELECT type, version, payload FROM events_event WHERE id = %s"
    # The claim's own parameters, then the consumer's name for the pause, the breaker and
    # the breaker-row check.
    held_by = [consumer.name] * 3

    def claim(delivery_id: int) -> tuple:
        with connection.cursor() as cursor:
            cursor.execute(
                claim_sql,
                [lease_seconds(consumer), "bench", delivery_id, consumer.max_attempts, *held_by],
            )
            attempts, _, event_id, *_ = cursor.fetchone()
            cursor.execute(event_sql, [event_id])
            cursor.fetchone()
        return delivery_id, attempts, time.time()

    return claim


def sql_finish(consumer) -> Callable[[tuple], None]:
    from django.db import connection, transaction
    from django.utils import timezone

    from events.db import now_sql
    from events.delivery import ATTEMPT_SQL, FINISH_SQL

    finish_sql = FINISH_SQL.format(now=now_sql())
    handler = consumer.handlers["file.deleted"]
    adapt = connection.ops.adapt_datetimefield_value

    def finish(held: tuple) -> None:
        delivery_id, attempt, _ = held
        with transaction.atomic(), connection.cursor() as cursor:
            handler(None)
            cursor.execute(finish_sql, [delivery_id, attempt])
            assert cursor.rowcount == 1
            stamp = adapt(timezone.now())
            cursor.execute(
                ATTEMPT_SQL, [delivery_id, attempt, "bench", "bench", stamp, stamp, "done", ""]
            )

    return finish


if __name__ == "__main__":
    main()
