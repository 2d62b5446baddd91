"""Round trips, statements and time per upload and per delivery: ours against the naive design.

    .venv/bin/python bench/cost_model.py [--items 200] [--database sqlite|postgres|both]

In this one process, on a scratch database and a private Redis (``bench/harness.py``),
without workers. For each item it counts:

- **statements**: SQL statements Django executes (``connection.execute_wrapper``);
- **transactions**: commits, an autocommit statement counting as one (each is a WAL
  flush on PostgreSQL with ``synchronous_commit = on``);
- **database round trips** (PostgreSQL): the protocol cycles libpq sends, read from its
  own trace (``PQtrace``; every cycle ends with one ``ReadyForQuery``), so ``BEGIN``,
  ``COMMIT``, savepoints and the connection health check are in it. On SQLite a
  "round trip" is a call into the library in this process: the statement count;
- **Redis commands**: ``INFO commandstats`` of the private Redis before and after;
- **ms per item**: wall time of the same work without any counting, after a warm-up.

Upload modes are ``bench/harness.py``'s: ``events`` (ours: outbox rows and the
publish after commit), ``naive`` (``on_commit(task.delay)``), ``outbox`` (our rows,
nothing published), ``none`` (the upload alone). Deliveries: ``ours`` is what the
consumer task runs (``events.delivery.run_delivery`` between the two
``close_old_connections`` of ``config/celery_signals.py``), ``naive`` the naive task's
body between the same two calls; one line per consumer and one for all four. The Celery
side of a task (fetch, decode, ack) is the same on both sides and not in it; its CPU is
in ``bench/pipeline.py``'s cost model line.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, Harness, scratch_environment

DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"


@dataclass
class Counts:
    """What ``items`` operations cost together."""

    items: int = 0
    statements: int = 0
    transactions: int = 0
    round_trips: int = 0
    redis: int = 0
    seconds: float = 0.0

    def line(self, label: str) -> str:
        per = max(self.items, 1)
        return (
            f"{label:<34} {self.statements / per:5.1f} stmts {self.transactions / per:4.1f} "
            f"write commits {self.round_trips / per:5.1f} db round trips {self.redis / per:4.1f} "
            f"redis cmds {self.seconds * 1000 / per:6.2f} ms"
        )


WRITES = ("INSERT", "UPDATE", "DELETE", "WITH")


@contextmanager
def counting(counts: Counts) -> Iterator[None]:
    """Count statements, write commits, libpq round trips and Redis commands inside the block.

    A write commit is a commit of a transaction that wrote (or a writing statement in
    autocommit): what costs a WAL flush on PostgreSQL. Read-only commits cost none.
    """
    from django.db import connection

    connection.ensure_connection()
    wrote = [False]

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any):
        counts.statements += 1
        if sql.lstrip().upper().startswith(WRITES):
            if connection.get_autocommit() and not connection.in_atomic_block:
                counts.transactions += 1
            else:
                wrote[0] = True
        return execute(sql, params, many, context)

    original_commit = connection._commit

    def commit() -> None:
        counts.transactions += wrote[0]
        wrote[0] = False
        original_commit()

    redis_before = redis_commands()
    trace = None
    if connection.vendor == "postgresql":
        trace = tempfile.NamedTemporaryFile(prefix="libpq-trace-", delete=False)  # noqa: SIM115
        connection.connection.pgconn.trace(trace.fileno())
    connection._commit = commit
    try:
        with connection.execute_wrapper(wrapper):
            yield
    finally:
        connection._commit = original_commit
        counts.redis += redis_commands() - redis_before
        if trace is not None:
            connection.connection.pgconn.untrace()
            trace.close()
            text = Path(trace.name).read_text(errors="replace")
            counts.round_trips += len(re.findall(r"\bReadyForQuery\b", text))
            os.unlink(trace.name)
    if trace is None:
        counts.round_trips = counts.statements


_stats_client: Any = None
# What reading the counters costs; not the work measured.
_OWN_COMMANDS = {"cmdstat_info", "cmdstat_client|setinfo", "cmdstat_hello", "cmdstat_select"}


def redis_commands() -> int:
    """Commands the private Redis has run so far (``INFO commandstats``), reading it excluded."""
    global _stats_client
    if _stats_client is None:
        import redis

        _stats_client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    stats = _stats_client.info("commandstats")
    return sum(entry["calls"] for name, entry in stats.items() if name not in _OWN_COMMANDS)


def timed(counts: Counts, operation: Callable[[], None]) -> None:
    started = time.perf_counter()
    operation()
    counts.seconds += time.perf_counter() - started


def measure(operations: list[Callable[[], None]], warm: int) -> Counts:
    """Counts of ``operations`` (after ``warm`` unmeasured ones): half counted, half timed.

    Counting (the trace above all) slows what it counts, so the other half is timed bare.
    """
    for operation in operations[:warm]:
        operation()
    rest = operations[warm:]
    counted, timed_ops = rest[::2], rest[1::2]
    result = Counts(items=len(counted))
    with counting(result):
        for operation in counted:
            operation()
    timing = Counts(items=len(timed_ops))
    for operation in timed_ops:
        timed(timing, operation)
    result.seconds = timing.seconds * result.items / max(timing.items, 1)
    return result


def upload_costs(harness: Harness, items: int) -> dict[str, Counts]:
    """Per ``create_upload`` in each producer mode, interleaved."""
    modes = ["events", "naive", "outbox", "none"]
    results = {mode: Counts() for mode in modes}
    warm = 3
    for _ in range(warm):
        for mode in modes:
            harness.upload(mode)
    for n in range(items):
        for mode in modes[n % 4 :] + modes[: n % 4]:
            if n % 2 == 0:
                with counting(results[mode]):
                    harness.upload(mode)
                results[mode].items += 1
            else:
                results[mode].seconds += harness.upload(mode)
    for counts in results.values():
        # Half the uploads were timed: scale their time to the counted half.
        counts.seconds *= counts.items / max(items - counts.items, 1)
    return results


def delivery_costs(harness: Harness, items: int) -> dict[tuple[str, str], Counts]:
    """Per delivery, ours against naive, for each consumer of uploads."""
    from celery import current_app
    from django.db import close_old_connections

    from bench.naive import naive_task_name
    from events.delivery import run_delivery
    from events.models import Delivery

    def events(count: int) -> list[Any]:
        before = harness.last_delivery_pk()
        for _ in range(count):
            harness.upload("outbox")
        return list(Delivery.objects.filter(pk__gt=before).select_related("event"))

    warm = 3
    ours_rows = events(items + warm)
    naive_rows = events(items + warm)
    results: dict[tuple[str, str], Counts] = {}
    for consumer in harness.consumers:
        mine = [d for d in ours_rows if d.consumer == consumer.name]
        theirs = [d for d in naive_rows if d.consumer == consumer.name]
        task = current_app.tasks[naive_task_name(consumer)]

        def ours(delivery: Delivery = None, consumer: Any = consumer) -> None:
            close_old_connections()
            outcome = run_delivery(delivery_id=delivery.pk, consumer_name=consumer.name)
            close_old_connections()
            assert outcome.outcome == "done", outcome

        def naive(delivery: Delivery = None, task: Any = task) -> None:
            close_old_connections()
            task.run(str(delivery.event_id))
            close_old_connections()

        results[(consumer.name, "ours")] = measure([lambda d=d: ours(d) for d in mine], warm)
        results[(consumer.name, "naive")] = measure([lambda d=d: naive(d) for d in theirs], warm)
    return results


def profile(label: str, operations: list[Callable[[], None]], limit: int) -> None:
    """Wall-clock cProfile of ``operations``: the functions with the most own time per item.

    Wall clock, not CPU: on PostgreSQL and Redis most of an item's time is spent
    waiting on a socket, which a CPU profile would not show.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    for operation in operations:
        operation()
    profiler.disable()
    stats = pstats.Stats(profiler)
    table = stats.stats  # type: ignore[attr-defined]
    per = 1000 / max(len(operations), 1)
    total = sum(entry[2] for entry in table.values()) * per
    print(f"profile {label}: {total:.2f} ms per item; most own time (ms per item, calls):")
    rows = sorted(((e[2], e[1], key) for key, e in table.items()), reverse=True)[:limit]
    for own, calls, (filename, line, name) in rows:
        where = filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        print(f"  {own * per:6.3f} {calls / len(operations):5.1f}  {where}:{line} {name}")


