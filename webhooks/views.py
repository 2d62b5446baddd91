"""The signed-in user's webhook endpoints: list, add, delete, test ping. Owners only."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webhooks.models import Call, Endpoint
from webhooks.services import (
    EVENT_TYPES,
    EndpointRefused,
    add_endpoint,
    delete_endpoint,
    recent_calls,
    send_ping,
)

_NEW_SECRET = "webhooks_new_secret"


class EndpointForm(forms.Form):
    url = forms.URLField(label="URL", max_length=2000, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        label="Events",
        choices=[(t, t) for t in EVENT_TYPES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event.",
    )


@login_required
@require_http_methods(["GET", "POST"])
def endpoints(request: HttpRequest) -> HttpResponse:
    """``/webhooks/``: the user's endpoints with their last calls; POST adds one."""
    form = EndpointForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            endpoint = add_endpoint(
                owner=request.user,
                url=form.cleaned_data["url"],
                event_types=form.cleaned_data["event_types"],
            )
        except EndpointRefused as exc:
            form.add_error("url", str(exc))
        else:
            # Shown on the next page only: the secret is never displayed again.
            request.session[_NEW_SECRET] = {"id": endpoint.pk, "secret": endpoint.secret}
            messages.success(request, f"Added {endpoint.url}.")
            return redirect("webhooks:endpoints")
    mine = list(Endpoint.objects.filter(owner=request.user))
    calls = recent_calls(mine)
    rows = [(endpoint, calls[endpoint.pk]) for endpoint in mine]
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "webhooks/endpoints.html",
        {"form": form, "rows": rows, "new_secret": request.session.pop(_NEW_SECRET, None)},
        status=status,
    )


@login_required
@require_POST
def delete(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    """Delete one of the user's endpoints (someone else's is a 404)."""
    endpoint = get_object_or_404(Endpoint, pk=endpoint_id, owner=request.user)
    url = endpoint.url
    delete_endpoint(endpoint=endpoint)
    messages.success(request, f"Deleted {url}.")
    return redirect("webhooks:endpoints")


@login_required
@require_POST
def ping(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    """Send a signed ``webhook.test`` message to one of the user's endpoints now."""
    endpoint = get_object_or_404(Endpoint, pk=endpoint_id, owner=request.user)
    result = send_ping(endpoint=endpoint)
    if result.outcome == Call.Outcome.DELIVERED:
        messages.success(request, f"Test ping to {endpoint.url}: HTTP {result.status}.")
    else:
        messages.error(
            request, f"Test ping to {endpoint.url} failed: {result.error or result.status}."
        )
    return redirect("webhooks:endpoints")
