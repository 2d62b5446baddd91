"""What every bench measurement stands on: processes, producers, seeded events, timed drains.

- ``scratch_environment``: Django on a scratch database (a SQLite file under
  ``var/bench/``, or a ``bench_*`` PostgreSQL database created and dropped) and a private
  ``redis-server`` on a free port; the machine's Redis and databases are never touched.
- ``BenchWorker``: the suite's ``tests.processes.CeleryWorker`` idling on a private queue
  until told which queues to consume, its completions timed (``bench/timing.py``) and
  its process tree's CPU read from ``/proc``.
- ``Harness``: the consumers of ``file.uploaded`` and their queue and task names from the
  registry, the naive and bare baselines' names, two long-lived workers (real handlers;
  no-op handlers), ``create_upload`` in each producer mode, bulk-seeded events.
- ``drain``: let a worker consume some queues until N tasks finished; a ``Drain``.

How each ratio is measured with these is in ``bench/ratios.py`` and ``bench/README.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import os
import secrets
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.timing import (  # noqa: E402
    CompletionLog,
    process_tree_cpu_seconds,
    wait_until_finished,
)
from tests.processes import CeleryWorker, RedisServer, wait_for  # noqa: E402

# Seconds a drain may take before the bench gives up.
TIMEOUT = 900


# ------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------
class BenchWorker(CeleryWorker):
    """A deployment worker idling on its own queue until told what to consume, its tasks timed."""

    def __init__(
        self,
        *,
        label: str,
        env: dict[str, str],
        workdir: Path,
        concurrency: int,
        program: Sequence[str] = (sys.executable, "-m", "celery"),
        pool: str = "prefork",
    ) -> None:
        self.label = label
        self.concurrency = concurrency
        self.pool = pool
        self.timing = CompletionLog(workdir / f"timing-{label}")
        self.timing.directory.mkdir(parents=True, exist_ok=True)
        super().__init__(
            broker_url=env["CELERY_BROKER_URL"],
            env={**env, "BENCH_TIMING_DIR": str(self.timing.directory)},
            queues=[f"bench.idle.{label}"],
            log_path=workdir / f"worker-{label}.log",
            settings_module=env["DJANGO_SETTINGS_MODULE"],
            program=program,
            # A task logged at INFO would cost every side a log line per task.
            options=["-l", "WARNING", "-P", pool],
            name=label,
        )

    @property
    def flags(self) -> str:
        """The pool, concurrency and switches it runs with, as the ``setup:`` line shows them."""
        from config.deployment import worker_argv

        switches = [
            arg for arg in worker_argv(queues=[], concurrency=1, hostname="") if "--" in arg
        ]
        return " ".join(["-P", self.pool, "-c", str(self.concurrency), *switches])

    def start_idle(self) -> None:
        """Start the worker without waiting for it (``wait_ready`` does)."""
        self.start(concurrency=self.concurrency, wait=False)

    def wait_ready(self) -> None:
        wait_for(self.is_ready, timeout=120, interval=0.3, what=f"worker {self.label}")

    def _control(self, command: str, queues: Sequence[str]) -> None:
        from celery import current_app

        for queue in queues:
            replies = getattr(current_app.control, command)(
                queue, destination=[self.hostname], reply=True, timeout=5
            )
            if not any("ok" in reply.get(self.hostname, {}) for reply in replies or []):
                raise SystemExit(f"bench: {command} {queue} on {self.hostname}: {replies}")

    def consume(self, queues: Sequence[str]) -> None:
        """Start consuming ``queues`` (``add_consumer``)."""
        self._control("add_consumer", queues)

    def stop_consuming(self, queues: Sequence[str]) -> None:
        """Stop consuming ``queues`` (``cancel_consumer``) and wait until the worker has.

        Both commands only schedule the change, in no guaranteed order: an
        ``add_consumer`` sent right after would otherwise find the queue still consumed,
        do nothing, and the late cancel would leave it unconsumed (seen with ``-P solo``).
        """
        self._control("cancel_consumer", queues)
        wait_for(
            lambda: not set(queues) & self.consumed_queues(),
            timeout=30,
            what=f"worker {self.label} to stop consuming {', '.join(queues)}",
        )

    def consumed_queues(self) -> set[str]:
        """The queues the worker says it consumes right now (``active_queues``)."""
        from celery import current_app

        replies = current_app.control.inspect([self.hostname], timeout=5).active_queues() or {}
        return {queue["name"] for queue in replies.get(self.hostname, [])}

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds of the worker and its pool so far."""
        assert self.process is not None
        return process_tree_cpu_seconds(self.process.pid)