def profiles(harness: Harness, items: int, limit: int) -> None:
    """Where an upload's and a delivery's wall time goes, ours and naive."""
    from django.db import close_old_connections

    from events.delivery import run_delivery
    from events.models import Delivery

    for mode in ("events", "naive"):
        profile(f"upload {mode}", [lambda m=mode: harness.upload(m)] * items, limit)
    before = harness.last_delivery_pk()
    for _ in range(items):
        harness.upload("outbox")
    rows = list(Delivery.objects.filter(pk__gt=before).values_list("pk", "consumer"))

    def ours(pk: int, consumer: str) -> None:
        close_old_connections()
        run_delivery(delivery_id=pk, consumer_name=consumer)
        close_old_connections()

    profile("delivery ours (all consumers)", [lambda r=r: ours(*r) for r in rows], limit)


def inline_costs(harness: Harness, items: int, rounds: int = 3) -> dict[str, Counts]:
    """Per delivery of ``replay_events --inline`` (audit), claims one by one against batched.

    ``INLINE_CLAIM_BATCH`` (issue 17's prototype) 1 against its default, alternating
    round by round on fresh events; counted and timed separately, as above. Without the
    prototype (no ``INLINE_CLAIM_BATCH``) one line only.
    """
    from housekeeping import replay

    consumer = harness.consumer_named("audit")
    default = getattr(replay, "INLINE_CLAIM_BATCH", None)
    sizes = [1, default] if default else [None]
    results = {f"batch {size or 'none'}": Counts() for size in sizes}

    def run(size: int | None) -> None:
        window = harness.bulk_events(items)
        selection = replay.ReplaySelection(
            consumers=(consumer.name,), since=window[0], until=window[1]
        )
        if size is not None:
            replay.INLINE_CLAIM_BATCH = size
        replay.replay_events(selection=selection, mode=replay.Mode.INLINE)

    run(sizes[-1])  # warm
    for round_ in range(rounds):
        for size in sizes if round_ % 2 == 0 else sizes[::-1]:
            counts = results[f"batch {size or 'none'}"]
            if round_ % 2 == 0:
                with counting(counts):
                    run(size)
                counts.items += items
            else:
                timed(counts, lambda size=size: run(size))
    for counts in results.values():
        counted_rounds = (rounds + 1) // 2
        counts.seconds *= counted_rounds / max(rounds - counted_rounds, 1)
    if default:
        replay.INLINE_CLAIM_BATCH = default
    return results


