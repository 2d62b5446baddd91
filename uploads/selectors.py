"""Reads over uploads that the web pages, the JSON API and admin share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet
from django.http import Http404

from events.models import Delivery
from events.registry import consumers_for
from monitoring.selectors import PUBLIC_STATE_OF, latest_deliveries_for_aggregates
from uploads.events import FILE_UPLOADED
from uploads.models import Upload

# What a person is shown for each ledger state. "dead" reads as "failed" outside the
# operators' tools; a missing delivery (a consumer added since) waits like a pending one.
STATE_LABELS = {
    Delivery.State.DONE: "done",
    Delivery.State.DEAD: "failed",
    Delivery.State.RETRYING: "retrying",
    Delivery.State.PENDING: "pending",
}
USER_STATES = ("done", "pending", "retrying", "failed")
# States after which nothing changes unless an operator replays.
SETTLED_STATES = frozenset({"done", "failed"})
# What an owner is told about an error. The ledger's last_error is raw exception text
# (paths, hosts, sometimes a URL with credentials): staff only.
OWNER_REASONS = {
    "failed": "could not be processed; an operator can look at it and retry",
    "retrying": "a temporary problem; it is retried automatically",
}


@dataclass(frozen=True)
class ConsumerState:
    """One consumer's progress with an upload, as the user sees it.

    ``state`` is one of ``done``, ``pending``, ``retrying``, ``failed``.
    """

    consumer: str
    state: str
    attempts: int = 0
    last_error: str = ""

    @property
    def settled(self) -> bool:
        """Whether the state is final (``done`` or ``failed``)."""
        return self.state in SETTLED_STATES

    @property
    def owner_reason(self) -> str:
        """A short reason safe to show the owner, or ``""`` when there is nothing to say.

        Never the raw ``last_error``: that is for staff (exception text can name paths,
        hosts or credentials).
        """
        return OWNER_REASONS.get(self.state, "") if self.last_error else ""


def uploads_for_owner(owner: AbstractBaseUser) -> QuerySet[Upload]:
    """``owner``'s uploads, newest first."""
    return Upload.objects.filter(owner=owner).order_by("-created_at", "-pk")


def get_owned_upload(owner: AbstractBaseUser, upload_id: int | str) -> Upload:
    """``owner``'s upload ``upload_id``; ``Http404`` when it does not exist or is not theirs.

    Another user's upload is a 404, never a 403: the answer must not tell whether an id
    exists.
    """
    try:
        return uploads_for_owner(owner).get(pk=int(upload_id))
    except (Upload.DoesNotExist, TypeError, ValueError, OverflowError):
        raise Http404("no such upload") from None


def delivery_states(uploads: Iterable[Upload]) -> dict[int, dict[str, ConsumerState]]:
    """Upload id → consumer → ``ConsumerState`` of its current ``file.uploaded`` event.

    One query for all ``uploads``. Every consumer subscribed to ``file.uploaded`` appears,
    in registration order; one without a delivery (registered after the upload) is
    ``pending``. A consumer no longer registered but with a delivery appears after them.
    """
    uploads = list(uploads)
    grouped = latest_deliveries_for_aggregates(
        (upload.pk for upload in uploads), event_type=FILE_UPLOADED
    )
    subscribed = [consumer.name for consumer in consumers_for(FILE_UPLOADED)]
    result: dict[int, dict[str, ConsumerState]] = {}
    for upload in uploads:
        found = {
            delivery.consumer: ConsumerState(
                consumer=delivery.consumer,
                state=STATE_LABELS.get(
                    PUBLIC_STATE_OF.get(delivery.state, delivery.state), "pending"
                ),
                attempts=delivery.attempts,
                last_error=delivery.last_error,
            )
            for delivery in grouped.get(str(upload.pk), [])
        }
        states = {name: found.pop(name, ConsumerState(name, "pending")) for name in subscribed}
        states.update(found)
        result[upload.pk] = states
    return result


def upload_as_json(
    upload: Upload, states: dict[int, dict[str, ConsumerState]] | None = None
) -> dict[str, Any]:
    """The JSON shape of an upload (API and the pages' polling).

    ``id``, ``name``, ``size``, ``content_type``, ``created_at`` (ISO 8601) and
    ``deliveries`` (consumer → state). ``states`` comes from ``delivery_states`` for a
    whole page; without it (or without this upload in it) one query reads them.
    """
    if states is None or upload.pk not in states:
        states = delivery_states([upload])
    return {
        "id": upload.pk,
        "name": upload.original_name,
        "size": upload.size,
        "content_type": upload.content_type,
        "created_at": upload.created_at.isoformat(),
        "deliveries": {name: state.state for name, state in states[upload.pk].items()},
    }
