"""The benchmark command keeps working: a tiny run prints every ratio it promises."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys

import pytest

from events.registry import all_consumers, get_consumer, replace_consumer
from tests.processes import ROOT
from uploads.events import FILE_UPLOADED

RATIO = re.compile(r"^ratio: (?P<name>.+?) = (?P<value>[0-9.]+) \(target (?:>=|<=) [0-9.]+\) ")


@pytest.mark.worker
def test_bench_prints_every_ratio_at_a_tiny_size() -> None:
    command = [sys.executable, "bench/pipeline.py", "--events", "5"]
    command += ["--rss-small", "20", "--rss-large", "60", "--blocks", "2"]
    # One database per run of the suite (both would double the time): the suite's own.
    database_url = os.environ.get("DATABASE_URL", "")
    if database_url.startswith("postgres"):
        command += ["--database", "postgres", "--postgres-url", database_url]
    else:
        command += ["--database", "sqlite"]

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=420)

    assert result.returncode == 0, result.stdout + result.stderr
    ratios = {}
    for line in result.stdout.splitlines():
        match = RATIO.match(line)
        if match:
            ratios[match["name"]] = float(match["value"])
    names = " | ".join(ratios)
    for expected in (
        "guarantee overhead, warm workers",
        "guarantee overhead, cold workers",
        "pipeline overhead, warm workers",
        "pipeline overhead, cold workers",
        "end to end",
        "upload latency p50",
        "replay peak RSS",
    ):
        assert expected in names, result.stdout
    # One inline replay ratio per consumer of uploads (the bench runs without tests.probe).
    for consumer in all_consumers():
        if FILE_UPLOADED in consumer.handlers:
            assert f"inline replay {consumer.name} " in names, result.stdout
    assert all(value > 0 and math.isfinite(value) for value in ratios.values()), ratios
    assert "cost model, worker CPU ms per delivery: bare Celery" in result.stdout
    # The figure lines the ratios come from, which bench/README.md quotes.
    for figure in (
        "backlog, real handlers:  ours ",
        "backlog, no-op handlers: ours ",
        "end to end, uploads:     ours ",
        "cost model, worker CPU ms per delivery of each handler",
        "events inline, peak RSS",
        "create_upload ms, 5 each, interleaved: events p50",
        "[cold, ours first in block 1 of 2, then alternating]",
        "[warm, ours first in block 1 of 2, then alternating]",
    ):
        assert figure in result.stdout, result.stdout


def test_noop_handlers_are_a_replaced_consumer_not_a_mutated_one() -> None:
    from bench.apps import _noop, with_noop_handlers

    original = get_consumer("audit")
    real_handlers = dict(original.handlers)
    try:
        replace_consumer(with_noop_handlers(original))
        noop = get_consumer("audit")
        assert set(noop.handlers) == set(real_handlers)
        assert all(handler is _noop for handler in noop.handlers.values())
        assert dataclasses.replace(noop, handlers=original.handlers) == original
    finally:
        replace_consumer(original)
    assert get_consumer("audit") is original
    assert dict(original.handlers) == real_handlers
    # The consumer task was built for its queue: a variant cannot move it.
    with pytest.raises(ValueError):
        replace_consumer(dataclasses.replace(original, queue="elsewhere"))


def test_both_databases_run_as_children_and_end_side_by_side() -> None:
    from bench.pipeline import child_argv, side_by_side
    from bench.ratios import Ratio

    argv = ["--events", "5", "--database=both", "--json", "out.json", "--rounds", "2"]
    assert child_argv(argv, "postgres", "/tmp/p.json") == [
        *["--events", "5", "--rounds", "2"],
        *["--database", "postgres", "--json", "/tmp/p.json"],
    ]
    low = dataclasses.asdict(Ratio("pipeline overhead", 0.75, 0.85, True, ""))
    high = dataclasses.asdict(Ratio("pipeline overhead", 0.75, 0.7, True, ""))
    latency = dataclasses.asdict(Ratio("upload latency p50", 1.4, 1.0, False, ""))
    lines = side_by_side({"sqlite": [low, latency], "postgres": [high]})
    assert lines == [
        "side by side: ratio | sqlite | postgres",
        "side by side: pipeline overhead | 0.75 MISSED (>= 0.85) | 0.75 met (>= 0.7)",
        "side by side: upload latency p50 | 1.40 MISSED (<= 1.0) | -",
    ]
