"""The bench app: naive tasks, completion timing and, when asked, no-op handlers.

Loaded only by ``bench.settings``; it changes nothing in the real consumers unless
``BENCH_NOOP_HANDLERS=1``, which makes every consumer's handlers do nothing while its
queue, ledger and retries stay, so a drain measures the pipeline's own overhead.
"""

from __future__ import annotations

import dataclasses
import os

from django.apps import AppConfig

from events.registry import Consumer


def _noop(*args: object) -> None:
    """Handle nothing."""


def with_noop_handlers(consumer: Consumer) -> Consumer:
    """``consumer`` with the same queue, limits and event types, every handler a no-op."""
    return dataclasses.replace(consumer, handlers=dict.fromkeys(consumer.handlers, _noop))


class BenchConfig(AppConfig):
    name = "bench"
    label = "bench"

    def ready(self) -> None:
        # Last in INSTALLED_APPS: every consumer has registered itself by now.
        from bench import naive, timing
        from events.registry import all_consumers, replace_consumer

        naive.create_naive_tasks()
        timing.install()
        if os.environ.get("BENCH_NOOP_HANDLERS") == "1":
            for consumer in all_consumers():
                replace_consumer(with_noop_handlers(consumer))
