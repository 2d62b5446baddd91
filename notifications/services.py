"""Emailing an upload's owner about what happened to it, once per event and recipient.

How one mail is sent once (``notify_owner``)
--------------------------------------------
The handler is a ``TwoStepHandler``: all of this runs in ``prepare``, before the
delivery row is locked, so the SMTP exchange never holds a database lock (on SQLite,
the whole database's write lock). Each step is its own short transaction:

1. **Claim** the mail with ``events.effects.claim_effect``: inserting the
   ``Notification`` row as ``claimed`` decides a race, since the unique (event,
   recipient) pair lets one attempt insert it. An attempt that finds the row already
   there does nothing if it is ``sent`` or ``skipped``; raises ``DeliveryBusy`` (look
   again soon, without counting a failed attempt) if another attempt's claim is younger
   than the consumer's lease (its hard time limit plus ``EVENTS_LEASE_MARGIN_SECONDS``,
   on the database's clock); and takes it over with a conditional UPDATE, which only one
   taker wins, if the claim is older than that (Celery has killed the attempt holding
   it) or if the row is ``rejected`` (the server accepted nothing; only a replay of the
   dead delivery gets here).
2. **Send** with a ``Message-ID`` derived from the event id and recipient.
3. **Mark** the row ``sent`` with ``sent_at``.

The crash window
----------------
A crash (worker killed, machine lost, database gone) after the mail server accepted
the message and before step 3 commits leaves the row ``claimed``. Once the claim is
stale a redelivery takes it over and sends the mail again, with the same
``Message-ID``, so a server or client that deduplicates on ``Message-ID`` drops the
copy. The same holds for a timeout or a dropped connection while waiting for the
server's reply to the message data: the server may have accepted the mail, but the
attempt cannot know and retries. Nothing can close this window without the mail
server taking part in a transaction; it is seconds wide, and the cost is at most one
duplicate that carries the same ``Message-ID``.

Errors
------
Connection refused, reset or timed out, ``SMTPServerDisconnected``,
``SMTPConnectError`` and 4xx replies: the mail was not accepted, so the claim is
released (the row deleted) and ``TransientError`` retries the delivery with backoff.
Any other exception while sending releases the claim too and propagates (retried).
A 5xx reply (including every recipient refused with 5xx): the row becomes ``rejected``
with the server's reply and ``PermanentError`` sends the delivery dead with it. An
owner without an email address, or deleted since: the row is ``skipped`` with the
reason, no mail, and the delivery is done.
"""

from __future__ import annotations

import hashlib
import logging
import re
import smtplib
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from events import (
    Consumer,
    DependencyUnavailable,
    Envelope,
    Forgotten,
    PermanentError,
    TransientError,
    claim_effect,
)
from notifications.models import Notification

logger = logging.getLogger(__name__)

_SUBJECT_MAX = Notification._meta.get_field("subject").max_length or 255
# Once mailed, skipped on purpose: never again. A rejected mail is tried again (replay).
FINISHED = (Notification.State.SENT, Notification.State.SKIPPED)


def message_id_for(event_id: object, recipient: str) -> str:
    """A Message-ID derived from the event, so a resent duplicate can be recognised."""
    sender = parseaddr(settings.DEFAULT_FROM_EMAIL)[1]
    domain = sender.rpartition("@")[2] or "localhost"
    recipient_tag = hashlib.sha256(recipient.lower().encode()).hexdigest()[:12]
    return f"<event-{event_id}.{recipient_tag}@{domain}>"


@dataclass(frozen=True)
class Mail:
    """A rendered mail: one-line subject, plain-text body and its HTML alternative."""

    subject: str
    text: str
    html: str


def render_mail(template: str, context: dict[str, Any]) -> Mail:
    """Render ``notifications/<template>_subject.txt``, ``.txt`` and ``.html``.

    The HTML is autoescaped (the file name is user input); the subject and text are not
    HTML and are rendered verbatim.
    """
    subject = render_to_string(f"notifications/{template}_subject.txt", context)
    subject = " ".join(subject.split())  # one line: a header cannot hold a newline
    if len(subject) > _SUBJECT_MAX:
        subject = subject[: _SUBJECT_MAX - 1] + "…"
    context = {**context, "subject": subject}
    text = render_to_string(f"notifications/{template}.txt", context)
    html = render_to_string(f"notifications/{template}.html", context)
    return Mail(subject=subject, text=_tidy(text), html=html)


