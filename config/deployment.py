"""The worker processes a deployment runs, derived from the consumer registry.

One worker per consumer queue, with the processes its consumers ask for, and one for the
``events`` queue (relay and housekeeping). The command line of a worker is built here
only: the Procfile (``manage.py consumers --procfile``, which ``bin/start`` runs), the
compose stack's ``workers`` service (``manage.py consumers --run-workers``, see
``run_workers``) and the suite's worker fixture all take it from ``worker_argv``. So a
consumer app added to ``INSTALLED_APPS`` gets its worker everywhere with no other edit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from django.conf import settings

from events.registry import all_consumers

# The relay and housekeeping tasks are light: one process is plenty.
HOUSEKEEPING_CONCURRENCY = 1


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process group: the queue it consumes and how many pool processes."""

    queue: str
    concurrency: int


def housekeeping_queue() -> str:
    """The queue of the relay and housekeeping tasks (Celery's default queue)."""
    return settings.CELERY_TASK_DEFAULT_QUEUE


def worker_specs() -> list[WorkerSpec]:
    """One worker per consumer queue (registration order), then the housekeeping one.

    Consumers that share a queue share its worker, which gets the largest concurrency
    any of them asks for.
    """
    wanted: dict[str, int] = {}
    for consumer in all_consumers():
        wanted[consumer.queue] = max(wanted.get(consumer.queue, 0), consumer.concurrency)
    wanted.setdefault(housekeeping_queue(), HOUSEKEEPING_CONCURRENCY)
    return [WorkerSpec(queue=queue, concurrency=n) for queue, n in wanted.items()]


def all_queues() -> list[str]:
    """Every queue a worker must consume for all consumers and housekeeping to run."""
    return [spec.queue for spec in worker_specs()]


def worker_argv(
    *, queues: Sequence[str], concurrency: int, hostname: str, program: Sequence[str] = ("celery",)
) -> list[str]:
    """The ``celery -A config worker`` command line for ``queues``.

    Mingle and gossip are off: they cost a broker round trip per worker and per event,
    and nothing here uses them; heartbeats stay on, so Flower can switch task events on.
    """
    return [
        *program,
        "-A",
        "config",
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-n",
        hostname,
        "-l",
        "INFO",
        "--without-mingle",
        "--without-gossip",
    ]


def worker_nodename(queue: str) -> str:
    """The node name of ``queue``'s worker, ``<queue>@%h`` (``%h``: the host's name).

    One name per queue, so several workers share a host and each answers a ping by name.
    """
    return f"{queue}@%h"


def worker_commands(*, program: Sequence[str] = ("celery",)) -> dict[str, list[str]]:
    """Queue → the command line of its worker, for every worker ``worker_specs`` wants."""
    return {
        spec.queue: worker_argv(
            queues=[spec.queue],
            concurrency=spec.concurrency,
            hostname=worker_nodename(spec.queue),
            program=program,
        )
        for spec in worker_specs()
    }


def procfile(*, bin_dir: str = ".venv/bin") -> str:
    """The Procfile ``bin/start`` runs under honcho: web, one worker per queue, beat, Flower."""
    lines = [f"web: {bin_dir}/python manage.py runserver --noreload 127.0.0.1:${{WEB_PORT:-8000}}"]
    for queue, argv in worker_commands(program=[f"{bin_dir}/celery"]).items():
        lines.append(f"{queue}: {' '.join(argv)}")
    lines.append(f"beat: {bin_dir}/celery -A config beat -l INFO")
    lines.append(
        f"flower: {bin_dir}/celery -A config flower --address=127.0.0.1 --port=${{FLOWER_PORT:-5555}}"
    )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------
# The compose stack's ``workers`` service: every worker of the registry in one container
# ------------------------------------------------------------------------------
def host_nodenames(host: str | None = None) -> list[str]:
    """The node names this host's workers answer to, ``%h`` expanded as Celery expands it."""
    from celery.utils.nodenames import host_format

    return [host_format(worker_nodename(spec.queue), host=host) for spec in worker_specs()]


def unanswered_workers(*, timeout: float = 10.0, host: str | None = None) -> list[str]:
    """This host's worker node names that do not answer a broker ping within ``timeout`` s.

    The compose ``workers`` service is healthy when this is empty: each of its workers,
    not merely one of them, answers under its own name.
    """
    from config.celery import app

    wanted = host_nodenames(host)
    replies = app.control.ping(destination=wanted, timeout=timeout)
    answered = {name for reply in replies for name in reply}
    return [name for name in wanted if name not in answered]


def run_workers(
    *,
    program: Sequence[str] = (sys.executable, "-m", "celery"),
    say: Callable[[str], None] = print,
) -> int:
    """Run every worker ``worker_commands`` lists in the foreground; return an exit status.

    The workers are this process's children, each in its own session, so a signal reaches
    them only through here. SIGTERM or SIGINT is passed on as one SIGTERM to each
    worker's main process, which Celery takes as a warm shutdown: running tasks finish
    (the container's ``stop_grace_period`` bounds the wait), where a signal to their
    whole process group would kill the pool processes mid-task. A worker that exits on
    its own (a refused configuration, a crash) stops the others the same way, and its
    status is returned, so the container exits and its restart policy starts them all.
    Honcho would do the multiplexing, but it SIGKILLs what still runs 5 s after the
    first SIGTERM, which would cut tasks short.
    """
    workers: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
    stopping = False

    def stop_all(reason: str) -> None:
        nonlocal stopping
        if not stopping:
            say(f"workers: {reason}; warm shutdown of every worker (SIGTERM)")
        stopping = True
        for _, process in workers.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_all(f"{signal.Signals(signum).name} received")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for queue, argv in worker_commands(program=program).items():
            if stopping:
                break
            try:
                process = subprocess.Popen(argv, start_new_session=True)
            except OSError as exc:
                status = 1
                stop_all(f"the {queue} worker could not start ({exc})")
                break
            workers[process.pid] = (queue, process)
            say(f"workers: started the {queue} worker (pid {process.pid}): {' '.join(argv)}")
        running = {pid for pid, (_, process) in workers.items() if process.returncode is None}
        while running:
            # os.wait, not Popen.wait: whichever worker ends first. As PID 1 of a container
            # without an init, it also reaps orphans handed to this process.
            pid, wait_status = os.wait()
            if pid not in running:
                continue
            running.discard(pid)
            queue, process = workers[pid]
            process.returncode = os.waitstatus_to_exitcode(wait_status)
            say(f"workers: the {queue} worker exited with status {process.returncode}")
            if not stopping:
                # Even status 0 is a failure here: nothing asked this worker to stop.
                status = process.returncode if process.returncode > 0 else 1
                stop_all(f"the {queue} worker stopped on its own")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
