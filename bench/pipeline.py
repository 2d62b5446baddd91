"""The pipeline against what a team would otherwise write, measured side by side in one run.

    .venv/bin/python bench/pipeline.py [--events 300] [--database sqlite|postgres|both]

Prints the figures of every drain, then one ``ratio:`` line per performance target:
guarantee overhead and pipeline overhead (each with warm and with cold workers), end to
end, inline replay per consumer, replay peak RSS, upload latency p50 and p95. With
``--database both`` (the default) it measures SQLite, then PostgreSQL (a scratch
database on ``--postgres-url``), each in a child process of its own, and ends with
both columns side by side. What each ratio means, how it is measured and the latest
figures: ``bench/README.md``. The measurements are in ``bench/ratios.py``, the
processes and producers they stand on in ``bench/harness.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ratios
from bench.harness import ROOT, Harness, mean_cpu_ms, scratch_environment

DATABASES = ("sqlite", "postgres")
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"
MEASUREMENTS = ("backlog", "noop", "e2e", "replay", "rss", "latency")
# The targets of issue 17; pipeline overhead has one per database (PostgreSQL's commit
# is a round trip to another process, SQLite's a call in this one).
TARGETS = {"guarantee": 0.9, "e2e": 0.9, "latency": 1.0, "replay": 3.0, "rss": 1.2}
PIPELINE_TARGET = {"sqlite": 0.85, "postgres": 0.7}


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
    add(
        "--blocks",
        type=int,
        default=4,
        help="split each backlog into this many blocks, drained side by side, the side "
        "going first alternating block by block (4)",
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
        "--database",
        choices=(*DATABASES, "both"),
        default="both",
        help="sqlite (a file under var/bench/), postgres (a scratch bench_* database on "
        "--postgres-url, dropped afterwards) or both, one after the other (both)",
    )
    add(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help=f"the PostgreSQL server ($BENCH_POSTGRES_URL or {DEFAULT_POSTGRES_URL})",
    )
    add(
        "--database-url",
        default=None,
        help="the same as --database postgres --postgres-url URL (the older spelling)",
    )
    add(
        "--only",
        action="append",
        choices=MEASUREMENTS,
        help="measure only this (repeatable): backlog (guarantee overhead), noop "
        "(pipeline overhead), e2e, replay, rss, latency; default: all",
    )
    add(
        "--no-cold",
        action="store_true",
        help="skip the backlog drains by fresh (cold) workers",
    )
    add("--json", default=None, help="also write the ratios as JSON to this file")
    add(
        "--keep",
        action="store_true",
        help="keep the scratch SQLite database and media (logs are always kept)",
    )
    args = parser.parse_args(argv)
    if args.database_url:
        args.database, args.postgres_url = "postgres", args.database_url
    args.only = tuple(args.only or MEASUREMENTS)
    args.latency_uploads = args.latency_uploads or args.events
    args.replay_events = args.replay_events or args.events
    # Rates and quantiles need two samples at least.
    minimums = {"events": 2, "rounds": 1, "concurrency": 1, "rss_small": 2, "rss_large": 2}
    minimums |= {"blocks": 1}
    minimums |= {"latency_uploads": 2, "replay_events": 2}
    for name, minimum in minimums.items():
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}")
    return args


def run(harness: Harness, args: argparse.Namespace, database: str) -> list[ratios.Ratio]:
    """Every measurement asked for, in an order that leaves each phase's queues empty for the next."""
    harness.warm_up()
    found: list[ratios.Ratio] = []

    # Throughput: the paired ratios, round by round, alternating which side goes first
    # so that a drift in machine load, or what one side leaves behind, hits both. The
    # backlog ratios are measured twice per round: by the long-lived warm workers and by
    # fresh ones per side (cold), the worker a deployment has after a restart.
    measures = {
        "backlog": ratios.guarantee_overhead_round,
        "noop": ratios.pipeline_overhead_round,
        "e2e": ratios.end_to_end_round,
    }
    rounds: dict[tuple[str, str], list[ratios.Pair]] = {}
    for round_ in range(args.rounds):
        ours_first = round_ % 2 == 0
        for key, measure in measures.items():
            if key not in args.only:
                continue
            temperatures = ["warm"] if key == "e2e" or args.no_cold else ["warm", "cold"]
            for temperature in temperatures:
                pair = (
                    measure(harness, args.events, ours_first=ours_first)
                    if key == "e2e"
                    else measure(
                        harness,
                        args.events,
                        ours_first=ours_first,
                        cold=temperature == "cold",
                        blocks=args.blocks,
                    )
                )
                rounds.setdefault((key, temperature), []).append(pair)
    titles = {
        "backlog": ("backlog, real handlers: ", ("ours ", "naive")),
        "noop": ("backlog, no-op handlers:", ("ours ", "bare ")),
        "e2e": ("end to end, uploads:    ", ("ours ", "naive")),
    }
    for (key, temperature), pairs in rounds.items():
        title, labels = titles[key]
        for round_, (ours, baseline) in enumerate(pairs):
            order = "ours first" if round_ % 2 == 0 else f"{labels[1].strip()} first"
            if key != "e2e" and args.blocks > 1:
                order += f" in block 1 of {args.blocks}, then alternating"
            note = f"  [{temperature}, {order}]"
            print(f"{title} {labels[0]} {ours.describe()}{note}")
            print(f"{' ' * len(title)} {labels[1]} {baseline.describe()}{note}")
    names = {
        "backlog": (
            "guarantee overhead",
            "backlog, real handlers, ours / naive",
            TARGETS["guarantee"],
        ),
        "noop": (
            "pipeline overhead",
            "backlog, no-op handlers, ours / bare Celery",
            PIPELINE_TARGET[database],
        ),
        "e2e": ("end to end", "uploads + consumers, ours / naive", TARGETS["e2e"]),
    }
    for (key, temperature), pairs in rounds.items():
        name, what, target = names[key]
        label = f"{name}, {temperature} workers" if key != "e2e" else name
        found.append(ratios.paired_ratio(f"{label} ({what})", pairs, target))
    if ("backlog", "warm") in rounds and ("noop", "warm") in rounds:
        print(ratios.throughput_cost_model(rounds[("backlog", "warm")], rounds[("noop", "warm")]))

    if "replay" in args.only or "rss" in args.only:
        found += _replays(harness, args, rounds.get(("noop", "warm")))
    if "latency" in args.only:
        latency, figure = ratios.upload_latency_ratios(harness, args.latency_uploads)
        print(figure)
        found += latency
    return found


