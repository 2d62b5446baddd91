from __future__ import annotations

from django.apps import AppConfig


class ScratchConfig(AppConfig):
    """A consumer app with no models, no URLs and no other wiring: ``consumer.py`` only."""

    name = "tests.scratch"
    label = "scratch"
