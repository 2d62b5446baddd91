"""``celery`` under cProfile (CPU time) from its first task to its exit (used by ``bench/profile_drain.py``).

    python bench/profiled_worker.py OUT.prof -A config worker -P solo ...

Start-up (imports, Django set-up, the first connections) stays out of the profile: it
is enabled when task number ``BENCH_PROFILE_AFTER`` + 1 starts and written when the
worker exits (warm shutdown on SIGTERM).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder would come first on the path: the project root instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import cProfile  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from celery.signals import task_prerun  # noqa: E402

# CPU time, not wall time: on a loaded machine a wall-clock profile charges the time
# this process waited for a core (or for Redis) to whatever call it was in.
profile = cProfile.Profile(time.process_time_ns, 1e-9)
_started = 0


def _enable(**kwargs: Any) -> None:
    global _started
    _started += 1
    if _started == int(os.environ.get("BENCH_PROFILE_AFTER", "0")) + 1:
        profile.enable()


def main() -> None:
    output = sys.argv.pop(1)
    task_prerun.connect(_enable, weak=False)
    from celery.__main__ import main as celery_main

    try:
        celery_main()
    finally:
        profile.disable()
        profile.dump_stats(output)


if __name__ == "__main__":
    main()