def _replays(
    harness: Harness, args: argparse.Namespace, noop: list[ratios.Pair] | None
) -> list[ratios.Ratio]:
    """Inline against live replay per consumer, then the replay memory ratio."""
    found: list[ratios.Ratio] = []
    replays = []
    if "replay" in args.only:
        for consumer in harness.consumers:
            replay = ratios.inline_replay_ratio(harness, consumer, args.replay_events)
            print("\n".join(replay.figures()))
            replays.append(replay)
            found.append(replay.ratio())
        if noop:
            print(ratios.handler_cost_model(replays, mean_cpu_ms(o for o, _ in noop)))
    if "rss" in args.only:
        # By default on the fastest inline consumer, the shortest large replay.
        consumer = harness.consumers[0]
        if replays:
            inline_rates = {replay.consumer: replay.inline.per_second for replay in replays}
            consumer = max(harness.consumers, key=lambda c: inline_rates[c.name])
        if args.rss_consumer:
            consumer = harness.consumer_named(args.rss_consumer)
        rss, figures = ratios.replay_rss_ratio(harness, consumer, args.rss_small, args.rss_large)
        print("\n".join(figures))
        found.append(rss)
    return found


def child_argv(argv: Sequence[str], database: str, json_path: str) -> list[str]:
    """``argv`` for one database's child: ``--database`` replaced, ``--json`` added."""
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--database", "--json"):
            skip = True
        elif not arg.startswith(("--database=", "--json=")):
            rest.append(arg)
    return [*rest, "--database", database, "--json", json_path]


def side_by_side(results: dict[str, list[dict]]) -> list[str]:
    """One line per ratio with each database's value, ``met`` or ``MISSED``, and target."""
    names: list[str] = []
    for found in results.values():
        names += [ratio["name"] for ratio in found if ratio["name"] not in names]
    lines = ["side by side: ratio | " + " | ".join(results)]
    for name in names:
        cells = []
        for found in results.values():
            ratio = next((r for r in found if r["name"] == name), None)
            cells.append("-" if ratio is None else ratios.Ratio(**ratio).cell())
        lines.append(f"side by side: {name} | " + " | ".join(cells))
    return lines


def run_both(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Each database in a child process of its own (Django configures one per process)."""
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for database in DATABASES:
            path = str(Path(folder) / f"{database}.json")
            command = [sys.executable, str(Path(__file__).resolve())]
            command += child_argv(argv, database, path)
            print(f"== {database} ==", flush=True)
            returncode = subprocess.run(command, cwd=ROOT).returncode
            if returncode != 0:
                raise SystemExit(f"bench: the {database} run failed ({returncode})")
            results[database] = json.loads(Path(path).read_text())
    print("== both databases ==")
    print("\n".join(side_by_side(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.database == "both":
        run_both(args, argv)
        return
    load_before = os.getloadavg()
    database_url = args.postgres_url if args.database == "postgres" else None
    with scratch_environment(database_url=database_url, keep=args.keep) as (env, workdir):
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
            found = run(harness, args, args.database)
        finally:
            harness.stop()
    for ratio in found:
        print(ratio.line())
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in found]))
    load_after = os.getloadavg()
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; logs in {workdir}")


if __name__ == "__main__":
    main()
