"""Admin fixes for third-party apps: every admin action names the permission it needs.

django-axes registers ``cleanup_expired_attempts`` without ``permissions=``, so any staff
member who may view access attempts would be offered it. It deletes attempts, so here it
takes the delete permission. This module is imported by admin autodiscovery after axes'.
"""

from __future__ import annotations

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest


class GuardedAccessAttemptAdmin(AccessAttemptAdmin):
    """Axes' admin, with its clean-up action held to the delete permission."""

    @admin.action(description="Clean up expired attempts", permissions=["delete"])
    def cleanup_expired_attempts(
        self, request: HttpRequest, queryset: QuerySet[AccessAttempt]
    ) -> None:
        super().cleanup_expired_attempts(request, queryset)


if admin.site.is_registered(AccessAttempt):
    admin.site.unregister(AccessAttempt)
admin.site.register(AccessAttempt, GuardedAccessAttemptAdmin)
