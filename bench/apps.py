"""The bench app: naive tasks, completion timing and, when asked, no-op handlers.

Loaded only by ``bench.settings``; it changes nothing in the real consumers unless
``BENCH_NOOP_HANDLERS=1``, which makes every consumer's handlers do nothing while its
queue, ledger and retries stay, so a drain measures the pipeline's own overhead.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from django.apps import AppConfig


def _noop(*args: object) -> None:
    """Handle nothing."""


class BenchConfig(AppConfig):
    name = "bench"
    label = "bench"

    def ready(self) -> None:
        # Last in INSTALLED_APPS: every consumer has registered itself by now.
        from bench import naive, timing
        from events.registry import all_consumers

        naive.create_naive_tasks()
        timing.install()
        if os.environ.get("BENCH_NOOP_HANDLERS") == "1":
            for consumer in all_consumers():
                if not isinstance(consumer.handlers, MutableMapping):
                    raise RuntimeError("bench: consumer handlers are no longer a dict to swap")
                for event_type in list(consumer.handlers):
                    consumer.handlers[event_type] = _noop
