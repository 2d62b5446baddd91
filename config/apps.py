"""The project's own app: process-wide system checks, registered once Django is ready."""

from __future__ import annotations

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    name = "config"
    verbose_name = "Project wiring"

    def ready(self) -> None:
        """Register the checks that refuse a configuration which would lose or repeat work."""
        from django.core import checks

        from config.checks import check_delivery_config

        checks.register(check_delivery_config, "celery")
