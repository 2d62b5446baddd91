"""The bulk redrive form of admin: a ``housekeeping.redrive.RedriveFilter`` from a page."""

from __future__ import annotations

from django import forms

from events.registry import all_consumers
from housekeeping.redrive import REDRIVE_STATES, RedriveFilter


class BulkRedriveForm(forms.Form):
    """Consumers, states, the events' time range and a text in the last error.

    ``up_to_pk`` and ``confirmed_count`` come back hidden from the confirmation step:
    the redrive that starts is the one whose count the operator saw.
    """

    consumers = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every consumer.",
    )
    states = forms.MultipleChoiceField(
        choices=[(state, state) for state in REDRIVE_STATES],
        initial=["dead"],
        widget=forms.CheckboxSelectMultiple,
        help_text="Dead and done ones are reset to pending; open ones are re-sent as they are.",
    )
    since = forms.DateTimeField(
        required=False,
        label="Events from",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="When the event occurred (inclusive), in the site's time zone.",
    )
    until = forms.DateTimeField(
        required=False,
        label="Events before",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    error_contains = forms.CharField(
        required=False,
        max_length=200,
        strip=True,
        label="Last error contains",
        help_text="Case-insensitive, e.g. timeout.",
    )
    up_to_pk = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    confirmed_count = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # Read at each request: the registry is complete only once the apps are ready.
        self.fields["consumers"].choices = [(c.name, c.name) for c in all_consumers()]

    def clean(self) -> dict:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            raise forms.ValidationError("“Events from” must be before “Events before”.")
        return cleaned

    def redrive_filter(self) -> RedriveFilter:
        """The filter of a valid form."""
        data = self.cleaned_data
        return RedriveFilter(
            consumers=tuple(data["consumers"]),
            states=tuple(data["states"]),
            since=data["since"],
            until=data["until"],
            error_contains=data["error_contains"],
            up_to_pk=data["up_to_pk"],
        )
