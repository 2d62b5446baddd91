"""The signed-in user's webhook endpoints: list, add, delete, ping, rotate, types. Owners only.

The list page can show a new signing secret (once, after an add or a rotation), so it is
never cached (``never_cache`` sends ``Cache-Control: no-store``).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from webhooks.models import URL_MAX_LENGTH, Endpoint
from webhooks.services import (
    EVENT_TYPES,
    EndpointRefused,
    add_endpoint,
    delete_endpoint,
    enable_endpoint,
    queue_ping,
    recent_calls,
    rotate_secret,
    set_event_types,
)

_NEW_SECRET = "webhooks_new_secret"


def _event_types_field() -> forms.MultipleChoiceField:
    return forms.MultipleChoiceField(
        label="Events",
        choices=[(t, t) for t in EVENT_TYPES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event.",
    )


class EndpointForm(forms.Form):
    url = forms.URLField(
        label="URL",
        max_length=URL_MAX_LENGTH,
        assume_scheme="https",
        error_messages={"max_length": f"The URL is longer than {URL_MAX_LENGTH} characters."},
    )
    event_types = _event_types_field()


class EventTypesForm(forms.Form):
    event_types = _event_types_field()


def _types_form(endpoint: Endpoint, data: object = None) -> EventTypesForm:
    # One form per endpoint on the page: the prefix keeps their field ids apart.
    return EventTypesForm(
        data, initial={"event_types": endpoint.event_types}, prefix=f"endpoint-{endpoint.pk}"
    )


@never_cache
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
            _show_secret_once(request, endpoint)
            messages.success(request, f"Added endpoint {endpoint.pk}.")
            return redirect("webhooks:endpoints")
    mine = list(Endpoint.objects.filter(owner=request.user))
    calls = recent_calls(mine)
    rows = [(endpoint, calls[endpoint.pk], _types_form(endpoint)) for endpoint in mine]
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "webhooks/endpoints.html",
        {"form": form, "rows": rows, "new_secret": request.session.pop(_NEW_SECRET, None)},
        status=status,
    )


def _show_secret_once(request: HttpRequest, endpoint: Endpoint) -> None:
    # Shown on the next page only: the secret is never displayed again.
    request.session[_NEW_SECRET] = {"id": endpoint.pk, "secret": endpoint.secret}


def _mine(request: HttpRequest, endpoint_id: int) -> Endpoint:
    """One of the user's endpoints; someone else's is a 404."""
    return get_object_or_404(Endpoint, pk=endpoint_id, owner=request.user)


@login_required
@require_POST
def delete(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    """Delete one of the user's endpoints; its waiting calls stop."""
    endpoint = _mine(request, endpoint_id)
    delete_endpoint(endpoint=endpoint)
    messages.success(request, f"Deleted endpoint {endpoint_id}.")
    return redirect("webhooks:endpoints")


@login_required
@require_POST
def ping(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    """Queue a signed ``webhook.test`` call; a worker sends it and the call log shows it."""
    endpoint = _mine(request, endpoint_id)
    if queue_ping(endpoint=endpoint):
        messages.success(
            request, "Test ping queued: reload in a few seconds to see it under Last calls."
        )
    else:
        messages.error(request, "The test ping could not be queued right now; try again.")
    return redirect("webhooks:endpoints")


@login_required
@require_POST
def rotate(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    """Give the endpoint a new secret, shown once; the old one signs during the overlap."""
    endpoint = rotate_secret(endpoint_id=_mine(request, endpoint_id).pk)
    _show_secret_once(request, endpoint)
    messages.success(
        request,
        f"New secret for endpoint {endpoint.pk}. The old one still signs until "
        f"{endpoint.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC.",
    )
    return redirect("webhooks:endpoints")


@login_required
@require_POST
def enable(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    """Switch a disabled endpoint on again."""
    enable_endpoint(endpoint=_mine(request, endpoint_id))
    messages.success(request, f"Endpoint {endpoint_id} is active again.")
    return redirect("webhooks:endpoints")


@login_required
@require_POST
def event_types(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    """Choose which event types the endpoint receives (none ticked: every type)."""
    endpoint = _mine(request, endpoint_id)
    form = _types_form(endpoint, request.POST)
    if not form.is_valid():
        messages.error(request, "Unknown event type.")
        return redirect("webhooks:endpoints")
    set_event_types(endpoint=endpoint, event_types=form.cleaned_data["event_types"])
    messages.success(request, f"Endpoint {endpoint.pk} now receives the types ticked.")
    return redirect("webhooks:endpoints")
