"""The pipeline against what a team would otherwise write, measured side by side in one run.

    .venv/bin/python bench/pipeline.py [--events 300] [--database-url postgres://...]

Prints one ``ratio:`` line per target (DESIGN.md, "Performance targets"):

- guarantee overhead: the consumers draining a backlog of N uploads with their real
  handlers ÷ the naive baseline (``bench/naive.py``: ``on_commit(task.delay(event_id))``,
  no ledger, no outbox) draining the same backlog with the same handlers (>= 0.9);
- pipeline overhead: the consumers draining a backlog with no-op handlers ÷ bare Celery
  no-op tasks (>= 0.85);
- end to end: N uploads through ``create_upload`` plus every consumer ÷ the naive
  producer and tasks end to end (>= 0.85);
- upload latency: ``create_upload`` p50 (and p95) with events ÷ without any event
  (<= 1.15 at p50), the modes interleaved upload by upload;
- inline replay: ``replay_events --consumer X --inline`` events/s ÷ the live workers'
  events/s for X, per consumer (>= 3);
- replay peak RSS: the inline replay process at ``--rss-large`` events ÷ at
  ``--rss-small`` events (<= 1.2), events made with ``bulk_create``.

Every drain is timed from completion times (``bench/timing.py``, the same on every
side; the ledger's ``completed_at`` span is printed beside it as a check), never from a
worker's ping. Two long-lived workers (real handlers; no-op handlers) start once, idle
on a private queue, and are told to consume one side's queues at a time
(``add_consumer``/``cancel_consumer``), so both sides of a ratio run in the same
processes with the same settings. Worker CPU per delivery (``/proc``) gives the cost
model. Everything runs on a private redis-server on a free port and a scratch SQLite
file under ``var/bench/`` (or a scratch ``bench_*`` PostgreSQL database, created and
dropped); the machine's Redis and databases are never touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import itertools
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.timing import (  # noqa: E402
    CompletionLog,
    process_tree_cpu_seconds,
    wait_until_finished,
)
from tests.processes import RedisServer, free_port, wait_for  # noqa: E402

TIMEOUT = 900


# ------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------
class BenchWorker:
    """``celery -A config worker`` idling on its own queue until told what to consume."""

    def __init__(
        self,
        *,
        label: str,
        env: dict[str, str],
        workdir: Path,
        concurrency: int,
        launcher: Sequence[str] = (sys.executable, "-m", "celery"),
        pool: str = "prefork",
    ) -> None:
        self.label = label
        self.env = env
        self.launcher = list(launcher)
        self.options = ["-P", pool, "-c", str(concurrency), "--without-mingle", "--without-gossip"]
        self.log_path = workdir / f"worker-{label}.log"
        self.timing = CompletionLog(workdir / f"timing-{label}")
        self.timing.directory.mkdir(parents=True, exist_ok=True)
        self.hostname = f"{label}-{free_port()}@bench"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**self.env, "BENCH_TIMING_DIR": str(self.timing.directory)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.launcher,
                    *["-A", "config", "worker"],
                    *["-Q", f"bench.idle.{self.label}", "-n", self.hostname, "-l", "WARNING"],
                    *self.options,
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        from celery import current_app

        def answers() -> bool:
            if self.process is None or self.process.poll() is not None:
                raise SystemExit(f"bench: worker {self.label} exited; see {self.log_path}")
            return bool(current_app.control.ping(destination=[self.hostname], timeout=0.5))

        wait_for(answers, timeout=120, interval=0.3, what=f"worker {self.label}")

    def _control(self, command: str, queues: Sequence[str]) -> None:
        from celery import current_app

        for queue in queues:
            replies = getattr(current_app.control, command)(
                queue, destination=[self.hostname], reply=True, timeout=5
            )
            if not any("ok" in reply.get(self.hostname, {}) for reply in replies or []):
                raise SystemExit(f"bench: {command} {queue} on {self.hostname}: {replies}")

    def consume(self, queues: Sequence[str]) -> None:
        self._control("add_consumer", queues)

    def stop_consuming(self, queues: Sequence[str]) -> None:
        self._control("cancel_consumer", queues)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return process_tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()


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


# ------------------------------------------------------------------------------
# Measurements
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

    @property
    def per_second(self) -> float:
        # Completion times bound count - 1 intervals between count completions.
        return (self.count - 1) / max(self.last - self.first, 1e-9)

    @property
    def cpu_ms(self) -> float:
        """Worker CPU milliseconds per task."""
        return self.cpu * 1000 / self.tasks

    def describe(self) -> str:
        ledger = ""
        if self.ledger_span is not None:
            ledger = f" (ledger completed_at span {(self.count - 1) / max(self.ledger_span, 1e-9):.0f}/s)"
        return (
            f"{self.count} {self.unit} in {self.last - self.first:.2f}s = {self.per_second:.1f}/s"
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


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class Ratio:
    """One target: ``value`` against ``target`` (``at_least`` or at most)."""

    name: str
    value: float
    target: float
    at_least: bool
    detail: str

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        met = self.value >= self.target if self.at_least else self.value <= self.target
        return (
            f"ratio: {self.name} = {self.value:.2f} (target {sign} {self.target}) "
            f"{'met' if met else 'MISSED'} -- {self.detail}"
        )


# ------------------------------------------------------------------------------
# The bench
# ------------------------------------------------------------------------------
class Bench:
    """One run: the processes, the Django side (producer, ledger reads) and the figures."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], workdir: Path) -> None:
        from django.contrib.auth.models import User
        from django.core.files.base import ContentFile
        from django.core.files.storage import default_storage

        from events.registry import all_consumers
        from uploads.events import FILE_UPLOADED

        self.args = args
        self.env = env
        self.workdir = workdir
        self.consumers = [c for c in all_consumers() if FILE_UPLOADED in c.handlers]
        names = [c.name for c in self.consumers]
        if args.rss_consumer and args.rss_consumer not in names:
            raise SystemExit(f"--rss-consumer: {args.rss_consumer!r} is not one of {names}")
        self.owner, _ = User.objects.get_or_create(
            username="bench", defaults={"email": "bench@example.com"}
        )
        self.replay_file = default_storage.save(
            "bench/replay.txt", ContentFile(b"replayed bench file with a few words to index")
        )
        self.real = BenchWorker(
            label="real", env=env, workdir=workdir, concurrency=args.concurrency
        )
        self.noop = BenchWorker(
            label="noop",
            env={**env, "BENCH_NOOP_HANDLERS": "1"},
            workdir=workdir,
            concurrency=args.concurrency,
        )
        self.ratios: list[Ratio] = []
        self.notes: list[str] = []
        self._uploads = itertools.count()
        self._windows = itertools.count()
        self._upload_ids = itertools.count(10**9)

    # -- names derived from the registry
    @property
    def queues(self) -> list[str]:
        # Once each: consumers may share a queue.
        return list(dict.fromkeys(c.queue for c in self.consumers))

    @property
    def task_names(self) -> set[str]:
        return {f"{c.name}.handle_event" for c in self.consumers}

    @property
    def naive_queues(self) -> list[str]:
        from bench.naive import naive_queue

        return list(dict.fromkeys(naive_queue(c) for c in self.consumers))

    @property
    def naive_names(self) -> set[str]:
        from bench.naive import naive_task_name

        return {naive_task_name(c) for c in self.consumers}

    @property
    def bare_queues(self) -> list[str]:
        return [f"bench.bare.{queue}" for queue in self.queues]

    # -- producers
    @contextmanager
    def producing(self, mode: str) -> Iterator[None]:
        """``create_upload`` with its events as they are, naive, unpublished or none at all."""
        from bench import naive
        from uploads import services

        if not hasattr(services, "record_event"):
            raise SystemExit("bench: uploads.services no longer calls record_event; update bench")
        original = services.record_event
        services.record_event = {
            "events": original,
            "naive": naive.record_event_naively,
            "outbox": naive.recording_without_publishing(original),
            "none": naive.record_no_event,
        }[mode]
        try:
            yield
        finally:
            services.record_event = original

    def upload(self, mode: str) -> float:
        """One ``create_upload`` in ``mode``; its duration in seconds."""
        from django.core.files.base import ContentFile

        from uploads.services import create_upload

        n = next(self._uploads)
        content = ContentFile(f"bench file {n} with some words".encode(), name=f"f{n}.txt")
        with self.producing(mode):
            started = time.perf_counter()
            create_upload(owner=self.owner, file=content)
            return time.perf_counter() - started

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

        with current_app.producer_or_acquire() as producer:
            for n in range(count):
                noop.apply_async(
                    kwargs={"delivery_id": n, "event_id": str(uuid.uuid4()), "event_type": "x"},
                    queue=self.bare_queues[n % len(self.bare_queues)],
                    producer=producer,
                )

    def last_delivery_pk(self) -> int:
        from events.models import Delivery

        return Delivery.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

    # -- phases
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

    def backlog_pair(self, baseline: str, *, ours_first: bool) -> tuple[Drain, Drain]:
        """Ours and ``baseline`` stored while nothing consumes, then drained one after the other.

        ``naive``: the naive tasks with real handlers, on the real-handler worker;
        ``bare``: bare no-op tasks, on the no-op-handler worker.
        """
        from events.models import Delivery

        n, k = self.args.events, len(self.consumers)
        worker = self.real if baseline == "naive" else self.noop
        before = self.last_delivery_pk()
        for _ in range(n):
            self.upload("events")
        if baseline == "naive":
            for _ in range(n):
                self.upload("naive")
            queues, names = self.naive_queues, self.naive_names
        else:
            self.publish_bare(n * k)
            queues, names = self.bare_queues, {"bench.noop"}
        results: dict[str, Drain] = {}
        for side in ("ours", baseline) if ours_first else (baseline, "ours"):
            if side == "ours":
                drained = drain(
                    worker, queues=self.queues, names=self.task_names, count=n * k, what="ours"
                )
                ours = Delivery.objects.filter(pk__gt=before)
                results[side] = ledger_drain(drained, ours, n * k, "backlog")
            else:
                results[side] = drain(
                    worker, queues=queues, names=names, count=n * k, what=side, unit="tasks"
                )
        return results["ours"], results[baseline]

    def end_to_end(self, mode: str) -> Drain:
        """N uploads while the consumers run, timed from the first upload to the last task."""
        n, k = self.args.events, len(self.consumers)
        queues, names = self.queues, self.task_names
        if mode == "naive":
            queues, names = self.naive_queues, self.naive_names
        self.real.consume(queues)
        # One upload first, unmeasured: its tasks finishing say the worker consumes the
        # queues now (a Redis consumer added mid-poll joins only after that poll ends).
        since = time.time()
        self.upload(mode)
        wait_until_finished(
            self.real.timing, names, count=k, since=since, timeout=TIMEOUT, what="a first upload"
        )
        started = time.time()
        cpu = self.real.cpu_seconds()
        for _ in range(n):
            self.upload(mode)
        times = wait_until_finished(
            self.real.timing,
            names,
            count=n * k,
            since=started,
            timeout=TIMEOUT,
            what=f"end to end ({mode})",
        )
        cpu = self.real.cpu_seconds() - cpu
        self.real.stop_consuming(queues)
        # Counted in uploads from the first upload's start: n + 1 instants bound n intervals.
        return Drain(n + 1, first=started, last=times[-1], cpu=cpu, tasks=n * k, unit="uploads")

    def latency(self) -> dict[str, list[float]]:
        """``create_upload`` durations per mode, interleaved upload by upload, rotating the order."""
        modes = ["events", "outbox", "none", "naive"]
        for mode in modes:  # warm: first connection, imports, storage folders
            self.upload(mode)
        durations: dict[str, list[float]] = {mode: [] for mode in modes}
        for n in range(self.args.latency_uploads):
            for mode in modes[n % len(modes) :] + modes[: n % len(modes)]:
                durations[mode].append(self.upload(mode))
        return durations

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
        from events.models import Delivery

        return Delivery.objects.filter(
            consumer=consumer.name,
            event__occurred_at__gte=window[0],
            event__occurred_at__lt=window[1],
        )

    def live_replay(self, consumer: Any, count: int) -> Drain:
        """Stored events sent to ``consumer``'s queue by ``replay_events``, drained by workers."""
        from django.core.management import call_command

        window = self.bulk_events(count)
        call_command(
            "replay_events",
            "--consumer",
            consumer.name,
            "--since",
            window[0].isoformat(),
            "--until",
            window[1].isoformat(),
            stdout=io.StringIO(),
        )
        drained = drain(
            self.real,
            queues=[consumer.queue],
            names={f"{consumer.name}.handle_event"},
            count=count,
            what=f"draining {consumer.name}",
        )
        return ledger_drain(drained, self.window_deliveries(consumer, window), count, consumer.name)

    def inline_replay(self, consumer: Any, count: int) -> tuple[float, float, int]:
        """``replay_events --consumer X --inline`` in a child process over ``count`` bulk events.

        Returns events/s over the ledger's completion span, the child's wall time and its
        peak RSS in KiB (``wait4``'s ``ru_maxrss`` for that one child).
        """
        from django.db.models import Max, Min

        window = self.bulk_events(count)
        log = self.workdir / f"replay-{consumer.name}-{count}.log"
        started = time.perf_counter()
        with log.open("wb") as output:
            child = subprocess.Popen(
                [
                    *[sys.executable, "manage.py", "replay_events", "--consumer", consumer.name],
                    *[
                        "--inline",
                        "--since",
                        window[0].isoformat(),
                        "--until",
                        window[1].isoformat(),
                    ],
                ],
                cwd=ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if child.returncode != 0:
            raise SystemExit(f"bench: replay_events failed ({child.returncode}); see {log}")
        deliveries = self.window_deliveries(consumer, window)
        done = deliveries.filter(state="done").count()
        if done != count:
            raise SystemExit(f"bench: inline replay of {consumer.name}: {done} of {count} done")
        span = deliveries.aggregate(first=Min("completed_at"), last=Max("completed_at"))
        seconds = (span["last"] - span["first"]).total_seconds()
        return (count - 1) / max(seconds, 1e-9), wall, usage.ru_maxrss

    # -- the run
    def run(self) -> None:
        """Every measurement, in an order that leaves each phase's queues empty for the next."""
        self.real.start()
        self.noop.start()
        self.real.wait_ready()
        self.noop.wait_ready()
        self.warm_up()
        noop_ms = self.measure_throughput()
        inline_rates = self.measure_replay(noop_ms)
        self.measure_replay_memory(inline_rates)
        self.measure_latency()

    def add_ratio(self, name: str, pairs: list[tuple[Drain, Drain]], target: float) -> None:
        """A higher-is-better ratio of (ours, baseline) rates over one or more rounds.

        The ratio of worker CPU per task (baseline ÷ ours) is shown beside it: it moves
        less than throughput when other processes load the machine.
        """
        values = [ours.per_second / base.per_second for ours, base in pairs]
        by_cpu = statistics.fmean(base.cpu_ms / ours.cpu_ms for ours, base in pairs)
        detail = (
            f"{statistics.fmean(o.per_second for o, _ in pairs):.1f} / "
            f"{statistics.fmean(b.per_second for _, b in pairs):.1f} {pairs[0][0].unit}/s; "
            f"by worker CPU per task {by_cpu:.2f}"
        )
        if len(pairs) > 1:
            detail += "; rounds " + " ".join(f"{value:.2f}" for value in values)
        self.ratios.append(Ratio(name, statistics.fmean(values), target, True, detail))

    def measure_throughput(self) -> float:
        """The three paired throughput ratios; returns worker CPU ms of a no-op delivery."""
        backlog: list[tuple[Drain, Drain]] = []
        noop: list[tuple[Drain, Drain]] = []
        e2e: list[tuple[Drain, Drain]] = []
        for round_ in range(self.args.rounds):
            # Alternate which side goes first, so a drift in machine load hits both.
            ours_first = round_ % 2 == 0
            backlog.append(self.backlog_pair("naive", ours_first=ours_first))
            noop.append(self.backlog_pair("bare", ours_first=ours_first))
            modes = ("events", "naive") if ours_first else ("naive", "events")
            runs = {mode: self.end_to_end(mode) for mode in modes}
            e2e.append((runs["events"], runs["naive"]))
        for title, pairs, labels in (
            ("backlog, real handlers: ", backlog, ("ours ", "naive")),
            ("backlog, no-op handlers:", noop, ("ours ", "bare ")),
            ("end to end, uploads:    ", e2e, ("ours ", "naive")),
        ):
            for ours, baseline in pairs:
                print(f"{title} {labels[0]} {ours.describe()}")
                print(f"{' ' * len(title)} {labels[1]} {baseline.describe()}")
        self.add_ratio("guarantee overhead (backlog, real handlers, ours / naive)", backlog, 0.9)
        self.add_ratio(
            "pipeline overhead (backlog, no-op handlers, ours / bare Celery)", noop, 0.85
        )
        self.add_ratio("end to end (uploads + consumers, ours / naive)", e2e, 0.85)
        bare_ms = statistics.fmean(b.cpu_ms for _, b in noop)
        noop_ms = statistics.fmean(o.cpu_ms for o, _ in noop)
        print(
            f"cost model, worker CPU ms per delivery: bare Celery {bare_ms:.2f}; ledger (no-op "
            f"handlers minus bare) {noop_ms - bare_ms:.2f}; real consumers "
            f"{statistics.fmean(o.cpu_ms for o, _ in backlog):.2f} against naive "
            f"{statistics.fmean(b.cpu_ms for _, b in backlog):.2f}"
        )
        return noop_ms

    def measure_replay(self, noop_ms: float) -> dict[str, float]:
        """Per consumer: inline replay against live workers; returns inline events/s."""
        count = self.args.replay_events
        inline_rates: dict[str, float] = {}
        handler_ms: list[str] = []
        for consumer in self.consumers:
            live = self.live_replay(consumer, count)
            inline, wall, _ = self.inline_replay(consumer, count)
            inline_rates[consumer.name] = inline
            print(f"replay {consumer.name}: live {live.describe()}")
            print(f"replay {consumer.name}: inline {inline:.0f}/s ({wall:.1f}s with start-up)")
            handler_ms.append(f"{consumer.name} {live.cpu_ms - noop_ms:.2f}")
            self.ratios.append(
                Ratio(
                    f"inline replay {consumer.name} (inline / live events/s)",
                    inline / live.per_second,
                    3,
                    True,
                    f"{inline:.0f} / {live.per_second:.0f} events/s",
                )
            )
        print(
            "cost model, worker CPU ms per delivery of each handler (one consumer's live "
            "drain minus a no-op delivery): " + "; ".join(handler_ms)
        )
        return inline_rates

    def measure_replay_memory(self, inline_rates: dict[str, float]) -> None:
        """Peak RSS of inline replays of a small and a large bulk of events."""
        args = self.args
        # By default the fastest inline consumer, which keeps the large replay shortest.
        consumer = max(self.consumers, key=lambda c: inline_rates[c.name])
        if args.rss_consumer:
            consumer = next(c for c in self.consumers if c.name == args.rss_consumer)
        peaks = {}
        for count in (args.rss_small, args.rss_large):
            rate, wall, peaks[count] = self.inline_replay(consumer, count)
            print(
                f"replay {consumer.name}: {count} events inline, peak RSS "
                f"{peaks[count] / 1024:.1f} MiB, {rate:.0f}/s ({wall:.1f}s with start-up)"
            )
        small, large = peaks[args.rss_small], peaks[args.rss_large]
        self.ratios.append(
            Ratio(
                f"replay peak RSS ({consumer.name}, {args.rss_large} / {args.rss_small} events)",
                large / small,
                1.2,
                False,
                f"{large / 1024:.1f} / {small / 1024:.1f} MiB",
            )
        )

    def measure_latency(self) -> None:
        """``create_upload`` p50 and p95 with events against the upload alone."""
        durations = self.latency()
        p50 = {mode: statistics.median(values) * 1000 for mode, values in durations.items()}
        p95 = {mode: percentile(values, 0.95) * 1000 for mode, values in durations.items()}
        print(
            f"create_upload ms, {self.args.latency_uploads} each, interleaved: "
            + "; ".join(f"{mode} p50 {p50[mode]:.2f} p95 {p95[mode]:.2f}" for mode in durations)
        )
        for name, quantile in (("p50", p50), ("p95", p95)):
            self.ratios.append(
                Ratio(
                    f"upload latency {name} (with events / without any)",
                    quantile["events"] / quantile["none"],
                    1.15,
                    False,
                    f"{quantile['events']:.2f} / {quantile['none']:.2f} ms; outbox rows without "
                    f"publishing {quantile['outbox']:.2f} ms; naive publish "
                    f"{quantile['naive']:.2f} ms"
                    + ("" if name == "p50" else "; the target is on p50"),
                )
            )

    def stop(self) -> None:
        self.real.stop()
        self.noop.stop()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=300, help="uploads per backlog and end-to-end side (300)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the paired drains, alternating which side goes first (1)",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="worker -c (2)")
    parser.add_argument(
        "--latency-uploads",
        type=int,
        default=None,
        help="create_upload calls per latency mode (default: --events)",
    )
    parser.add_argument(
        "--replay-events",
        type=int,
        default=None,
        help="events per consumer for live against inline replay (default: --events)",
    )
    parser.add_argument(
        "--rss-small", type=int, default=1000, help="events of the small RSS replay (1000)"
    )
    parser.add_argument(
        "--rss-large",
        type=int,
        default=20_000,
        help="events of the large RSS replay (20000; the target is set at 100000)",
    )
    parser.add_argument(
        "--rss-consumer",
        default="",
        help="consumer for the RSS replays (default: the fastest inline)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server: a scratch bench_* database is created there and dropped; default: SQLite under var/bench/",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch SQLite database and media (logs are always kept)",
    )
    args = parser.parse_args(argv)
    args.latency_uploads = args.latency_uploads or args.events
    args.replay_events = args.replay_events or args.events
    # Rates and quantiles need two samples at least.
    minimums = {"events": 2, "rounds": 1, "concurrency": 1, "rss_small": 2, "rss_large": 2}
    minimums |= {"latency_uploads": 2, "replay_events": 2}
    for name, minimum in minimums.items():
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}")
    return args


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


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    with scratch_environment(database_url=args.database_url, keep=args.keep) as (env, workdir):
        from celery import current_app

        bench = Bench(args, env, workdir)
        print(f"command:  {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(
            f"setup:    {env['DATABASE_URL'].split('://')[0]}; workers "
            f"{' '.join(bench.real.options)}, prefetch multiplier "
            f"{current_app.conf.worker_prefetch_multiplier}, acks_late "
            f"{current_app.conf.task_acks_late}; consumers "
            f"{', '.join(c.name for c in bench.consumers)}; load average "
            f"{load_before[0]:.2f} on {os.cpu_count()} CPUs"
        )
        sys.stdout.flush()
        try:
            bench.run()
        finally:
            bench.stop()
    for ratio in bench.ratios:
        print(ratio.line())
    load_after = os.getloadavg()
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; logs in {workdir}")


if __name__ == "__main__":
    main()
