"""``{% events_overview %}``: the events overview at the top of the admin index."""

from __future__ import annotations

from typing import Any

from django import template

from monitoring.overview import (
    can_bulk_redrive,
    can_control_consumers,
    can_view_overview,
    overview_context,
)

register = template.Library()


@register.inclusion_tag("admin/events/_index_overview.html", takes_context=True)
def events_overview(context: template.Context) -> dict[str, Any]:
    """The overview's figures for the signed-in user, or nothing if they may not see them.

    An inclusion tag rather than a custom admin site: admin's index view stays Django's
    own, and only the template the site uses for it changes (``monitoring/admin.py``).
    """
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not can_view_overview(user):
        return {"show": False}
    return {
        "show": True,
        "can_bulk_redrive": can_bulk_redrive(user),
        "can_control_consumers": can_control_consumers(user),
        # The pause and resume forms post back: an inclusion tag's context is its own.
        "csrf_token": context.get("csrf_token"),
        **overview_context(),
    }
