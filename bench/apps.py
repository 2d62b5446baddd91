"""``--handlers noop``: the three consumers keep their queues, ledger and retries, but
their handlers do nothing, so the figure isolates the pipeline's own overhead."""

from __future__ import annotations

import dataclasses
import os

from django.apps import AppConfig


def _noop(envelope: object) -> None:
    """Handle nothing."""


class BenchConfig(AppConfig):
    name = "bench"
    label = "bench"

    def ready(self) -> None:
        if os.environ.get("BENCH_NOOP_HANDLERS") != "1":
            return
        from events import registry

        for consumer in registry.all_consumers():
            handlers = dict.fromkeys(consumer.handlers, _noop)
            registry._consumers[consumer.name] = dataclasses.replace(consumer, handlers=handlers)
