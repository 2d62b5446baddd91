"""The pipeline against what a team would otherwise write, measured side by side in one run.

    .venv/bin/python bench/pipeline.py [--events 300] [--database-url postgres://...]

Prints the figures of every drain, then one ``ratio:`` line per performance target:
guarantee overhead, pipeline overhead, end to end, inline replay per consumer, replay
peak RSS, upload latency p50 and p95. What each one means, how it is measured and the
latest figures: ``bench/README.md``. The measurements are in ``bench/ratios.py``, the
processes and producers they stand on in ``bench/harness.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ratios
from bench.harness import Harness, mean_cpu_ms, scratch_environment


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with the defaults that follow ``--events`` filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--events", type=int, default=300, help="uploads per backlog and end-to-end side (300)")
    add(
        "--rounds",
        type=int,
        default=1,
        help="repeat the paired drains, alternating which side goes first (1)",
    )
    add("--concurrency", type=int, default=2, help="worker -c (2)")
    add(
        "--latency-uploads",
        type=int,
        default=None,
        help="create_upload calls per latency mode (default: --events)",
    )
    add(
        "--replay-events",
        type=int,
        default=None,
        help="events per consumer for live against inline replay (default: --events)",
    )
    add("--rss-small", type=int, default=1000, help="events of the small RSS replay (1000)")
    add(
        "--rss-large",
        type=int,
        default=20_000,
        help="events of the large RSS replay (20000; the target is set at 100000)",
    )
    add(
        "--rss-consumer",
        default="",
        help="consumer for the RSS replays (default: the fastest inline)",
    )
    add(
        "--database-url",
        default=None,
        help="a PostgreSQL server: a scratch bench_* database is created there and dropped; default: SQLite under var/bench/",
    )
    add(
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


def run(harness: Harness, args: argparse.Namespace) -> list[ratios.Ratio]:
    """Every measurement, in an order that leaves each phase's queues empty for the next."""
    harness.warm_up()
    found: list[ratios.Ratio] = []

    # Throughput: the three paired ratios, round by round, alternating which side goes
    # first so that a drift in machine load hits both.
    rounds: dict[str, list[ratios.Pair]] = {"backlog": [], "noop": [], "e2e": []}
    for round_ in range(args.rounds):
        ours_first = round_ % 2 == 0
        for key, measure in (
            ("backlog", ratios.guarantee_overhead_round),
            ("noop", ratios.pipeline_overhead_round),
            ("e2e", ratios.end_to_end_round),
        ):
            rounds[key].append(measure(harness, args.events, ours_first=ours_first))
    for title, key, labels in (
        ("backlog, real handlers: ", "backlog", ("ours ", "naive")),
        ("backlog, no-op handlers:", "noop", ("ours ", "bare ")),
        ("end to end, uploads:    ", "e2e", ("ours ", "naive")),
    ):
        for ours, baseline in rounds[key]:
            print(f"{title} {labels[0]} {ours.describe()}")
            print(f"{' ' * len(title)} {labels[1]} {baseline.describe()}")
    found += [
        ratios.paired_ratio(
            "guarantee overhead (backlog, real handlers, ours / naive)", rounds["backlog"], 0.9
        ),
        ratios.paired_ratio(
            "pipeline overhead (backlog, no-op handlers, ours / bare Celery)", rounds["noop"], 0.85
        ),
        ratios.paired_ratio("end to end (uploads + consumers, ours / naive)", rounds["e2e"], 0.85),
    ]
    print(ratios.throughput_cost_model(rounds["backlog"], rounds["noop"]))

    # Replay, per consumer: inline against the live workers.
    replays = []
    for consumer in harness.consumers:
        replay = ratios.inline_replay_ratio(harness, consumer, args.replay_events)
        print("\n".join(replay.figures()))
        replays.append(replay)
        found.append(replay.ratio())
    print(ratios.handler_cost_model(replays, mean_cpu_ms(o for o, _ in rounds["noop"])))

    # Replay memory: by default on the fastest inline consumer, the shortest large replay.
    inline_rates = {replay.consumer: replay.inline.per_second for replay in replays}
    consumer = max(harness.consumers, key=lambda c: inline_rates[c.name])
    if args.rss_consumer:
        consumer = harness.consumer_named(args.rss_consumer)
    rss, figures = ratios.replay_rss_ratio(harness, consumer, args.rss_small, args.rss_large)
    print("\n".join(figures))
    found.append(rss)

    latency, figure = ratios.upload_latency_ratios(harness, args.latency_uploads)
    print(figure)
    return found + latency


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    with scratch_environment(database_url=args.database_url, keep=args.keep) as (env, workdir):
        from celery import current_app

        harness = Harness(env, workdir, concurrency=args.concurrency)
        if args.rss_consumer:
            harness.consumer_named(args.rss_consumer)  # a typo fails now, not after the drains
        print(f"command:  {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(
            f"setup:    {env['DATABASE_URL'].split('://')[0]}; workers {harness.real.flags}, "
            f"prefetch multiplier {current_app.conf.worker_prefetch_multiplier}, acks_late "
            f"{current_app.conf.task_acks_late}; consumers "
            f"{', '.join(c.name for c in harness.consumers)}; load average "
            f"{load_before[0]:.2f} on {os.cpu_count()} CPUs"
        )
        sys.stdout.flush()
        try:
            harness.start()
            found = run(harness, args)
        finally:
            harness.stop()
    for ratio in found:
        print(ratio.line())
    load_after = os.getloadavg()
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; logs in {workdir}")


if __name__ == "__main__":
    main()
