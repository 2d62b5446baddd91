"""One function per performance ratio, each side measured with ``bench/harness.py``.

Each function runs both sides of its ratio on the same ``Harness`` (the same worker
processes, one side after the other) and returns what it measured; ``bench/pipeline.py``
prints it. What each ratio means and its target: ``bench/README.md``.
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import ROOT, TIMEOUT, Drain, Harness, drain, ledger_drain, mean_cpu_ms
from bench.timing import wait_until_finished

# (ours, baseline) drains of one round of a throughput ratio.
Pair = tuple[Drain, Drain]


@dataclass
class Ratio:
    """One target: ``value`` against ``target`` (``at_least`` or at most)."""

    name: str
    value: float
    target: float
    at_least: bool
    detail: str

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.at_least else self.value <= self.target

    def cell(self) -> str:
        """The value, ``met`` or ``MISSED`` and the target, for a side-by-side table."""
        sign = ">=" if self.at_least else "<="
        return f"{self.value:.2f} {'met' if self.met else 'MISSED'} ({sign} {self.target})"

    def line(self) -> str:
        """The ``ratio:`` line, with ``met`` or ``MISSED``."""
        sign = ">=" if self.at_least else "<="
        return (
            f"ratio: {self.name} = {self.value:.2f} (target {sign} {self.target}) "
            f"{'met' if self.met else 'MISSED'} -- {self.detail}"
        )


def paired_ratio(name: str, pairs: list[Pair], target: float) -> Ratio:
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
    return Ratio(name, statistics.fmean(values), target, True, detail)


# ------------------------------------------------------------------------------
# Throughput: one round of each paired ratio
# ------------------------------------------------------------------------------
def _backlog_pair(
    harness: Harness,
    baseline: str,
    events: int,
    *,
    ours_first: bool,
    cold: bool = False,
    blocks: int = 1,
) -> Pair:
    """Ours and ``baseline`` stored while nothing consumes, then drained one after the other.

    ``naive``: the naive tasks with real handlers, on the real-handler worker;
    ``bare``: bare no-op tasks, on the no-op-handler worker. The ``events`` uploads are
    split into ``blocks``, each stored and drained on its own, the side that goes first
    alternating block by block (ABBA…): on a shared machine the load drifts over seconds
    and one long drain per side measures the drift as much as the pipeline (rounds of
    one long drain each differed by up to 1.8 times on the 3 December runs). ``cold``: each
    block of each side is drained by a fresh worker that has run no task yet, so neither
    side inherits the other's warm-up. Each side's figures are the sums over the blocks.
    """
    from events.models import Delivery

    k = len(harness.consumers)
    noop = baseline != "naive"
    sizes = [events // blocks + (1 if b < events % blocks else 0) for b in range(blocks)]
    drained: dict[str, list[Drain]] = {"ours": [], baseline: []}
    for block, n in enumerate(size for size in sizes if size):
        before = harness.last_delivery_pk()
        for _ in range(n):
            harness.upload("events")
        if baseline == "naive":
            for _ in range(n):
                harness.upload("naive")
            queues, names = harness.naive_queues, harness.naive_names
        else:
            harness.publish_bare(n * k)
            queues, names = harness.bare_queues, {"bench.noop"}
        first = ours_first == (block % 2 == 0)
        for side in ("ours", baseline) if first else (baseline, "ours"):
            worker = harness.cold_worker(noop=noop) if cold else None
            worker = worker or (harness.noop if noop else harness.real)
            try:
                if side == "ours":
                    result = drain(
                        worker,
                        queues=harness.queues,
                        names=harness.task_names,
                        count=n * k,
                        what="ours",
                    )
                    ours = Delivery.objects.filter(pk__gt=before)
                    drained[side].append(ledger_drain(result, ours, n * k, "backlog"))
                else:
                    drained[side].append(
                        drain(
                            worker, queues=queues, names=names, count=n * k, what=side, unit="tasks"
                        )
                    )
            finally:
                if cold:
                    worker.stop()
    return Drain.combine(drained["ours"]), Drain.combine(drained[baseline])


def guarantee_overhead_round(
    harness: Harness, events: int, *, ours_first: bool, cold: bool = False, blocks: int = 1
) -> Pair:
    """Backlog of ``events`` uploads, real handlers: the consumers against the naive tasks."""
    return _backlog_pair(harness, "naive", events, ours_first=ours_first, cold=cold, blocks=blocks)


def pipeline_overhead_round(
    harness: Harness, events: int, *, ours_first: bool, cold: bool = False, blocks: int = 1
) -> Pair:
    """Backlog of ``events`` uploads, no-op handlers: the consumers against bare Celery tasks."""
    return _backlog_pair(harness, "bare", events, ours_first=ours_first, cold=cold, blocks=blocks)


def _end_to_end(harness: Harness, mode: str, events: int) -> Drain:
    """N uploads while the consumers run, timed from the first upload to the last task."""
    n, k = events, len(harness.consumers)
    queues, names = harness.queues, harness.task_names
    if mode == "naive":
        queues, names = harness.naive_queues, harness.naive_names
    harness.real.consume(queues)
    # One upload first, unmeasured: its tasks finishing say the worker consumes the
    # queues now (a Redis consumer added mid-poll joins only after that poll ends).
    since = time.time()
    harness.upload(mode)
    wait_until_finished(
        harness.real.timing, names, count=k, since=since, timeout=TIMEOUT, what="a first upload"
    )
    started = time.time()
    cpu = harness.real.cpu_seconds()
    for _ in range(n):
        harness.upload(mode)
    times = wait_until_finished(
        harness.real.timing,
        names,
        count=n * k,
        since=started,
        timeout=TIMEOUT,
        what=f"end to end ({mode})",
    )
    cpu = harness.real.cpu_seconds() - cpu
    harness.real.stop_consuming(queues)
    # Counted in uploads from the first upload's start: n + 1 instants bound n intervals.
    return Drain(n + 1, first=started, last=times[-1], cpu=cpu, tasks=n * k, unit="uploads")


def end_to_end_round(harness: Harness, events: int, *, ours_first: bool) -> Pair:
    """``events`` uploads through ``create_upload`` until every consumer finished, both producers."""
    modes = ("events", "naive") if ours_first else ("naive", "events")
    runs = {mode: _end_to_end(harness, mode, events) for mode in modes}
    return runs["events"], runs["naive"]


def throughput_cost_model(backlog: list[Pair], noop: list[Pair]) -> str:
    """The cost model line: worker CPU per delivery of bare Celery, the ledger, the handlers."""
    bare_ms = mean_cpu_ms(b for _, b in noop)
    noop_ms = mean_cpu_ms(o for o, _ in noop)
    return (
        f"cost model, worker CPU ms per delivery: bare Celery {bare_ms:.2f}; ledger (no-op "
        f"handlers minus bare) {noop_ms - bare_ms:.2f}; real consumers "
        f"{mean_cpu_ms(o for o, _ in backlog):.2f} against naive "
        f"{mean_cpu_ms(b for _, b in backlog):.2f}"
    )


# ------------------------------------------------------------------------------
# Replay
# ------------------------------------------------------------------------------
def live_replay(harness: Harness, consumer: Any, count: int) -> Drain:
    """Stored events sent to ``consumer``'s queue by ``replay_events``, drained by workers."""
    from django.core.management import call_command

    _forget_earlier_replay_records(consumer.queue)
    window = harness.bulk_events(count)
    call_command(
        "replay_events",
        *["--consumer", consumer.name],
        *["--since", window[0].isoformat(), "--until", window[1].isoformat()],
        stdout=io.StringIO(),
    )
    drained = drain(
        harness.real,
        queues=[consumer.queue],
        names={consumer.task_name},
        count=count,
        what=f"draining {consumer.name}",
    )
    return ledger_drain(drained, harness.window_deliveries(consumer, window), count, consumer.name)