def notify_owner(envelope: Envelope, *, template: str) -> Notification:
    """Email the owner of the upload in ``envelope`` once, from ``template``; record it.

    Returns the ``Notification`` (``sent`` or ``skipped``, now or by an earlier
    attempt). Raises ``DeliveryBusy`` while another attempt holds the claim,
    ``TransientError`` when the mail could not be handed over yet (the mail server is
    unreachable or said 4xx)
    and ``PermanentError`` when the server refused it for good. See the module
    docstring for the claim and its crash window.
    """
    owner = get_user_model().objects.filter(pk=envelope.payload["owner_id"]).first()
    mail = render_mail(template, _context(envelope, owner))
    if owner is None or not owner.email:
        reason = "owner has no email address" if owner else "owner no longer exists"
        return _record_skipped(envelope, mail.subject, reason)

    recipient = owner.email
    notification = claim_effect(
        Notification,
        key={"event_id": envelope.id, "recipient": recipient},
        consumer=_consumer(),
        finished=FINISHED,
        fields={
            "subject": mail.subject,
            "reason": "",
            "message_id": message_id_for(envelope.id, recipient),
        },
        what=f"the mail to {recipient}",
    )
    if notification.state != Notification.State.CLAIMED:
        return notification  # sent or skipped by an earlier attempt: nothing to do

    try:
        send_mail(mail, recipient, notification.message_id)
    except Exception as exc:
        rejection = _rejection(exc)
        if rejection is None:
            _release(notification)
            if _is_transient(exc):
                message = f"mail to {recipient} not sent: {_describe(exc)}"
                if _server_unreachable(exc):
                    raise DependencyUnavailable(message) from exc
                raise TransientError(message) from exc
            raise
        reason = f"mail to {recipient} rejected: {rejection}"
        _mark_rejected(notification, reason)
        raise PermanentError(reason) from exc

    notification.state = Notification.State.SENT
    notification.sent_at = timezone.now()
    notification.reason = ""
    with transaction.atomic():
        # Unconditional: the server accepted this mail, whatever happened to the claim.
        Notification.objects.filter(pk=notification.pk).update(
            state=notification.state, sent_at=notification.sent_at, reason=""
        )
    logger.info(
        "notification sent for event %s to %s (%s)",
        envelope.id,
        recipient,
        notification.message_id,
    )
    return notification


def send_mail(mail: Mail, recipient: str, message_id: str) -> None:
    """Hand one mail (text with an HTML alternative) to the configured backend.

    The connection is opened and closed here, so that an error while closing it, after
    the server accepted the mail, is logged instead of causing a resend.
    """
    connection = get_connection(fail_silently=False)
    message = EmailMultiAlternatives(
        subject=mail.subject,
        body=mail.text,
        to=[recipient],
        headers={"Message-ID": message_id},
        connection=connection,
    )
    message.attach_alternative(mail.html, "text/html")
    connection.open()
    try:
        connection.send_messages([message])
    except BaseException:
        _close_quietly(connection)
        raise
    _close_quietly(connection)


# ------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------
def _consumer() -> Consumer:
    # Imported here: the consumer module imports the handlers, which import this one.
    from notifications.consumer import consumer

    return consumer


def _context(envelope: Envelope, owner: Any) -> dict[str, Any]:
    payload = envelope.payload
    greeting = ""
    if owner is not None:
        greeting = owner.get_full_name() or owner.get_username()
    return {
        **payload,
        "greeting_name": greeting or "there",
        "occurred_at": envelope.occurred_at,
        "event_id": envelope.id,
    }


def _record_skipped(envelope: Envelope, subject: str, reason: str) -> Notification:
    try:
        with transaction.atomic():
            notification = Notification.objects.create(
                event_id=envelope.id,
                recipient="",
                subject=subject,
                state=Notification.State.SKIPPED,
                reason=reason,
            )
    except IntegrityError:
        return Notification.objects.get(event_id=envelope.id, recipient="")
    logger.info("notification for event %s skipped: %s", envelope.id, reason)
    return notification


def _release(notification: Notification) -> None:
    """Give the claim back (delete the row) if this attempt still holds it."""
    with transaction.atomic():
        Notification.objects.filter(
            pk=notification.pk,
            state=Notification.State.CLAIMED,
            claimed_at=notification.claimed_at,
        ).delete()


def _mark_rejected(notification: Notification, reason: str) -> None:
    with transaction.atomic():
        Notification.objects.filter(
            pk=notification.pk,
            state=Notification.State.CLAIMED,
            claimed_at=notification.claimed_at,
        ).update(state=Notification.State.REJECTED, reason=reason)


def _rejection(exc: BaseException) -> str | None:
    """The server's reply when it refused the mail for good (5xx); ``None`` otherwise."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = list(exc.recipients.values())
        if replies and all(500 <= code < 600 for code, _ in replies):
            return "; ".join(_reply(code, text) for code, text in replies)
        return None
    if isinstance(exc, smtplib.SMTPConnectError):
        return None  # the server would not talk to us at all: try again later
    if isinstance(exc, smtplib.SMTPResponseException) and 500 <= exc.smtp_code < 600:
        return _reply(exc.smtp_code, exc.smtp_error)
    return None


def _is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the mail server could not be reached or asked us to retry."""
    return isinstance(exc, OSError | smtplib.SMTPException)


def _server_unreachable(exc: BaseException) -> bool:
    """Whether the mail server itself failed (no connection, cut, timed out, 421 "service
    not available"), not this one mail (a 4xx about a recipient or the message)."""
    if isinstance(exc, smtplib.SMTPConnectError | smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421
    # Every SMTPException is an OSError; the others (recipients refused) are the mail's.
    return isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{code} {' '.join(text.split())}".strip()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        detail = "; ".join(_reply(code, text) for code, text in exc.recipients.values())
    elif isinstance(exc, smtplib.SMTPResponseException):
        detail = _reply(exc.smtp_code, exc.smtp_error)
    else:
        detail = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {detail}"


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception as exc:
        logger.warning("closing the mail connection failed (mail already handed over): %s", exc)


def _tidy(text: str) -> str:
    """Plain text without the blank-line runs that template tags leave behind."""
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def forget_mails(pruned: Forgotten) -> int:
    """Retention: drop the mail claims of events being pruned (nothing can replay them)."""
    return Notification.objects.filter(event_id__in=pruned.event_ids).delete()[0]
