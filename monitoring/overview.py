"""The events overview's figures: what admin's index and the overview page show.

One function builds them from the selectors ``event_status`` and ``/metrics`` use, so
the admin index, the overview page and the command always agree. Eight small queries:
the ledger counts and oldest waiting (two), the paused consumers and the open breakers
(two), the event totals (two), the oldest waiting delivery (one) and the charts' last
hour (one).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from events.models import Delivery
from events.registry import all_consumers
from monitoring.charts import overview_charts
from monitoring.selectors import (
    FINISHED_STATES,
    ConsumerLedger,
    delivery_state_names,
    ledger_by_consumer,
    pipeline_status,
)


def can_view_overview(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether ``user`` may see the overview: staff who may view events and deliveries."""
    # As admin's own view permission: viewing, or changing (which implies viewing).
    return bool(
        user.is_active
        and getattr(user, "is_staff", False)
        and any(user.has_perm(f"events.{p}_event") for p in ("view", "change"))
        and any(user.has_perm(f"events.{p}_delivery") for p in ("view", "change"))
    )


def can_bulk_redrive(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether ``user`` may redrive deliveries (the delivery actions and bulk redrive):
    re-sending changes the ledger, so it takes the change permission."""
    return bool(user.has_perm("events.change_delivery"))


def can_control_consumers(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Whether ``user`` may pause and resume consumers: it steers the ledger as a redrive
    does, so it takes the same change permission."""
    return can_bulk_redrive(user)


def format_age(seconds: float | None) -> str:
    """``95.2`` → ``"1 min 35 s"``; ``None`` → ``"-"`` (nothing waits)."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    shown = [f"{value} {unit}" for value, unit in parts if value]
    return " ".join(shown[:2]) or "0 s"


def next_probe(seconds: float | None) -> str:
    """When an open breaker's relay probe goes: ``"in 25 s"``, or ``"due"`` (next pass)."""
    return f"in {format_age(seconds)}" if seconds else "due"


def next_probe_at(probe_at: dt.datetime | None) -> str:
    """``next_probe`` for an open breaker's ``probe_at``, from now."""
    wait = (probe_at - timezone.now()).total_seconds() if probe_at else 0.0
    return next_probe(max(wait, 0.0))


def consumer_rows(
    ledgers: dict[str, ConsumerLedger], status: dict[str, Any], states: list[str]
) -> list[dict[str, Any]]:
    """One row per consumer: its count per state (each linking to those deliveries in
    admin), the age of its oldest waiting delivery, whether any is dead, whether an
    operator paused it (since when, why), which the controls next to it change, and its
    open breakers (key, for how long, when the next probe goes), each with its controls.
    """
    changelist = reverse("admin:events_delivery_changelist")
    registered = {consumer.name for consumer in all_consumers()}
    rows = []
    for name, figures in status["consumers"].items():
        cells = [
            (
                ledgers[name].counts[state],
                f"{changelist}?{urlencode({'consumer': name, 'state__exact': state})}",
            )
            for state in states
        ]
        rows.append(
            {
                "consumer": name,
                "cells": cells,
                "oldest_pending": format_age(figures["oldest_pending_seconds"]),
                "has_dead": figures["dead"] > 0,
                "paused": figures["paused"],
                "paused_reason": figures["paused_reason"],
                "paused_for": format_age(figures["paused_seconds"]),
                "registered": name in registered,
                "breakers_open": [
                    {
                        "key": b["key"],
                        "open_for": format_age(b["open_seconds"]),
                        "next_probe": next_probe(b["next_probe_seconds"]),
                    }
                    for b in figures["breakers_open"]
                ],
            }
        )
    return rows


def overview_context() -> dict[str, Any]:
    """Everything the overview template (``admin/events/_overview.html``) draws."""
    ledgers = ledger_by_consumer()
    status = pipeline_status(ledgers)
    # Every stored state, ``running`` included: operators see what holds a lease.
    states = delivery_state_names()
    oldest = (
        Delivery.objects.exclude(state__in=FINISHED_STATES)
        .select_related("event")
        .defer("event__payload")
        .order_by("created_at", "pk")
        .first()
    )
    return {
        "events": status["events"],
        "states": states,
        "rows": consumer_rows(ledgers, status, states),
        "charts": overview_charts(consumers=list(status["consumers"])),
        "oldest": oldest,
        "oldest_url": (reverse("admin:events_delivery_change", args=[oldest.pk]) if oldest else ""),
        "event_status": status,
    }