def _forget_earlier_replay_records(queue: str) -> None:
    """Every ``replay_events`` run records an ``operator.replay`` event for the audit log,
    published to the audit queue; the bench's earlier replays left theirs there, and a
    drain of that queue would count them as its own. Drop them and their messages."""
    from celery import current_app

    from events.models import Event
    from housekeeping.events import OPERATOR_REPLAY

    Event.objects.filter(type=OPERATOR_REPLAY).delete()
    with current_app.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)


@dataclass(frozen=True)
class InlineReplay:
    """An inline replay: events/s over the ledger's completion span, wall time, peak RSS."""

    per_second: float
    wall: float
    peak_rss_kib: int


def inline_replay(harness: Harness, consumer: Any, count: int) -> InlineReplay:
    """``replay_events --consumer X --inline`` in a child process over ``count`` bulk events.

    The peak RSS is ``wait4``'s ``ru_maxrss`` for that one child.
    """
    from django.db.models import Max, Min

    window = harness.bulk_events(count)
    log = harness.workdir / f"replay-{consumer.name}-{count}.log"
    command = [sys.executable, "manage.py", "replay_events", "--consumer", consumer.name]
    command += ["--inline", "--since", window[0].isoformat(), "--until", window[1].isoformat()]
    started = time.perf_counter()
    with log.open("wb") as output:
        child = subprocess.Popen(
            command, cwd=ROOT, env=harness.env, stdout=output, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"bench: replay_events failed ({child.returncode}); see {log}")
    deliveries = harness.window_deliveries(consumer, window)
    done = deliveries.filter(state="done").count()
    if done != count:
        raise SystemExit(f"bench: inline replay of {consumer.name}: {done} of {count} done")
    span = deliveries.aggregate(first=Min("completed_at"), last=Max("completed_at"))
    seconds = (span["last"] - span["first"]).total_seconds()
    return InlineReplay((count - 1) / max(seconds, 1e-9), wall, usage.ru_maxrss)


