"""Fan-out throughput against bare Celery, measured side by side in one run.

    .venv/bin/python bench/fanout.py [--events 300] [--database-url URL] [--handlers real|noop]

Phase 1 uploads N small text files through ``uploads.services.create_upload`` (the real
producer path: file, row, event, three deliveries, on-commit publish) while one worker
``-Q notifications,indexing,audit -c 2`` runs the three real consumers; it ends when
every delivery is done. Phase 2 publishes 3N no-op tasks with the same app settings
(JSON, acks late) to the same kind of worker on a ``bench`` queue; it ends when the
worker has run them all. Prints events/s, bare tasks/s and the ratio
``events/s x 3 / bare tasks/s``.

Phase 3 separates the consumers from the producer: N more uploads are stored while no
worker runs (their messages wait in Redis), then a worker starts and drains them; it
prints consumer-only deliveries/s and their ratio to bare tasks/s.

``--handlers noop`` keeps the ledger, queues and on-commit fan-out but replaces the three
handlers with no-ops, to separate the pipeline's overhead from the consumers' own work.

Everything runs against a private redis-server on a free port and a temporary SQLite
database (or ``--database-url``); nothing touches the machine's Redis or ``var/``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import RedisServer, free_port, wait_for  # noqa: E402

WORKER_OPTIONS = ["-c", "2", "--without-mingle", "--without-gossip", "-l", "WARNING"]


def start_worker(env: dict[str, str], queues: str, name: str, log: Path) -> subprocess.Popen:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queues,
                "-n",
                name,
                "--include",
                "bench.tasks",
                *WORKER_OPTIONS,
            ],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def scratch_database_url(database_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh PostgreSQL database beside ``database_url``'s, and how to drop it.

    Every run starts from empty tables, and the named database is never written to.
    """
    import psycopg

    parts = urlsplit(database_url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise SystemExit(f"--database-url: only PostgreSQL URLs are supported, not {parts.scheme}")
    name = f"{parts.path.lstrip('/') or 'uploads'}_bench_{os.getpid()}"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise SystemExit(f"--database-url: cannot create a scratch database: {exc}") from None

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlunsplit(parts._replace(path=f"/{name}")), drop


def _nothing_to_drop() -> None:
    """The SQLite file lives in the work dir, which is kept for its logs."""


def stop_worker(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300, help="events to publish (default 300)")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server to run on (a scratch database is created beside this one "
        "and dropped after); default: a temporary SQLite file",
    )
    parser.add_argument(
        "--handlers",
        choices=["real", "noop"],
        default="real",
        help="run the consumers' real handlers (default) or no-ops",
    )
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be at least 1")

    database_url, drop_database = args.database_url, _nothing_to_drop
    if database_url:
        database_url, drop_database = scratch_database_url(database_url)
    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    redis = RedisServer(workdir / "redis")
    redis.start()
    env = {
        **os.environ,
        # The production settings plus the bench app (for --handlers noop).
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "BENCH_NOOP_HANDLERS": "1" if args.handlers == "noop" else "0",
        "DATABASE_URL": database_url or f"sqlite:///{workdir / 'db.sqlite3'}",
        "CELERY_BROKER_URL": redis.url,
        "MEDIA_ROOT": str(workdir / "media"),
        "EMAIL_URL": f"filemail:///{workdir / 'mail'}",
        "LOG_LEVEL": "WARNING",
        "EVENTS_RELAY_INTERVAL_SECONDS": "3600",
    }
    os.environ.update(env)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0", "--noinput"], cwd=ROOT, env=env, check=True
    )

    import django

    django.setup()
    from celery import current_app
    from django.contrib.auth.models import User
    from django.core.files.base import ContentFile
    from django.db.models import Max, Min

    from events.models import Delivery
    from uploads.services import create_upload

    owner, _ = User.objects.get_or_create(username="bench", defaults={"email": "bench@example.com"})
    log = workdir / "worker.log"
    try:
        # Phase 1: the fan-out through the real producer and the three real consumers.
        worker = start_worker(
            env, "notifications,indexing,audit", f"fanout-{free_port()}@bench", log
        )
        wait_for(lambda: current_app.control.ping(timeout=0.5), timeout=60, what="fan-out worker")
        started = time.perf_counter()
        for n in range(args.events):
            create_upload(
                owner=owner, file=ContentFile(f"bench file {n} words".encode(), name=f"f{n}.txt")
            )
        published = time.perf_counter() - started
        expected = args.events * 3
        wait_for(
            lambda: Delivery.objects.filter(state="done").count() >= expected,
            timeout=600,
            interval=0.05,
            what="all deliveries done",
        )
        fanout_elapsed = time.perf_counter() - started
        not_done = Delivery.objects.exclude(state="done").count()
        stop_worker(worker)

        # Phase 2: bare Celery no-op tasks, same app settings, same worker options.
        hostname = f"bare-{free_port()}@bench"
        worker = start_worker(env, "bench", hostname, log)
        wait_for(
            lambda: current_app.control.ping(destination=[hostname], timeout=0.5),
            timeout=60,
            what="bare worker",
        )
        from bench.tasks import noop

        def executed() -> int:
            stats = current_app.control.inspect([hostname], timeout=1).stats() or {}
            return stats.get(hostname, {}).get("total", {}).get("bench.noop", 0)

        bare_count = args.events * 3
        started = time.perf_counter()
        with current_app.producer_or_acquire() as producer:
            for n in range(bare_count):
                noop.apply_async(
                    kwargs={"delivery_id": n, "event_id": "x" * 36, "event_type": "file.uploaded"},
                    queue="bench",
                    producer=producer,
                )
        wait_for(lambda: executed() >= bare_count, timeout=600, interval=0.05, what="bare tasks")
        bare_elapsed = time.perf_counter() - started
        stop_worker(worker)

        # Phase 3: the consumers alone, draining a backlog the producer left while no
        # worker ran.
        backlog_after_pk = Delivery.objects.order_by("-pk").values_list("pk", flat=True).first()
        for n in range(args.events):
            create_upload(
                owner=owner, file=ContentFile(f"backlog {n} words".encode(), name=f"b{n}.txt")
            )
        worker = start_worker(
            env, "notifications,indexing,audit", f"drain-{free_port()}@bench", log
        )
        backlog = Delivery.objects.filter(pk__gt=backlog_after_pk)
        wait_for(
            lambda: backlog.filter(state="done").count() >= expected,
            timeout=600,
            interval=0.05,
            what="backlog drained",
        )
        stop_worker(worker)
        # The worker starts consuming before it answers a ping, so a clock started here
        # would miss the first deliveries: the ledger's own completion times span the drain.
        span = backlog.aggregate(first=Min("completed_at"), last=Max("completed_at"))
        drain_elapsed = (span["last"] - span["first"]).total_seconds()
    finally:
        redis.stop()
        from django.db import connections

        connections.close_all()
        drop_database()

    events_per_s = args.events / fanout_elapsed
    bare_per_s = bare_count / bare_elapsed
    print(f"command:   {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"database:  {env['DATABASE_URL'].split('://')[0]}; worker: {' '.join(WORKER_OPTIONS)}; "
        f"acks_late={current_app.conf.task_acks_late}, serializer={current_app.conf.task_serializer}"
    )
    print(
        f"fan-out:   {args.events} uploads -> {expected} deliveries in {fanout_elapsed:.2f}s "
        f"(publishing took {published:.2f}s; {not_done} not done): {events_per_s:.1f} events/s, "
        f"{events_per_s * 3:.1f} deliveries/s"
    )
    # Completion times bound expected - 1 intervals between expected deliveries.
    drain_per_s = (expected - 1) / drain_elapsed
    print(
        f"consumers: {expected} waiting deliveries drained in {drain_elapsed:.2f}s: "
        f"{drain_per_s:.1f} deliveries/s ({drain_per_s / (bare_count / bare_elapsed):.2f} of bare, "
        "producer not running)"
    )
    print(f"bare:      {bare_count} no-op tasks in {bare_elapsed:.2f}s: {bare_per_s:.1f} tasks/s")
    print(
        f"ratio:     events/s x 3 / bare tasks/s = {events_per_s * 3 / bare_per_s:.2f} (target >= 0.6)"
    )
    print(f"work dir:  {workdir} (worker log: {log})")


if __name__ == "__main__":
    main()
