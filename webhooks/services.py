"""Webhook endpoints and the signed, at-least-once delivery of events to them.

How each endpoint gets each event
---------------------------------
1. **Fan-out** (consumer ``webhooks``, ``fan_out_event``): in the upload event's
   finishing transaction, one ``EndpointDelivery`` row and one ``webhook.call`` event per
   active endpoint of the owner that subscribes to the type. A forced replay of the
   upload event calls no endpoint again that answered it for good (2xx, or a final
   refusal): the row's unique (event, endpoint) pair remembers.
2. **Call** (consumer ``webhook_calls``, ``call_for_event``): each ``webhook.call`` is its
   own kernel delivery, so each endpoint has its own retries, backoff, dead letter and
   replay, and a slow endpoint holds one worker process for at most
   ``WEBHOOKS_CALL_DEADLINE_SECONDS``, never another endpoint's call. The handler loads
   the endpoint (deleted or disabled: done, no call), makes one signed POST (Standard
   Webhooks; no redirects; a total deadline), logs it (``Call``) and records how it went:

   - 2xx: ``delivered``; the endpoint's failure streak ends;
   - 408, 429, 5xx, the deadline, connection errors: ``failed``; ``DependencyUnavailable``
     retries the delivery with the kernel's backoff (a ``Retry-After`` is kept as
     ``not_before``: a retry that comes sooner waits without counting an attempt);
   - any other answer, or a refused address: ``rejected``, final for this event; 410
     Gone also disables the endpoint.

   Every failed call starts or continues the endpoint's failure streak
   (``failing_since``); a streak of ``WEBHOOKS_DISABLE_AFTER_DAYS`` disables the endpoint
   and records ``webhook.endpoint_disabled``, which notifications mails to the owner.

**At least once.** A worker that dies after the receiver answered and before the
outcome is recorded leaves the call's delivery to its lease: it is called again, with
the same ``webhook-id`` (the upload event's id, the same on every call for that event).
Receivers deduplicate on it.

URLs never reach a log or an error text (they may carry a secret in their path): logs
and errors name the endpoint by id.
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
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from standardwebhooks.webhooks import Webhook

from events import DependencyUnavailable, Envelope, Forgotten, record_event
from events.exceptions import DeliveryBusy
from uploads.events import FILE_DELETED, FILE_UPLOADED
from webhooks import transport
from webhooks.events import WEBHOOK_CALL, WEBHOOK_ENDPOINT_DISABLED, endpoint_aggregate
from webhooks.models import RESPONSE_KEPT_BYTES, URL_MAX_LENGTH, Call, Endpoint, EndpointDelivery

logger = logging.getLogger(__name__)

EVENT_TYPES = (FILE_UPLOADED, FILE_DELETED)
PING_TYPE = "webhook.test"
# The upload's fields a receiver gets; never the file's contents or where it is stored.
DATA_FIELDS = ("upload_id", "owner_id", "name", "size", "content_type")
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
# Of an answer, read this much at most; the call log keeps RESPONSE_KEPT_BYTES.
MAX_RESPONSE_BYTES = 64 * 1024
# Answered for good: a duplicate message of the call does not call again.
FINISHED = (EndpointDelivery.State.DELIVERED, EndpointDelivery.State.REJECTED)
# 408 Request Timeout and 429 Too Many Requests ask to come back later, as 5xx do.
TRANSIENT_STATUSES = frozenset({408, 429})
PRUNE_CHUNK = 1000


class EndpointRefused(ValueError):
    """An endpoint that cannot be added: bad URL, non-public address, unknown event type."""


# ------------------------------------------------------------------------------
# Endpoints
# ------------------------------------------------------------------------------
def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form, ``whsec_`` + base64 key bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_event_types(event_types: Iterable[str]) -> list[str]:
    """``event_types`` without repeats; ``EndpointRefused`` for an unknown one."""
    event_types = list(dict.fromkeys(event_types))
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        raise EndpointRefused(
            f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)})"
        )
    return event_types


@transaction.atomic
def add_endpoint(*, owner: AbstractBaseUser, url: str, event_types: Sequence[str] = ()) -> Endpoint:
    """Register ``url`` for ``owner``'s events of ``event_types`` (empty: all), with a new secret.

    Raises ``EndpointRefused`` for a URL over ``URL_MAX_LENGTH`` characters, one that is
    not http(s), carries ``user:password@``, or whose host does not resolve to public
    addresses only (unless ``WEBHOOKS_ALLOW_PRIVATE_ADDRESSES``), or an unknown type.
    """
    url = url.strip()
    if len(url) > URL_MAX_LENGTH:
        raise EndpointRefused(f"the URL is longer than {URL_MAX_LENGTH} characters")
    event_types = check_event_types(event_types)
    try:
        transport.check_url(url)
    except transport.AddressRefused as exc:
        raise EndpointRefused(str(exc)) from None
    return Endpoint.objects.create(
        owner=owner, url=url, secret=new_secret(), event_types=event_types
    )


def delete_endpoint(*, endpoint: Endpoint) -> None:
    """Remove ``endpoint`` with its rows and call log; its calls, retries included, stop.

    A call already waiting finds no endpoint and ends done without calling.
    """
    endpoint.delete()


def set_event_types(*, endpoint: Endpoint, event_types: Sequence[str]) -> Endpoint:
    """Send ``endpoint`` only events of ``event_types`` from now on (empty: every type)."""
    endpoint.event_types = check_event_types(event_types)
    endpoint.save(update_fields=["event_types"])
    return endpoint


def enable_endpoint(*, endpoint: Endpoint) -> Endpoint:
    """Switch a disabled endpoint on again, with a clean failure record."""
    Endpoint.objects.filter(pk=endpoint.pk).update(
        active=True, deactivated_reason="", failing_since=None
    )
    endpoint.refresh_from_db()
    return endpoint


def secret_overlap() -> dt.timedelta:
    """How long the old secret still signs after a rotation (``WEBHOOKS_SECRET_OVERLAP_HOURS``)."""
    return dt.timedelta(hours=float(getattr(settings, "WEBHOOKS_SECRET_OVERLAP_HOURS", 24)))


@transaction.atomic
def rotate_secret(*, endpoint_id: int) -> Endpoint:
    """Give the endpoint a new secret; the current one keeps signing for the overlap.

    A rotation during an overlap drops the oldest secret at once: two at most sign.
    Raises ``Endpoint.DoesNotExist`` for an unknown id.
    """
    endpoint = Endpoint.objects.select_for_update().get(pk=endpoint_id)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = timezone.now() + secret_overlap()
    endpoint.secret = new_secret()
    endpoint.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
    logger.info("webhook endpoint %s: signing secret rotated", endpoint.pk)
    return endpoint


def signing_secrets(endpoint: Endpoint, *, now: dt.datetime | None = None) -> list[str]:
    """The secrets that sign a call now: the current one, and the previous during its overlap."""
    now = now or timezone.now()
    found = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        found.append(endpoint.previous_secret)
    return found


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


def signed_headers(
    *, secrets: Sequence[str], message_id: str, body: bytes, now: dt.datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers; ``webhook-signature`` holds one ``v1,`` signature per secret.

    The spec lets the header carry several space-separated signatures; a receiver's
    library accepts the message when any of them verifies with its secret.
    """
    now = now or timezone.now()
    signatures = [
        Webhook(secret).sign(msg_id=message_id, timestamp=now, data=body.decode())
        for secret in secrets
    ]
    return {
        "content-type": "application/json",
        "user-agent": "upload-events-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


# ------------------------------------------------------------------------------
# Calling an endpoint
# ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallResult:
    """How one call ended: ``outcome`` is a ``Call.Outcome``; ``retry_after`` in seconds.

    ``error`` never holds the URL; ``body`` is the start of the receiver's answer.
    """

    outcome: str
    status: int | None = None
    error: str = ""
    retry_after: float | None = None
    body: str = ""

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver says this endpoint no longer exists."""
        return self.status == 410


def call_deadline_seconds() -> float:
    """``WEBHOOKS_CALL_DEADLINE_SECONDS``: connect, send and the whole answer, together."""
    return float(getattr(settings, "WEBHOOKS_CALL_DEADLINE_SECONDS", 10))


def call_endpoint(
    *,
    endpoint: Endpoint,
    message_id: str,
    event_type: str,
    body: bytes,
    event_id: uuid.UUID | None = None,
) -> CallResult:
    """POST ``body`` to ``endpoint``, signed, within the call deadline; classify and log it."""
    headers = signed_headers(secrets=signing_secrets(endpoint), message_id=message_id, body=body)
    started = time.monotonic()
    result = _post(
        endpoint.url, headers=headers, body=body, deadline=started + call_deadline_seconds()
    )
    Call.objects.create(
        endpoint=endpoint,
        event_id=event_id,
        event_type=event_type,
        outcome=result.outcome,
        status_code=result.status,
        error=result.error,
        response_body=result.body,
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    return result


def _post(url: str, *, headers: dict[str, str], body: bytes, deadline: float) -> CallResult:
    """One POST. Errors are described by kind only: httpx's texts may quote the URL."""
    try:
        # An endpoint stored before credentials were refused: never send them.
        transport.refuse_credentials(url)
        with (
            transport.client(
                connect_timeout=getattr(settings, "WEBHOOKS_CONNECT_TIMEOUT_SECONDS", 3.0),
                read_timeout=getattr(settings, "WEBHOOKS_READ_TIMEOUT_SECONDS", 10.0),
                deadline=deadline,
            ) as http,
            http.stream("POST", url, content=body, headers=headers) as response,
        ):
            text = _read_capped(response, deadline=deadline)
    except transport.AddressRefused as exc:
        return CallResult(Call.Outcome.REJECTED, error=str(exc))
    except (httpx.HTTPError, OSError) as exc:
        if time.monotonic() >= deadline:
            return _past_deadline()
        if isinstance(exc, httpx.TimeoutException):
            return CallResult(Call.Outcome.TRANSIENT, error=f"timed out: {type(exc).__name__}")
        return CallResult(Call.Outcome.TRANSIENT, error=f"{type(exc).__name__}: no answer")
    if time.monotonic() >= deadline:
        return _past_deadline()
    status = response.status_code
    if 200 <= status < 300:
        return CallResult(Call.Outcome.DELIVERED, status=status, body=text)
    detail = f"HTTP {status}"
    if status in TRANSIENT_STATUSES or status >= 500:
        return CallResult(
            Call.Outcome.TRANSIENT,
            status=status,
            error=detail,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            body=text,
        )
    if 300 <= status < 400:
        detail += " (redirects are not followed: register the final URL)"
    return CallResult(Call.Outcome.REJECTED, status=status, error=detail, body=text)


def _past_deadline() -> CallResult:
    return CallResult(
        Call.Outcome.TRANSIENT,
        error=f"timed out: the call passed its {call_deadline_seconds():g} s deadline",
    )


def _read_capped(response: httpx.Response, *, deadline: float) -> str:
    """At most ``MAX_RESPONSE_BYTES`` of the answer; its first ``RESPONSE_KEPT_BYTES`` as text."""
    received = bytearray()
    for chunk in response.iter_raw():
        received += chunk
        if len(received) >= MAX_RESPONSE_BYTES or time.monotonic() >= deadline:
            break  # the rest is never read: closing the stream drops the connection
    return bytes(received[:RESPONSE_KEPT_BYTES]).decode("utf-8", errors="replace")


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
    """Send a signed ``webhook.test`` message to ``endpoint`` now, and log it like any call.

    Runs in a worker (``webhooks.tasks.send_ping``), never in a web request.
    """
    message_id = f"ping_{uuid.uuid4().hex}"
    body = message_body(
        event_type=PING_TYPE,
        occurred_at=timezone.now(),
        data={"endpoint_id": endpoint.pk, "owner_id": endpoint.owner_id},
    )
    return call_endpoint(endpoint=endpoint, message_id=message_id, event_type=PING_TYPE, body=body)


def queue_ping(*, endpoint: Endpoint) -> bool:
    """Ask a worker to ping ``endpoint``; ``False`` when the broker cannot take it now."""
    from webhooks.consumer import calls
    from webhooks.tasks import send_ping as ping_task

    try:
        ping_task.apply_async(args=[endpoint.pk], queue=calls.queue)
    except (KombuError, RedisError, OSError) as exc:
        logger.warning("could not queue a ping to webhook endpoint %s: %s", endpoint.pk, exc)
        return False
    return True


# ------------------------------------------------------------------------------
# Fan-out and calls
# ------------------------------------------------------------------------------
def endpoints_for(envelope: Envelope) -> list[Endpoint]:
    """The active endpoints of the event's owner that subscribe to its type, oldest first."""
    owner_id = envelope.payload.get("owner_id")
    if owner_id is None:
        return []
    endpoints = Endpoint.objects.filter(owner_id=owner_id, active=True).order_by("pk")
    return [endpoint for endpoint in endpoints if endpoint.subscribes(envelope.type)]


def fan_out_event(envelope: Envelope) -> int:
    """Record one ``webhook.call`` per subscribed endpoint not finished with it; how many.

    Runs inside the delivery's finishing transaction (``record_event`` needs one).
    """
    data = event_data(envelope)
    recorded = 0
    for endpoint in endpoints_for(envelope):
        row, _ = EndpointDelivery.objects.get_or_create(event_id=envelope.id, endpoint=endpoint)
        if row.state in FINISHED:
            # A forced replay: this endpoint answered for good. One that has not (its
            # call still failing, or owed since before this design) gets a call again.
            continue
        record_event(
            event_type=WEBHOOK_CALL,
            aggregate_id=endpoint_aggregate(endpoint.pk),
            payload={
                "endpoint_id": endpoint.pk,
                "owner_id": endpoint.owner_id,
                "message_id": str(envelope.id),
                "event_type": envelope.type,
                "occurred_at": envelope.occurred_at.isoformat(),
                "data": data,
            },
            actor=envelope.actor,
            correlation_id=envelope.correlation_id,
        )
        recorded += 1
    return recorded


def call_for_event(envelope: Envelope) -> None:
    """Make the one call a ``webhook.call`` event asks for, and record how it went.

    Returns without calling when the endpoint was deleted or disabled, or already
    answered for good. Raises ``DependencyUnavailable`` (retried by the kernel) when the call
    failed in a way worth retrying, ``DeliveryBusy`` while the receiver's
    ``Retry-After`` has not passed.
    """
    payload = envelope.payload
    endpoint = Endpoint.objects.filter(pk=payload["endpoint_id"]).first()
    if endpoint is None or not endpoint.active:
        logger.info(
            "webhook call for event %s skipped: endpoint %s is %s",
            payload["message_id"],
            payload["endpoint_id"],
            "deleted" if endpoint is None else "disabled",
        )
        return
    row, _ = EndpointDelivery.objects.get_or_create(
        event_id=payload["message_id"], endpoint=endpoint
    )
    if row.state in FINISHED:
        return  # a duplicate message, or a replay: this endpoint answered for good
    if EndpointDelivery.objects.filter(pk=row.pk, not_before__gt=Now()).exists():
        assert row.not_before is not None
        wait = (row.not_before - timezone.now()).total_seconds()
        raise DeliveryBusy(
            f"endpoint {endpoint.pk} asked to wait (Retry-After)", retry_after=max(1.0, wait)
        )
    body = message_body(
        event_type=payload["event_type"],
        occurred_at=dt.datetime.fromisoformat(payload["occurred_at"]),
        data=payload["data"],
    )
    result = call_endpoint(
        endpoint=endpoint,
        message_id=payload["message_id"],
        event_type=payload["event_type"],
        body=body,
        event_id=uuid.UUID(payload["message_id"]),
    )
    record_outcome(row=row, endpoint=endpoint, result=result)
    if result.outcome == Call.Outcome.TRANSIENT:
        # No answer, a timeout, 408, 429 or 5xx: the endpoint failed, not this message,
        # so its breaker counts it even when one call keeps failing alone.
        raise DependencyUnavailable(f"endpoint {endpoint.pk}: {result.error}")


def record_outcome(*, row: EndpointDelivery, endpoint: Endpoint, result: CallResult) -> None:
    """Record a call on its row and on the endpoint's failure streak; disable if it is over.

    One transaction: the row, the streak, and (when this call ends the endpoint) the
    disable with its ``webhook.endpoint_disabled`` event.
    """
    state = {
        Call.Outcome.DELIVERED: EndpointDelivery.State.DELIVERED,
        Call.Outcome.TRANSIENT: EndpointDelivery.State.FAILED,
        Call.Outcome.REJECTED: EndpointDelivery.State.REJECTED,
    }[result.outcome]
    now = timezone.now()
    with transaction.atomic():
        EndpointDelivery.objects.filter(pk=row.pk).update(
            state=state,
            calls=F("calls") + 1,
            last_status=result.status,
            last_error=result.error,
            delivered_at=now if state == EndpointDelivery.State.DELIVERED else None,
            # On the database's clock, which call_for_event compares it with.
            not_before=(
                Now() + dt.timedelta(seconds=result.retry_after)
                if result.retry_after is not None
                else None
            ),
            updated_at=now,
        )
        endpoints = Endpoint.objects.filter(pk=endpoint.pk)
        if state == EndpointDelivery.State.DELIVERED:
            endpoints.exclude(failing_since=None).update(failing_since=None)
            return
        endpoints.filter(failing_since=None).update(failing_since=Now())
        if result.gone:
            disable_endpoint(
                endpoint=endpoint, reason=f"it answered 410 Gone on {now:%Y-%m-%d %H:%M} UTC"
            )
            return
        days = disable_after_days()
        disable_endpoint(
            endpoint=endpoint,
            reason=f"every call failed for {days:g} days (the last: {result.error})",
            failing_for=dt.timedelta(days=days),
        )


def disable_after_days() -> float:
    """``WEBHOOKS_DISABLE_AFTER_DAYS``: how long an endpoint may fail before it is disabled."""
    return float(getattr(settings, "WEBHOOKS_DISABLE_AFTER_DAYS", 5))


def disable_endpoint(
    *, endpoint: Endpoint, reason: str, failing_for: dt.timedelta | None = None
) -> bool:
    """Disable ``endpoint`` and record ``webhook.endpoint_disabled`` (its owner is mailed).

    With ``failing_for``, only if it has been failing at least that long (database
    clock). The conditional UPDATE lets one caller win: one event, one mail. Must run
    inside ``transaction.atomic()``. Returns whether this call disabled it.
    """
    rows = Endpoint.objects.filter(pk=endpoint.pk, active=True)
    if failing_for is not None:
        rows = rows.filter(failing_since__lte=Now() - failing_for)
    reason = reason[: Endpoint._meta.get_field("deactivated_reason").max_length or 255]
    if not rows.update(active=False, deactivated_reason=reason):
        return False
    record_event(
        event_type=WEBHOOK_ENDPOINT_DISABLED,
        aggregate_id=endpoint_aggregate(endpoint.pk),
        payload={
            "endpoint_id": endpoint.pk,
            "owner_id": endpoint.owner_id,
            "endpoint": endpoint.display_url,
            "reason": reason,
        },
    )
    logger.warning("webhook endpoint %s disabled: %s", endpoint.pk, reason)
    return True


# ------------------------------------------------------------------------------
# Reads for the pages, and retention
# ------------------------------------------------------------------------------
def recent_calls(endpoints: Iterable[Endpoint], *, per_endpoint: int = 10) -> dict[int, list[Call]]:
    """The last ``per_endpoint`` calls of each endpoint, newest first."""
    return {
        endpoint.pk: list(Call.objects.filter(endpoint=endpoint)[:per_endpoint])
        for endpoint in endpoints
    }


def prune_calls(*, older_than: dt.datetime, chunk_size: int = PRUNE_CHUNK) -> int:
    """Delete calls logged before ``older_than``, and finished endpoint rows last touched before it.

    In chunks of ``chunk_size`` rows, each its own short transaction, so a large log
    never holds a long lock. Rows still owed a call (pending or failed) stay. Returns
    the number of rows deleted.
    """
    deleted = 0
    for queryset in (
        Call.objects.filter(created_at__lt=older_than),
        EndpointDelivery.objects.filter(updated_at__lt=older_than, state__in=FINISHED),
    ):
        while True:
            ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:chunk_size])
            if not ids:
                break
            with transaction.atomic():
                deleted += queryset.model.objects.filter(pk__in=ids).delete()[0]
    return deleted


def forget_calls(pruned: Forgotten) -> int:
    """Retention: drop the endpoint rows and logged calls of events being pruned."""
    ids = pruned.event_ids
    return (
        EndpointDelivery.objects.filter(event_id__in=ids).delete()[0]
        + Call.objects.filter(event_id__in=ids).delete()[0]
    )


def prune_calls_before(cutoff: dt.datetime) -> int:
    """Retention by age (``Consumer.prune_before``): see ``prune_calls``."""
    return prune_calls(older_than=cutoff)
