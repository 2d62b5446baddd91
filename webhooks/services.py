"""Webhook endpoints and the signed, at-least-once-per-endpoint delivery of events to them.

How each endpoint gets each event, and keeps getting it until it answers (``deliver_event``)
-------------------------------------------------------------------------------------
The handler is a ``TwoStepHandler``: this runs in ``prepare``, before the delivery row is
locked, so no HTTP call holds a database lock. For each of the owner's active endpoints
that subscribes to the event's type, each step its own short transaction:

1. **Claim** the (event, endpoint) row with ``events.claim_effect``: inserting
   it as ``claimed`` decides a race between duplicate messages. A row already
   ``delivered`` (the endpoint answered 2xx) or ``rejected`` (it refused for good)
   means: never call it again for this event, on a retry because another endpoint
   failed, on a duplicate message, and on ``replay_events --force``. A fresh claim of
   another attempt, or a ``Retry-After`` not yet reached (``not_before``, on the
   database's clock), means: look again later (``DeliveryBusy``, which counts no
   attempt). A claim older than the consumer's lease (its hard time limit plus
   ``EVENTS_LEASE_MARGIN_SECONDS``) belongs to an attempt Celery has killed and is
   taken over; so is a ``failed`` row, by one attempt only.
2. **Call** the endpoint: a signed POST (Standard Webhooks), no redirects, short
   timeouts, at most ``MAX_RESPONSE_BYTES`` of the answer read. Every call is logged
   (``Call``).
3. **Mark** the row: 2xx ``delivered``; 408, 429, 5xx, timeouts and connection errors
   ``failed`` (with the capped ``Retry-After``); any other answer ``rejected``, and
   410 Gone also deactivates the endpoint.

Then, if any endpoint failed transiently, ``TransientError`` retries the delivery with
the consumer's backoff; the next attempt calls only the endpoints still owed. Rejections
are the receiver's final word: the delivery is done, the endpoint's row and the
webhooks page say what it answered.

A crash after the receiver answered and before step 3 commits leaves the row
``claimed``; once stale, a redelivery calls the endpoint again with the same
``webhook-id`` (the event id), on which receivers deduplicate.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from events import Consumer, DeliveryBusy, Envelope, TransientError, claim_effect
from uploads.events import FILE_DELETED, FILE_UPLOADED
from webhooks import transport
from webhooks.models import Call, Endpoint, EndpointDelivery

logger = logging.getLogger(__name__)

EVENT_TYPES = (FILE_UPLOADED, FILE_DELETED)
PING_TYPE = "webhook.test"
# The upload's fields a receiver gets; never the file's contents or where it is stored.
DATA_FIELDS = ("upload_id", "owner_id", "name", "size", "content_type")
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
# Of an answer, only the status matters: read this much at most, keep less.
MAX_RESPONSE_BYTES = 64 * 1024
_ERROR_TEXT_MAX = 500
# Answered for good: never called again for that event.
FINISHED = (EndpointDelivery.State.DELIVERED, EndpointDelivery.State.REJECTED)
# 408 Request Timeout and 429 Too Many Requests ask to come back later, as 5xx do.
TRANSIENT_STATUSES = frozenset({408, 429})


class EndpointRefused(ValueError):
    """An endpoint that cannot be added: bad URL, non-public address, unknown event type."""


# ------------------------------------------------------------------------------
# Endpoints
# ------------------------------------------------------------------------------
def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form, ``whsec_`` + base64 key bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


@transaction.atomic
def add_endpoint(*, owner: AbstractBaseUser, url: str, event_types: Sequence[str] = ()) -> Endpoint:
    """Register ``url`` for ``owner``'s events of ``event_types`` (empty: all), with a new secret.

    Raises ``EndpointRefused`` for a URL that is not http(s), whose host resolves to a
    non-public address (unless ``WEBHOOKS_ALLOW_PRIVATE_ADDRESSES``), or an unknown type.
    """
    url = url.strip()
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        raise EndpointRefused(
            f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)})"
        )
    try:
        transport.check_url(url)
    except transport.AddressRefused as exc:
        raise EndpointRefused(str(exc)) from exc
    return Endpoint.objects.create(
        owner=owner, url=url, secret=new_secret(), event_types=list(dict.fromkeys(event_types))
    )


def delete_endpoint(*, endpoint: Endpoint) -> None:
    """Remove ``endpoint`` with its delivery rows and call log; it receives nothing more."""
    endpoint.delete()


# ------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------
def message_body(*, event_type: str, occurred_at: dt.datetime, data: dict) -> bytes:
    """The JSON body receivers get: ``{"type", "timestamp", "data"}``."""
    body = {"type": event_type, "timestamp": occurred_at.isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def event_data(envelope: Envelope) -> dict:
    """What a receiver learns about the upload: id, owner, name, size and type, if known."""
    return {key: envelope.payload[key] for key in DATA_FIELDS if key in envelope.payload}


def signed_headers(*, secret: str, message_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers: ``webhook-id``, ``webhook-timestamp`` (now), ``webhook-signature``."""
    now = timezone.now()
    signature = Webhook(secret).sign(msg_id=message_id, timestamp=now, data=body.decode())
    return {
        "content-type": "application/json",
        "user-agent": "upload-events-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


# ------------------------------------------------------------------------------
# Calling an endpoint
# ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallResult:
    """How one call ended: ``outcome`` is a ``Call.Outcome``; ``retry_after`` in seconds."""

    outcome: str
    status: int | None = None
    error: str = ""
    retry_after: float | None = None

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver says this endpoint no longer exists."""
        return self.status == 410


def http_client() -> httpx.Client:
    """The guarded client with the configured timeouts (a few seconds to connect, ten to answer)."""
    return transport.client(
        connect_timeout=getattr(settings, "WEBHOOKS_CONNECT_TIMEOUT_SECONDS", 3.0),
        read_timeout=getattr(settings, "WEBHOOKS_READ_TIMEOUT_SECONDS", 10.0),
    )


def call_endpoint(
    http: httpx.Client,
    *,
    endpoint: Endpoint,
    message_id: str,
    event_type: str,
    body: bytes,
    event_id: uuid.UUID | None = None,
) -> CallResult:
    """POST ``body`` to ``endpoint``, signed; classify the answer and log the call."""
    headers = signed_headers(secret=endpoint.secret, message_id=message_id, body=body)
    started = time.monotonic()
    result = _post(http, endpoint.url, headers=headers, body=body)
    Call.objects.create(
        endpoint=endpoint,
        event_id=event_id,
        event_type=event_type,
        outcome=result.outcome,
        status_code=result.status,
        error=result.error,
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    return result


def _post(http: httpx.Client, url: str, *, headers: dict[str, str], body: bytes) -> CallResult:
    try:
        with http.stream("POST", url, content=body, headers=headers) as response:
            text = _read_capped(response)
    except transport.AddressRefused as exc:
        return CallResult(Call.Outcome.REJECTED, error=f"refused: {exc}")
    except httpx.TimeoutException as exc:
        return CallResult(Call.Outcome.TRANSIENT, error=f"timed out: {type(exc).__name__}")
    except (httpx.TransportError, OSError) as exc:
        return CallResult(Call.Outcome.TRANSIENT, error=f"{type(exc).__name__}: {exc}")
    status = response.status_code
    if 200 <= status < 300:
        return CallResult(Call.Outcome.DELIVERED, status=status)
    detail = f"HTTP {status}" + (f": {text}" if text else "")
    if status in TRANSIENT_STATUSES or status >= 500:
        return CallResult(
            Call.Outcome.TRANSIENT,
            status=status,
            error=detail,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    if 300 <= status < 400:
        detail += " (redirects are not followed: register the final URL)"
    return CallResult(Call.Outcome.REJECTED, status=status, error=detail)


def _read_capped(response: httpx.Response) -> str:
    """At most ``MAX_RESPONSE_BYTES`` of the answer, as short text for the log."""
    received = bytearray()
    for chunk in response.iter_raw():
        received += chunk
        if len(received) >= MAX_RESPONSE_BYTES:
            break  # the rest is never read: closing the stream drops the connection
    text = bytes(received[:_ERROR_TEXT_MAX]).decode("utf-8", errors="replace")
    return " ".join(text.split())


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay or HTTP date), capped; ``None`` if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or timezone.now())).total_seconds()
    # Honoured up to the longest backoff the pipeline itself would wait.
    return max(0.0, min(seconds, float(settings.EVENTS_RETRY_BACKOFF_MAX_SECONDS)))


def send_ping(*, endpoint: Endpoint) -> CallResult:
    """Send a signed ``webhook.test`` message to ``endpoint`` now, and log it like any call."""
    message_id = f"ping_{uuid.uuid4().hex}"
    body = message_body(
        event_type=PING_TYPE,
        occurred_at=timezone.now(),
        data={"endpoint_id": endpoint.pk, "owner_id": endpoint.owner_id},
    )
    with http_client() as http:
        return call_endpoint(
            http, endpoint=endpoint, message_id=message_id, event_type=PING_TYPE, body=body
        )


# ------------------------------------------------------------------------------
# Delivering an event
# ------------------------------------------------------------------------------
def endpoints_for(envelope: Envelope) -> list[Endpoint]:
    """The active endpoints of the event's owner that subscribe to its type, oldest first."""
    owner_id = envelope.payload.get("owner_id")
    if owner_id is None:
        return []
    endpoints = Endpoint.objects.filter(owner_id=owner_id, active=True).order_by("pk")
    return [endpoint for endpoint in endpoints if endpoint.subscribes(envelope.type)]


def deliver_event(envelope: Envelope) -> None:
    """Call each endpoint owed ``envelope`` once (see the module docstring).

    Raises ``TransientError`` when an endpoint failed in a way worth retrying, and
    ``DeliveryBusy`` when an endpoint can only be called later (claimed by another
    attempt, or its ``Retry-After`` not reached) and nothing failed.
    """
    endpoints = endpoints_for(envelope)
    if not endpoints:
        return
    body = message_body(
        event_type=envelope.type, occurred_at=envelope.occurred_at, data=event_data(envelope)
    )
    failures: list[str] = []
    later: list[DeliveryBusy] = []
    consumer = _consumer()
    with http_client() as http:
        for endpoint in endpoints:
            try:
                row = claim_effect(
                    EndpointDelivery,
                    key={"event_id": envelope.id, "endpoint": endpoint},
                    consumer=consumer,
                    finished=FINISHED,
                    not_before="not_before",
                    what=f"the call to {endpoint.url}",
                )
            except DeliveryBusy as busy:
                later.append(busy)  # the other endpoints are still called now
                continue
            if row.state != EndpointDelivery.State.CLAIMED:
                continue  # delivered or rejected before: never again for this event
            try:
                result = call_endpoint(
                    http,
                    endpoint=endpoint,
                    message_id=str(envelope.id),
                    event_type=envelope.type,
                    body=body,
                    event_id=envelope.id,
                )
            except BaseException as exc:
                # A time limit or a bug mid-call: the next attempt calls it again.
                _finish(row, CallResult(Call.Outcome.TRANSIENT, error=repr(exc)[:_ERROR_TEXT_MAX]))
                raise
            _finish(row, result)
            if result.outcome == Call.Outcome.TRANSIENT:
                failures.append(f"{endpoint.url}: {result.error}")
    if failures:
        raise TransientError("; ".join(failures))
    if later:
        raise DeliveryBusy(
            "; ".join(str(wait) for wait in later),
            retry_after=min(wait.retry_after for wait in later),
        )


def _consumer() -> Consumer:
    # Imported here: the consumer module imports the handlers, which import this one.
    from webhooks.consumer import consumer

    return consumer


def _finish(row: EndpointDelivery, result: CallResult) -> None:
    """Record how the call ended on the claim row; a 410 also deactivates the endpoint."""
    now = timezone.now()
    state = {
        Call.Outcome.DELIVERED: EndpointDelivery.State.DELIVERED,
        Call.Outcome.TRANSIENT: EndpointDelivery.State.FAILED,
        Call.Outcome.REJECTED: EndpointDelivery.State.REJECTED,
    }[result.outcome]
    with transaction.atomic():
        # Unconditional: the endpoint answered this call, whatever happened to the claim.
        EndpointDelivery.objects.filter(pk=row.pk).update(
            state=state,
            calls=F("calls") + 1,
            last_status=result.status,
            last_error=result.error,
            delivered_at=now if state == EndpointDelivery.State.DELIVERED else None,
            # On the database's clock, which claim_effect compares it with.
            not_before=(
                Now() + dt.timedelta(seconds=result.retry_after)
                if result.retry_after is not None
                else None
            ),
            updated_at=now,
        )
        if result.gone:
            Endpoint.objects.filter(pk=row.endpoint_id).update(
                active=False, deactivated_reason=f"410 Gone on {now:%Y-%m-%d %H:%M} UTC"
            )
    if result.gone:
        logger.warning("webhook endpoint %s answered 410 Gone: deactivated", row.endpoint_id)


# ------------------------------------------------------------------------------
# Reads for the pages
# ------------------------------------------------------------------------------
def recent_calls(endpoints: Iterable[Endpoint], *, per_endpoint: int = 5) -> dict[int, list[Call]]:
    """The last ``per_endpoint`` calls of each endpoint, newest first."""
    return {
        endpoint.pk: list(Call.objects.filter(endpoint=endpoint)[:per_endpoint])
        for endpoint in endpoints
    }
