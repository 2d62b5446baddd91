"""The benchmark command keeps working: a tiny run prints every ratio it promises."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from events.registry import all_consumers
from tests.processes import ROOT
from uploads.events import FILE_UPLOADED

RATIO = re.compile(r"^ratio: (?P<name>.+?) = (?P<value>[0-9.]+) \(target (?:>=|<=) [0-9.]+\) ")


@pytest.mark.worker
def test_bench_prints_every_ratio_at_a_tiny_size() -> None:
    command = [sys.executable, "bench/pipeline.py", "--events", "5"]
    command += ["--rss-small", "20", "--rss-large", "60"]
    database_url = os.environ.get("DATABASE_URL", "")
    if database_url.startswith("postgres"):
        command += ["--database-url", database_url]

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=170)

    assert result.returncode == 0, result.stdout + result.stderr
    ratios = {}
    for line in result.stdout.splitlines():
        match = RATIO.match(line)
        if match:
            ratios[match["name"]] = float(match["value"])
    names = " | ".join(ratios)
    for expected in (
        "guarantee overhead",
        "pipeline overhead",
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