def report(harness: Harness, items: int) -> dict[str, Any]:
    from django.db import connection

    print(f"cost model on {connection.vendor}, {items} items per line (half counted, half timed)")
    uploads = upload_costs(harness, items)
    for mode, counts in uploads.items():
        print(counts.line(f"upload {mode}"))
    deliveries = delivery_costs(harness, items)
    for side in ("ours", "naive"):
        total = Counts()
        for (name, who), counts in deliveries.items():
            if who != side:
                continue
            print(counts.line(f"delivery {side} {name}"))
            for field in ("items", "statements", "transactions", "round_trips", "redis"):
                setattr(total, field, getattr(total, field) + getattr(counts, field))
            total.seconds += counts.seconds
        print(total.line(f"delivery {side}, all consumers"))
    inline = inline_costs(harness, items)
    for label, counts in inline.items():
        print(counts.line(f"inline replay audit, {label}"))
    return {
        "inline": {label: vars(counts) for label, counts in inline.items()},
        "uploads": {mode: vars(counts) for mode, counts in uploads.items()},
        "deliveries": {f"{name} {who}": vars(c) for (name, who), c in deliveries.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200, help="uploads and deliveries per line")
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    )
    parser.add_argument("--json", default=None, help="also write the counts as JSON here")
    parser.add_argument(
        "--profile", type=int, default=0, help="also print the top N functions by own time"
    )
    args = parser.parse_args(argv)
    if args.database == "both":
        for database in ("sqlite", "postgres"):
            command = [sys.executable, str(Path(__file__).resolve()), "--items", str(args.items)]
            command += ["--database", database, "--postgres-url", args.postgres_url]
            command += ["--profile", str(args.profile)]
            if subprocess.run(command, cwd=ROOT).returncode != 0:
                raise SystemExit(f"bench: the {database} cost model failed")
        return
    url = args.postgres_url if args.database == "postgres" else None
    with scratch_environment(database_url=url, keep=False, name="cost") as (env, workdir):
        harness = Harness(env, workdir, concurrency=1)
        found = report(harness, args.items)
        if args.profile:
            profiles(harness, args.items, args.profile)
    if args.json:
        Path(args.json).write_text(json.dumps(found, default=str))


if __name__ == "__main__":
    main()