@dataclass(frozen=True)
class ReplayComparison:
    """One consumer's stored events replayed live (workers) and inline (one process)."""

    consumer: str
    live: Drain
    inline: InlineReplay

    def figures(self) -> list[str]:
        return [
            f"replay {self.consumer}: live {self.live.describe()}",
            f"replay {self.consumer}: inline {self.inline.per_second:.0f}/s "
            f"({self.inline.wall:.1f}s with start-up)",
        ]

    def ratio(self) -> Ratio:
        return Ratio(
            f"inline replay {self.consumer} (inline / live events/s)",
            self.inline.per_second / self.live.per_second,
            3,
            True,
            f"{self.inline.per_second:.0f} / {self.live.per_second:.0f} events/s",
        )


def inline_replay_ratio(harness: Harness, consumer: Any, count: int) -> ReplayComparison:
    """``count`` events replayed to ``consumer`` by the live workers, then inline."""
    live = live_replay(harness, consumer, count)
    return ReplayComparison(consumer.name, live, inline_replay(harness, consumer, count))


def handler_cost_model(replays: list[ReplayComparison], noop_ms: float) -> str:
    """The cost model line per handler: a live replay's CPU minus a no-op delivery's."""
    return (
        "cost model, worker CPU ms per delivery of each handler (one consumer's live "
        "drain minus a no-op delivery): "
        + "; ".join(f"{replay.consumer} {replay.live.cpu_ms - noop_ms:.2f}" for replay in replays)
    )


def replay_rss_ratio(
    harness: Harness, consumer: Any, small: int, large: int
) -> tuple[Ratio, list[str]]:
    """Peak RSS of inline replays of ``large`` against ``small`` bulk events, and figure lines."""
    figures: list[str] = []
    peaks: dict[int, int] = {}
    for count in (small, large):
        replay = inline_replay(harness, consumer, count)
        peaks[count] = replay.peak_rss_kib
        figures.append(
            f"replay {consumer.name}: {count} events inline, peak RSS "
            f"{replay.peak_rss_kib / 1024:.1f} MiB, {replay.per_second:.0f}/s "
            f"({replay.wall:.1f}s with start-up)"
        )
    ratio = Ratio(
        # The consumer in the detail, not the name: the side-by-side table matches names.
        f"replay peak RSS ({large} / {small} events)",
        peaks[large] / peaks[small],
        1.2,
        False,
        f"{peaks[large] / 1024:.1f} / {peaks[small] / 1024:.1f} MiB ({consumer.name})",
    )
    return ratio, figures


# ------------------------------------------------------------------------------
# Upload latency
# ------------------------------------------------------------------------------
def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def upload_latency_ratios(harness: Harness, uploads: int) -> tuple[list[Ratio], str]:
    """``create_upload`` p50 and p95 with events against the naive producer, and the figure line.

    The target compares with what a team would write without the outbox
    (``on_commit(task.delay)``), not with an upload that records no event. The modes
    are interleaved upload by upload, the order rotating, so a drift in machine load
    reaches every mode alike.
    """
    from django.conf import settings

    modes = ["events", "outbox", "none", "naive"]
    if hasattr(settings, "EVENTS_PUBLISH_IN_BACKGROUND"):
        modes.append("background")  # issue 17's prototype, interleaved with the rest
    for mode in modes:  # warm: first connection, imports, storage folders
        harness.upload(mode)
    durations: dict[str, list[float]] = {mode: [] for mode in modes}
    for n in range(uploads):
        for mode in modes[n % len(modes) :] + modes[: n % len(modes)]:
            durations[mode].append(harness.upload(mode))
    p50 = {mode: statistics.median(values) * 1000 for mode, values in durations.items()}
    p95 = {mode: percentile(values, 0.95) * 1000 for mode, values in durations.items()}
    figure = f"create_upload ms, {uploads} each, interleaved: " + "; ".join(
        f"{mode} p50 {p50[mode]:.2f} p95 {p95[mode]:.2f}" for mode in durations
    )
    ratios = [
        Ratio(
            f"upload latency {name} (with events / naive on_commit(delay))",
            quantile["events"] / quantile["naive"],
            1.0,
            False,
            f"{quantile['events']:.2f} / {quantile['naive']:.2f} ms; outbox rows without "
            f"publishing {quantile['outbox']:.2f} ms; no event at all {quantile['none']:.2f} ms"
            + ("" if name == "p50" else "; the target is on p50"),
        )
        for name, quantile in (("p50", p50), ("p95", p95))
    ]
    if "background" in modes:
        ratios.append(
            Ratio(
                "upload latency p50, background publisher (with events / naive on_commit(delay))",
                p50["background"] / p50["naive"],
                1.0,
                False,
                f"{p50['background']:.2f} / {p50['naive']:.2f} ms; EVENTS_PUBLISH_IN_BACKGROUND",
            )
        )
    return ratios, figure
