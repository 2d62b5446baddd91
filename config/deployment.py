"""The worker processes a deployment runs, derived from the consumer registry.

One worker per consumer queue, with the processes its consumers ask for, and one for the
``events`` queue (relay and housekeeping). The command line of a worker is built here
only: the Procfile (``manage.py consumers --procfile``), the suite's worker fixture and
the compose check all take it from ``worker_argv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def procfile(*, bin_dir: str = ".venv/bin") -> str:
    """The Procfile ``bin/start`` runs under honcho: web, one worker per queue, beat, Flower."""
    lines = [f"web: {bin_dir}/python manage.py runserver --noreload 127.0.0.1:${{WEB_PORT:-8000}}"]
    for spec in worker_specs():
        argv = worker_argv(
            queues=[spec.queue],
            concurrency=spec.concurrency,
            hostname=f"{spec.queue}@%h",
            program=[f"{bin_dir}/celery"],
        )
        lines.append(f"{spec.queue}: {' '.join(argv)}")
    lines.append(f"beat: {bin_dir}/celery -A config beat -l INFO")
    lines.append(
        f"flower: {bin_dir}/celery -A config flower --address=127.0.0.1 --port=${{FLOWER_PORT:-5555}}"
    )
    return "\n".join(lines) + "\n"
