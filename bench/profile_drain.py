"""Where a delivery's worker time goes: cProfile of a ``-P solo`` worker draining a backlog.

    .venv/bin/python bench/profile_drain.py [--events 300] [--database-url URL]

For each side (bare no-op tasks, the naive baseline, the consumers with no-op handlers,
the consumers with their real handlers) a profiled solo worker first runs a few warm-up
tasks, then drains a backlog of ``--events`` uploads (or as many bare tasks as they make
deliveries). Per task it prints the profiled time outside the task function (Celery:
fetch, decode, ack, signals), inside it, and there in each consumer's handler; the rest
of the task function is the ledger (naive: loading the event). Then the functions with
the most own time on the real side. Profiling slows call-heavy code (the ORM) more than
the rest: read the split here, and absolute CPU times from ``bench/pipeline.py``.
"""

from __future__ import annotations

import argparse
import pstats
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import ROOT, BenchWorker, Harness, drain, scratch_environment

SIDES = ("bare", "naive", "noop", "real")
WARM_UP = 3
# Where the solo worker waits for messages: not time spent on a delivery.
IDLE = {
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'poll' of 'select.poll' objects>",
    "<built-in method select.select>",
    "<built-in method time.sleep>",
}
Key = tuple[str, int, str]


def code_key(function: Callable[..., Any]) -> Key:
    """The pstats key of ``function``."""
    code = getattr(function, "__func__", function).__code__
    return (code.co_filename, code.co_firstlineno, code.co_name)


def handler_keys(consumer: Any) -> set[Key]:
    """The pstats keys of a consumer's handler callables (both steps of a two-step one)."""
    from bench.apps import _noop
    from events.registry import TwoStepHandler

    keys = {code_key(_noop)}
    for handler in consumer.handlers.values():
        if isinstance(handler, TwoStepHandler):
            keys |= {code_key(handler.prepare), code_key(handler.apply)}
        else:
            keys.add(code_key(handler))
    return keys


def cumulative(stats: pstats.Stats, keys: Iterable[Key]) -> float:
    table = stats.stats  # type: ignore[attr-defined]
    return sum(table[key][3] for key in set(keys) if key in table)


def side_setup(harness: Harness, side: str) -> tuple[list[str], set[str], Callable[[int], None]]:
    """Queues, task names and a producer of ``n`` events' worth of messages for ``side``."""
    k = len(harness.consumers)
    if side == "bare":
        return harness.bare_queues, {"bench.noop"}, lambda n: harness.publish_bare(n * k)
    if side == "naive":
        return (
            harness.naive_queues,
            harness.naive_names,
            lambda n: [harness.upload("naive") for _ in range(n)],
        )
    return (
        harness.queues,
        harness.task_names,
        lambda n: [harness.upload("events") for _ in range(n)],
    )


def profile_side(harness: Harness, side: str, events: int) -> pstats.Stats:
    """Drain ``events`` uploads' worth of ``side``'s messages in a profiled solo worker."""
    output = harness.workdir / f"{side}.prof"
    worker = BenchWorker(
        label=f"profile-{side}",
        env={
            **harness.env,
            "BENCH_NOOP_HANDLERS": "1" if side == "noop" else "0",
            "BENCH_PROFILE_AFTER": str(WARM_UP * len(harness.consumers)),
        },
        workdir=harness.workdir,
        concurrency=1,
        program=[sys.executable, str(ROOT / "bench" / "profiled_worker.py"), str(output)],
        pool="solo",
    )
    queues, names, produce = side_setup(harness, side)
    worker.start_idle()
    try:
        worker.wait_ready()
        for count in (WARM_UP, events):
            produce(count)
            drain(
                worker, queues=queues, names=names, count=count * len(harness.consumers), what=side
            )
    finally:
        worker.stop()
    return pstats.Stats(str(output))


def report(harness: Harness, side: str, stats: pstats.Stats, events: int) -> None:
    from celery import current_app

    tasks = events * len(harness.consumers)
    table = stats.stats  # type: ignore[attr-defined]
    idle = sum(entry[2] for key, entry in table.items() if key[2] in IDLE)
    active = stats.total_tt - idle  # type: ignore[attr-defined]
    _, names, _ = side_setup(harness, side)
    body = cumulative(stats, [code_key(current_app.tasks[name].run) for name in names])
    ms = 1000 / tasks
    line = (
        f"profile {side:5}: {active * ms:.2f} ms per task = Celery {(active - body) * ms:.2f}"
        f" + task function {body * ms:.2f}"
    )
    if side != "bare":
        per_handler = {c.name: cumulative(stats, handler_keys(c)) for c in harness.consumers}
        handlers = sum(per_handler.values())
        rest = "ledger" if side in ("noop", "real") else "loading the event"
        line += f" (handlers {handlers * ms:.2f} + {rest} {(body - handlers) * ms:.2f})"
        if side != "noop":
            line += "; each handler per own delivery: " + ", ".join(
                f"{name} {seconds * 1000 / events:.2f}" for name, seconds in per_handler.items()
            )
    print(line)


def top_functions(stats: pstats.Stats, tasks: int, limit: int = 25) -> None:
    table = stats.stats  # type: ignore[attr-defined]
    rows = sorted(
        ((entry[2], entry[3], entry[1], key) for key, entry in table.items() if key[2] not in IDLE),
        reverse=True,
    )[:limit]
    print(f"most own time on the real side (per task, {tasks} tasks), own / cumulative ms, calls:")
    for own, cum, calls, (filename, line, name) in rows:
        where = filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        print(
            f"  {own * 1000 / tasks:6.3f} {cum * 1000 / tasks:7.3f} {calls / tasks:5.1f}  {where}:{line} {name}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300, help="uploads per side (300)")
    parser.add_argument("--database-url", default=None, help="as bench/pipeline.py")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    with scratch_environment(database_url=args.database_url, keep=args.keep, name="profile") as (
        env,
        workdir,
    ):
        harness = Harness(env, workdir, concurrency=1)
        print(f"profiles of -P solo workers, {args.events} uploads per side; in {workdir}")
        results = {side: profile_side(harness, side, args.events) for side in SIDES}
        for side, stats in results.items():
            report(harness, side, stats, args.events)
        top_functions(results["real"], args.events * len(harness.consumers))


if __name__ == "__main__":
    main()
