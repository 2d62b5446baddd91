"""Throughput across hosts with and without 50 ms on every link.

    .venv/bin/python bench/hosts_latency.py [--uploads 40] [--clients 4] [--delay-ms 50]
        [--method netem|proxy]

Builds the suite's several-hosts stack (``tests/hosts.py``: services, web and two worker
hosts in network namespaces, files on SeaweedFS, PostgreSQL). In each run ``--clients``
threads post ``--uploads`` files through the web host's API, and the clock stops when
every delivery of them is done; each run follows a warm-up on the same links. First
without latency, then with ``--delay-ms`` on every host's link: ``tc netem`` where the
kernel has it, else delaying proxies on every link between hosts (tests/delay_proxy.py;
``--method`` chooses). With the proxies a run through them at 0 ms comes in between, so
their own cost is not taken for latency's. Prints a table, then the same as one JSON
line: uploads/s for each run, the ratio with ÷ without, the method, and how long one
upload request takes alone in each (what latency adds to a request). Needs root
(network namespaces); says why in one line and exits 2 without it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")


def _post(stack) -> int:
    word = uuid.uuid4().hex[:10]
    status, upload_id = stack.upload(f"{word}.txt", f"bench {word}".encode(), timeout=120)
    if status != 201:
        raise RuntimeError(f"upload answered {status}")
    return upload_id


def _wait_delivered(stack, ids: list[int]) -> None:
    from tests.factories import upload_consumers
    from tests.processes import wait_for

    expected = len(ids) * len(upload_consumers())
    keys = [str(i) for i in ids]

    def done() -> bool:
        rows = stack.sql(
            "SELECT count(*) FROM events_delivery d JOIN events_event e ON e.id = d.event_id"
            " WHERE e.aggregate_id = ANY(%s) AND d.state = 'done'",
            keys,
        )
        return rows[0][0] == expected

    wait_for(done, timeout=600, interval=0.2, what="every delivery")


def run(stack, *, uploads: int, clients: int) -> float:
    """Uploads/s for ``uploads`` files posted by ``clients`` threads, until all delivered."""
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        ids = list(pool.map(lambda _: _post(stack), range(uploads)))
    _wait_delivered(stack, ids)
    return uploads / (time.monotonic() - started)


def request_seconds(stack, *, count: int = 5) -> float:
    """The median time one upload request takes alone (each waits for the deliveries of
    the one before): what latency adds to a single request."""
    times = []
    for _ in range(count):
        started = time.monotonic()
        upload_id = _post(stack)
        times.append(time.monotonic() - started)
        _wait_delivered(stack, [upload_id])
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--delay-ms", type=int, default=50)
    parser.add_argument(
        "--method",
        choices=("netem", "proxy"),
        help="how latency is added (default: netem where the kernel has it, else proxy)",
    )
    args = parser.parse_args()

    import django

    django.setup()
    from tests.hosts import HostsStack, netem_available, unusable_reason

    reason = unusable_reason()
    if args.method == "netem" and not reason and not netem_available():
        reason = "this kernel has no tc netem (sch_netem); --method proxy works without it"
    if reason:
        print(f"hosts_latency: cannot run: {reason}", file=sys.stderr)
        return 2
    method = {"netem": "netem", "proxy": "userspace proxy"}.get(args.method or "", "")
    method = method or ("netem" if netem_available() else "userspace proxy")
    warm_up = max(4, args.uploads // 10)
    workdir = Path(tempfile.mkdtemp(prefix="uploads-hosts-bench-"))
    stack = HostsStack(workdir)
    rates: dict[str, float] = {}
    requests: dict[str, float] = {}
    try:
        stack.up()

        def measure(name: str) -> None:
            run(stack, uploads=warm_up, clients=args.clients)
            rates[name] = run(stack, uploads=args.uploads, clients=args.clients)
            requests[name] = request_seconds(stack)

        measure("without")
        if method == "userspace proxy":
            stack.delay(0, method=method)
            measure("through_proxies_at_0_ms")
            stack.no_delay()
        stack.delay(args.delay_ms, method=method)
        measure("with")
    finally:
        stack.down()
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "method": method,
        "uploads": args.uploads,
        "clients": args.clients,
        "delay_ms": args.delay_ms,
        **{f"uploads_per_s_{name}": round(rate, 2) for name, rate in rates.items()},
        **{f"request_s_{name}": round(seconds, 3) for name, seconds in requests.items()},
        "ratio_with_over_without": round(rates["with"] / rates["without"], 3),
    }
    labels = {
        "without": "no latency",
        "through_proxies_at_0_ms": "through the proxies, 0 ms (their own cost)",
        "with": f"{args.delay_ms} ms on every link ({method})",
    }
    print(
        f"{args.uploads} uploads by {args.clients} clients until every delivery is done;"
        " one upload request alone (median of 5)"
    )
    for name, rate in rates.items():
        print(f"  {labels[name]:<46} {rate:8.2f} uploads/s {requests[name]:8.3f} s")
    print(f"  {'ratio with ÷ without':<46} {result['ratio_with_over_without']:8.3f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
