"""Throughput across hosts with and without 50 ms on every link (``tc netem``).

    .venv/bin/python bench/hosts_latency.py [--uploads 40] [--clients 4] [--delay-ms 50]

Builds the suite's several-hosts stack (``tests/hosts.py``: services, web and two worker
hosts in network namespaces, files on SeaweedFS, PostgreSQL), then twice, first without
and then with ``--delay-ms`` of netem delay on every host's link: ``--clients`` threads
post ``--uploads`` files through the web host's API, and the clock stops when every
delivery of them is done. Prints uploads/s for each run and their ratio (with ÷ without)
as one JSON line. Needs root and a kernel with ``sch_netem``; says why in one line and
exits 2 where either is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")


def run(stack, *, uploads: int, clients: int) -> float:
    """Uploads/s for ``uploads`` files posted by ``clients`` threads, until all delivered."""
    from tests.factories import upload_consumers
    from tests.processes import wait_for

    def post(_: int) -> int:
        word = uuid.uuid4().hex[:10]
        status, upload_id = stack.upload(f"{word}.txt", f"bench {word}".encode(), timeout=120)
        if status != 201:
            raise RuntimeError(f"upload answered {status}")
        return upload_id

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        ids = list(pool.map(post, range(uploads)))
    expected = uploads * len(upload_consumers())
    keys = [str(i) for i in ids]

    def done() -> bool:
        rows = stack.sql(
            "SELECT count(*) FROM events_delivery d JOIN events_event e ON e.id = d.event_id"
            " WHERE e.aggregate_id = ANY(%s) AND d.state = 'done'",
            keys,
        )
        return rows[0][0] == expected

    wait_for(done, timeout=600, interval=0.2, what="every delivery")
    return uploads / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--delay-ms", type=int, default=50)
    args = parser.parse_args()

    import django

    django.setup()
    from tests.hosts import HostsStack, netem_available, unusable_reason

    reason = unusable_reason() or (
        None if netem_available() else "this kernel has no tc netem (sch_netem)"
    )
    if reason:
        print(f"hosts_latency: cannot run: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="uploads-hosts-bench-"))
    stack = HostsStack(workdir)
    try:
        stack.up()
        run(stack, uploads=max(4, args.uploads // 10), clients=args.clients)  # warm-up
        plain = run(stack, uploads=args.uploads, clients=args.clients)
        stack.topology.delay(args.delay_ms)
        delayed = run(stack, uploads=args.uploads, clients=args.clients)
    finally:
        stack.down()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps(
            {
                "uploads": args.uploads,
                "clients": args.clients,
                "delay_ms": args.delay_ms,
                "uploads_per_s_without": round(plain, 2),
                "uploads_per_s_with": round(delayed, 2),
                "ratio_with_over_without": round(delayed / plain, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
