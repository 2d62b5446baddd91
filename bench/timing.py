"""Completion times of the tasks bench workers run, read back by ``bench/harness.py``.

Every side is timed the same way: a worker started with ``BENCH_TIMING_DIR`` appends
one line per finished task (``time.time()``, task name, state) to a file per pool
process, from Celery's ``task_postrun`` signal. That costs one line-buffered write per
task on every side alike, and it times the work itself: not when a worker answered a
ping, not when the bench process noticed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ENV = "BENCH_TIMING_DIR"

_log: IO[str] | None = None
_log_pid = 0


def install() -> None:
    """Record task completions in this process and its pool children, if asked to."""
    if not os.environ.get(ENV):
        return
    from celery.signals import task_postrun

    task_postrun.connect(_record_completion, weak=False)


def _record_completion(task: Any = None, state: str | None = None, **kwargs: Any) -> None:
    global _log, _log_pid
    if _log is None or _log_pid != os.getpid():
        # Opened in the pool process itself: a file inherited through fork would be shared.
        _log_pid = os.getpid()
        _log = (Path(os.environ[ENV]) / f"{_log_pid}.log").open("a", buffering=1)
    _log.write(f"{time.time():.6f} {getattr(task, 'name', '?')} {state}\n")


@dataclass
class CompletionLog:
    """The completion lines under one worker's timing folder, read incrementally."""

    directory: Path
    _offsets: dict[Path, int] = field(default_factory=dict)
    _rest: dict[Path, str] = field(default_factory=dict)
    # (time, task name, state), in the order they were read
    lines: list[tuple[float, str, str]] = field(default_factory=list)

    def refresh(self) -> None:
        """Read what the workers appended since the last call."""
        for path in sorted(self.directory.glob("*.log")):
            with path.open() as handle:
                handle.seek(self._offsets.get(path, 0))
                text = self._rest.get(path, "") + handle.read()
                self._offsets[path] = handle.tell()
            complete, _, self._rest[path] = text.rpartition("\n")
            for line in complete.splitlines():
                stamp, name, state = line.split(" ", 2)
                self.lines.append((float(stamp), name, state))

    def finished(self, names: set[str], since: float) -> tuple[list[float], int]:
        """Completion times of ``names`` at or after ``since`` that succeeded, and how many failed.

        A task that raised for a retry counts as neither: its retry finishes later.
        """
        self.refresh()
        times: list[float] = []
        failed = 0
        for stamp, name, state in self.lines:
            if stamp < since or name not in names:
                continue
            if state == "SUCCESS":
                times.append(stamp)
            elif state == "FAILURE":
                failed += 1
        return sorted(times), failed


def wait_until_finished(
    log: CompletionLog, names: set[str], *, count: int, since: float, timeout: float, what: str
) -> list[float]:
    """Poll ``log`` until ``count`` tasks of ``names`` finished after ``since``; their times."""
    deadline = time.monotonic() + timeout
    while True:
        times, failed = log.finished(names, since)
        if failed:
            raise SystemExit(f"bench: {failed} task(s) failed while {what}; see the worker log")
        if len(times) >= count:
            return times
        if time.monotonic() > deadline:
            raise SystemExit(
                f"bench: timed out after {timeout:.0f}s {what}: {len(times)} of {count} finished"
            )
        time.sleep(0.1)


def process_tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` and its live descendants (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            # Fields after the parenthesised command name; utime and stime are 14 and 15.
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(child) for child in children)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
    return total