def scratch_postgres(database_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh ``bench_*`` database on ``database_url``'s server, and how to drop it."""
    import psycopg

    parts = urlsplit(database_url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise SystemExit(f"--database-url: only PostgreSQL URLs are supported, not {parts.scheme}")
    name = f"bench_{os.getpid()}_{secrets.token_hex(3)}"
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


@contextmanager
def scratch_environment(
    *, database_url: str | None, keep: bool, name: str = "run"
) -> Iterator[tuple[dict[str, str], Path]]:
    """Django set up on a scratch database and a private Redis; yields (env, work dir).

    The work dir is ``var/bench/<name>-<time>/`` and keeps its logs; the database (a
    SQLite file there, or a ``bench_*`` database on ``database_url``'s PostgreSQL server),
    media and mail are removed afterwards unless ``keep``.
    """
    workdir = ROOT / "var" / "bench" / time.strftime(f"{name}-%Y%m%d-%H%M%S-{os.getpid()}")
    workdir.mkdir(parents=True)
    url, drop_database = f"sqlite:///{workdir / 'db.sqlite3'}", lambda: None
    if database_url:
        url, drop_database = scratch_postgres(database_url)
    redis = RedisServer(workdir / "redis")
    redis.start()
    env = {
        **os.environ,
        # Production settings plus the bench app; DEBUG off, as in production.
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": redis.url,
        "MEDIA_ROOT": str(workdir / "media"),
        "EMAIL_URL": f"filemail:////{workdir / 'mail'}",
        "LOG_LEVEL": "WARNING",
        "BENCH_NOOP_HANDLERS": "0",
    }
    # Only the workers time their tasks; this process and replay children do not.
    env.pop("BENCH_TIMING_DIR", None)
    os.environ.pop("BENCH_TIMING_DIR", None)
    os.environ.update(env)
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        yield env, workdir
    finally:
        redis.stop()
        from django.db import connections

        connections.close_all()
        drop_database()
        if not keep:
            for leftover in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm"):
                (workdir / leftover).unlink(missing_ok=True)
            shutil.rmtree(workdir / "media", ignore_errors=True)
            shutil.rmtree(workdir / "mail", ignore_errors=True)


# ------------------------------------------------------------------------------
# Drains
# ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Drain:
    """``count`` completions between ``first`` and ``last``; ``cpu`` worker seconds for ``tasks``."""

    count: int
    first: float
    last: float
    cpu: float
    tasks: int
    unit: str = "deliveries"
    ledger_span: float | None = None
    # Completions shown, when ``count`` is not it (drains combined: their intervals + 1).
    shown: int | None = None

    @classmethod
    def combine(cls, drains: Sequence[Drain]) -> Drain:
        """Drains one after the other as one: their intervals, spans and CPU summed."""
        if len(drains) == 1:
            return drains[0]
        spans = [ledger.ledger_span for ledger in drains]
        return cls(
            count=sum(d.count - 1 for d in drains) + 1,
            first=0.0,
            last=sum(d.last - d.first for d in drains),
            cpu=sum(d.cpu for d in drains),
            tasks=sum(d.tasks for d in drains),
            unit=drains[0].unit,
            ledger_span=None if None in spans else sum(spans),  # type: ignore[arg-type]
            shown=sum(d.count for d in drains),
        )

    @property
    def per_second(self) -> float:
        # Completion times bound count - 1 intervals between count completions.
        return (self.count - 1) / max(self.last - self.first, 1e-9)

    @property
    def cpu_ms(self) -> float:
        """Worker CPU milliseconds per task."""
        return self.cpu * 1000 / self.tasks

    def describe(self) -> str:
        """The figure line of this drain: rate, the ledger's own span, CPU per task."""
        ledger = ""
        if self.ledger_span is not None:
            ledger = f" (ledger completed_at span {(self.count - 1) / max(self.ledger_span, 1e-9):.0f}/s)"
        return (
            f"{self.shown or self.count} {self.unit} in {self.last - self.first:.2f}s = "
            f"{self.per_second:.1f}/s"
            f"{ledger}; worker CPU {self.cpu_ms:.2f} ms per task"
        )


def drain(
    worker: BenchWorker,
    *,
    queues: Sequence[str],
    names: set[str],
    count: int,
    what: str,
    unit: str = "deliveries",
) -> Drain:
    """Let ``worker`` consume ``queues`` until ``count`` tasks of ``names`` finished."""
    since = time.time()
    cpu = worker.cpu_seconds()
    worker.consume(queues)
    times = wait_until_finished(
        worker.timing, names, count=count, since=since, timeout=TIMEOUT, what=what
    )
    cpu = worker.cpu_seconds() - cpu
    worker.stop_consuming(queues)
    return Drain(len(times), first=times[0], last=times[-1], cpu=cpu, tasks=len(times), unit=unit)


def ledger_drain(drained: Drain, deliveries: Any, expected: int, what: str) -> Drain:
    """``drained`` checked against the ledger: every delivery done once, its completion span."""
    from django.db.models import Max, Min

    done = deliveries.filter(state="done").count()
    if done != expected:
        raise SystemExit(f"bench: {what}: {done} of {expected} deliveries done")
    span = deliveries.aggregate(first=Min("completed_at"), last=Max("completed_at"))
    seconds = (span["last"] - span["first"]).total_seconds()
    return dataclasses.replace(drained, ledger_span=seconds)


def mean_cpu_ms(drains: Iterable[Drain]) -> float:
    """The mean worker CPU milliseconds per task over ``drains``."""
    return statistics.fmean(drained.cpu_ms for drained in drains)


# ------------------------------------------------------------------------------
# The harness
# ------------------------------------------------------------------------------
class Harness:
    """The consumers of uploads, two long-lived workers, the producer and seeded events."""

    def __init__(self, env: dict[str, str], workdir: Path, *, concurrency: int) -> None:
        from django.contrib.auth.models import User
        from django.core.files.base import ContentFile
        from django.core.files.storage import default_storage

        from events.registry import consumers_for
        from uploads.events import FILE_UPLOADED

        self.env = env
        self.workdir = workdir
        self.consumers = consumers_for(FILE_UPLOADED)
        self.owner, _ = User.objects.get_or_create(
            username="bench", defaults={"email": "bench@example.com"}
        )
        self.replay_file = default_storage.save(
            "bench/replay.txt", ContentFile(b"replayed bench file with a few words to index")
        )
        self.real = BenchWorker(label="real", env=env, workdir=workdir, concurrency=concurrency)
        self.noop = BenchWorker(
            label="noop",
            env={**env, "BENCH_NOOP_HANDLERS": "1"},
            workdir=workdir,
            concurrency=concurrency,
        )
        self._uploads = itertools.count()
        self._windows = itertools.count()
        self._upload_ids = itertools.count(10**9)
        self._cold = itertools.count()

    def cold_worker(self, *, noop: bool) -> BenchWorker:
        """A fresh worker, started and answering, that has run no task yet; stop it after use.

        What a deployment has after a restart: the imports are done, the pool processes
        have no database connection, no template and no cached statement yet.
        """
        label = f"cold-{next(self._cold)}"
        env = {**self.env, "BENCH_NOOP_HANDLERS": "1" if noop else "0"}
        worker = BenchWorker(
            label=label, env=env, workdir=self.workdir, concurrency=self.real.concurrency
        )
        worker.start_idle()
        try:
            worker.wait_ready()
        except BaseException:
            worker.stop()
            raise
        return worker

    def start(self) -> None:
        """Start both workers side by side and wait until both answer."""
        self.real.start_idle()
        self.noop.start_idle()
        self.real.wait_ready()
        self.noop.wait_ready()

    def stop(self) -> None:
        self.real.stop()
        self.noop.stop()

    # -- names, from the registry and the baselines
    @property
    def queues(self) -> list[str]:
        # Once each: consumers may share a queue.
        return list(dict.fromkeys(consumer.queue for consumer in self.consumers))

    @property
    def task_names(self) -> set[str]:
        return {consumer.task_name for consumer in self.consumers}

    @property
    def naive_queues(self) -> list[str]:
        from bench.naive import naive_queue

        return list(dict.fromkeys(naive_queue(consumer) for consumer in self.consumers))

    @property
    def naive_names(self) -> set[str]:
        from bench.naive import naive_task_name

        return {naive_task_name(consumer) for consumer in self.consumers}

    @property
    def bare_queues(self) -> list[str]:
        """One bare queue per consumer queue, so bare tasks spread like deliveries."""
        return [f"bench.bare.{queue}" for queue in self.queues]

    def consumer_named(self, name: str) -> Any:
        """The consumer of uploads called ``name``; exits with the known names otherwise."""
        for consumer in self.consumers:
            if consumer.name == name:
                return consumer
        known = [consumer.name for consumer in self.consumers]
        raise SystemExit(f"--rss-consumer: {name!r} is not one of {known}")

    # -- producers
    @contextmanager
    def producing(self, mode: str) -> Iterator[None]:
        """``create_upload`` with its events as they are, naive, unpublished or none at all."""
        from bench import naive
        from uploads import services

        if not hasattr(services, "record_event"):
            raise SystemExit("bench: uploads.services no longer calls record_event; update bench")
        from django.conf import settings

        original = services.record_event
        services.record_event = {
            "events": original,
            "background": original,
            "naive": naive.record_event_naively,
            "outbox": naive.recording_without_publishing(original),
            "none": naive.record_no_event,
        }[mode]
        # "background": ours, published by the per-process publisher thread (issue 17's
        # prototype) when this code has it; "events" always publishes in the request.
        background = getattr(settings, "EVENTS_PUBLISH_IN_BACKGROUND", None)
        if background is not None:
            settings.EVENTS_PUBLISH_IN_BACKGROUND = mode == "background"
        try:
            yield
        finally:
            services.record_event = original
            if background is not None:
                settings.EVENTS_PUBLISH_IN_BACKGROUND = background

    def upload(self, mode: str) -> float:
        """One ``create_upload`` in ``mode``; its duration in seconds."""
        from django.core.files.base import ContentFile

        from uploads.services import create_upload

        n = next(self._uploads)
        content = ContentFile(f"bench file {n} with some words".encode(), name=f"f{n}.txt")
        before = self.last_delivery_pk() if mode == "background" else 0
        with self.producing(mode):
            started = time.perf_counter()
            create_upload(owner=self.owner, file=content)
            took = time.perf_counter() - started
        if mode == "background":
            # Untimed: the publisher thread's work must not land in the next upload's time.
            self._wait_published(before)
        return took

    def _wait_published(self, after_pk: int) -> None:
        from events.models import Delivery

        wait_for(
            lambda: not Delivery.objects.filter(pk__gt=after_pk, enqueued_at__isnull=True).exists(),
            timeout=30,
            interval=0.002,
            what="the background publisher",
        )

    def check_modes(self) -> None:
        """Each producer mode writes what it claims to, or the comparisons mean nothing."""
        from events.models import Delivery, Event

        expected = {"events": (1, len(self.consumers)), "outbox": (1, len(self.consumers))}
        expected |= {"naive": (1, 0), "none": (0, 0)}
        for mode, (events, deliveries) in expected.items():
            before = (Event.objects.count(), Delivery.objects.count())
            self.upload(mode)
            wrote = (Event.objects.count() - before[0], Delivery.objects.count() - before[1])
            if wrote != (events, deliveries):
                raise SystemExit(
                    f"bench: an upload in mode {mode} wrote {wrote} (events, deliveries)"
                )

    def publish_bare(self, count: int) -> None:
        """``count`` no-op tasks spread over one bare queue per consumer, like deliveries."""
        from celery import current_app

        from bench.tasks import noop

        bare_queues = self.bare_queues
        with current_app.producer_or_acquire() as producer:
            for n in range(count):
                noop.apply_async(
                    kwargs={"delivery_id": n, "event_id": str(uuid.uuid4()), "event_type": "x"},
                    queue=bare_queues[n % len(bare_queues)],
                    producer=producer,
                )

    def last_delivery_pk(self) -> int:
        from events.models import Delivery

        return Delivery.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

    def warm_up(self) -> None:
        """A few of everything first, so no side pays for imports and first connections.

        Starts with ``check_modes``, whose one upload per mode the real worker drains here.
        """
        self.check_modes()
        count, k = 3, len(self.consumers)
        for _ in range(count):
            self.upload("events")
            self.upload("naive")
        for queues, names in (
            (self.queues, self.task_names),
            (self.naive_queues, self.naive_names),
        ):
            drain(self.real, queues=queues, names=names, count=(count + 1) * k, what="warming up")
        for _ in range(count):
            self.upload("events")
        drain(
            self.noop, queues=self.queues, names=self.task_names, count=count * k, what="warming up"
        )
        self.publish_bare(count)
        drain(
            self.noop, queues=self.bare_queues, names={"bench.noop"}, count=count, what="warming up"
        )

    # -- seeded events, for replay
    def bulk_events(self, count: int) -> tuple[dt.datetime, dt.datetime]:
        """``count`` stored ``file.uploaded`` events in a time window of their own (bulk_create)."""
        from events.models import Event
        from events.schemas import schemas
        from uploads.events import FILE_UPLOADED

        start = dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=next(self._windows))
        version = schemas.current_version(FILE_UPLOADED)
        batch: list[Event] = []
        for i in range(count):
            upload_id = next(self._upload_ids)
            batch.append(
                Event(
                    id=uuid.uuid4(),
                    type=FILE_UPLOADED,
                    version=version,
                    occurred_at=start + dt.timedelta(milliseconds=i),
                    aggregate_id=str(upload_id),
                    actor=self.owner.pk,
                    payload={
                        "upload_id": upload_id,
                        "owner_id": self.owner.pk,
                        "name": f"replayed-{upload_id}.txt",
                        "size": 46,
                        "storage_name": self.replay_file,
                        "content_type": "text/plain",
                        "sha256": "",
                    },
                )
            )
            if len(batch) == 5000:
                Event.objects.bulk_create(batch)
                batch = []
        Event.objects.bulk_create(batch)
        return start, start + dt.timedelta(days=1)

    def window_deliveries(self, consumer: Any, window: tuple[dt.datetime, dt.datetime]) -> Any:
        """``consumer``'s deliveries of the events seeded in ``window``."""
        from events.models import Delivery

        return Delivery.objects.filter(
            consumer=consumer.name,
            event__occurred_at__gte=window[0],
            event__occurred_at__lt=window[1],
        )
