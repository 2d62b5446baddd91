"""The notifications consumer: templated mail, sent once per event, with classified errors.

Service-level tests run the handler in this process against Django's locmem backend;
the SMTP tests talk to a real SMTP server (aiosmtpd, in a thread); the worker tests run
a real Celery worker whose file backend writes each mail to a file.
"""

from __future__ import annotations

import datetime as dt
import email
import smtplib
import time
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from django.contrib.auth.models import User
from django.core import mail as django_mail
from django.core.mail.backends import locmem
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from events.delivery import DeliveryOutcome, lease_seconds, run_delivery
from events.exceptions import TransientError
from events.models import Delivery, Event
from events.outbox import publish_deliveries_now, record_event
from events.schemas import Envelope, schemas
from notifications import handlers
from notifications.consumer import consumer
from notifications.models import Notification
from notifications.services import message_id_for
from tests.factories import settled, upload_text
from tests.processes import free_port, wait_for
from uploads.events import FILE_DELETED, FILE_UPLOADED

pytestmark = pytest.mark.django_db


# ------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------
def uploaded_event(owner: User | None, *, name: str = "notes.txt", owner_id: int = 0) -> Event:
    """A stored ``file.uploaded`` event of ``owner``'s upload, as ``create_upload`` writes it."""
    with transaction.atomic():
        return record_event(
            event_type=FILE_UPLOADED,
            aggregate_id=4242,
            actor=owner.pk if owner else None,
            payload={
                "upload_id": 4242,
                "owner_id": owner.pk if owner else owner_id,
                "name": name,
                "size": 2048,
                "storage_name": f"uploads/x/{name}",
                "content_type": "text/plain",
                "sha256": "ab" * 32,
            },
        )


def earlier_attempt_left(
    event: Event,
    owner: User,
    state: str,
    *,
    claimed_seconds_ago: float | None = None,
    **fields: object,
) -> Notification:
    """The ``Notification`` row an earlier attempt at ``event``'s mail left behind.

    Its claim time is set that long before the database's clock, the clock claims use.
    """
    fields.setdefault("subject", "Uploaded: notes.txt")
    row = Notification.objects.create(
        event_id=event.id, recipient=owner.email, state=state, **fields
    )
    if claimed_seconds_ago is not None:
        Notification.objects.filter(pk=row.pk).update(
            claimed_at=Now() - dt.timedelta(seconds=claimed_seconds_ago)
        )
        row.refresh_from_db()
    return row


def deleted_event(owner: User, *, name: str = "notes.txt") -> Event:
    with transaction.atomic():
        return record_event(
            event_type=FILE_DELETED,
            aggregate_id=4242,
            actor=owner.pk,
            payload={"upload_id": 4242, "owner_id": owner.pk, "name": name, "storage_name": ""},
        )


def envelope_of(event: Event) -> Envelope:
    return schemas.upcast(event.to_envelope())


def deliver(event: Event, *, from_message: bool = True) -> DeliveryOutcome:
    """Run the notifications delivery of ``event`` in this process, as a worker would.

    ``from_message=False`` calls ``run_delivery`` without the consumer's name, the way
    ``replay_events --inline`` of old did: it is read from the ledger instead.
    """
    delivery = Delivery.objects.get(event=event, consumer="notifications")
    if not from_message:
        return run_delivery(delivery_id=delivery.pk)
    return run_delivery(delivery_id=delivery.pk, consumer_name="notifications")


def delivery_of(event: Event) -> Delivery:
    return Delivery.objects.get(event=event, consumer="notifications")


def html_part(message: django_mail.EmailMultiAlternatives) -> str:
    [(content, mimetype)] = message.alternatives
    assert mimetype == "text/html"
    return str(content)


# ------------------------------------------------------------------------------
# Service level, locmem backend
# ------------------------------------------------------------------------------
def test_upload_mail_has_text_and_html_parts_and_a_message_id_from_the_event(user, mailoutbox):
    event = uploaded_event(user, name="report.txt")

    assert deliver(event).outcome == "done"

    [sent] = mailoutbox
    assert sent.to == ["alice@example.com"]
    assert sent.subject == "Uploaded: report.txt"
    assert 'Your file "report.txt" (2.0\xa0KB, text/plain) was uploaded' in sent.body
    assert "<strong>report.txt</strong>" in html_part(sent)
    header = sent.message()["Message-ID"]
    assert str(event.id) in header
    assert header == message_id_for(event.id, "alice@example.com")

    notification = Notification.objects.get(event_id=event.id)
    assert notification.state == "sent"
    assert notification.recipient == "alice@example.com"
    assert notification.subject == "Uploaded: report.txt"
    assert notification.message_id == header
    assert notification.sent_at is not None
    assert notification.reason == ""


def test_deletion_mail_comes_from_its_own_templates(user, mailoutbox):
    event = deleted_event(user, name="old.csv")

    assert deliver(event).outcome == "done"

    [sent] = mailoutbox
    assert sent.subject == "Deleted: old.csv"
    assert 'Your file "old.csv" was deleted' in sent.body
    assert "<strong>old.csv</strong> was deleted" in html_part(sent)
    assert Notification.objects.get(event_id=event.id).state == "sent"


def test_running_the_handler_twice_sends_one_mail(user, mailoutbox):
    event = uploaded_event(user)
    envelope = envelope_of(event)

    first = handlers.notify_upload.prepare(envelope)
    second = handlers.notify_upload.prepare(envelope)

    assert len(mailoutbox) == 1
    assert first.pk == second.pk
    assert second.state == "sent"
    assert Notification.objects.filter(event_id=event.id).count() == 1


def test_a_fresh_claim_held_by_another_attempt_is_looked_at_again_without_counting_an_attempt(
    user, mailoutbox
):
    event = uploaded_event(user)
    claimed_at = earlier_attempt_left(event, user, "claimed", claimed_seconds_ago=5).claimed_at

    with pytest.raises(TransientError, match="another attempt holds the mail to"):
        handlers.notify_upload.prepare(envelope_of(event))
    outcome = deliver(event)

    assert outcome.outcome == "retry"
    assert "another attempt holds the mail to" in outcome.reason
    assert 0 < outcome.countdown <= 10
    # Not a failed try: the ledger stays as the attempt holding the claim will leave it.
    delivery = delivery_of(event)
    assert (delivery.state, delivery.attempts) == ("pending", 0)
    assert not delivery.tries.exists()
    assert mailoutbox == []
    notification = Notification.objects.get(event_id=event.id)
    assert (notification.state, notification.claimed_at) == ("claimed", claimed_at)


def test_a_stale_claim_of_a_crashed_attempt_is_taken_over_and_resent_once_with_the_same_id(
    user, mailoutbox
):
    # An attempt claimed the mail, maybe sent it, and died before recording it as sent.
    event = uploaded_event(user)
    message_id = message_id_for(event.id, user.email)
    earlier_attempt_left(
        event,
        user,
        "claimed",
        claimed_seconds_ago=lease_seconds(consumer) + 1,
        message_id=message_id,
    )

    assert deliver(event).outcome == "done"
    handlers.notify_upload.prepare(envelope_of(event))  # and once more: nothing

    [resent] = mailoutbox
    assert resent.message()["Message-ID"] == message_id
    notification = Notification.objects.get(event_id=event.id)
    assert notification.state == "sent"
    assert notification.sent_at is not None


def test_a_fresh_claim_is_respected_even_when_the_hosts_clock_is_a_day_ahead(
    user, mailoutbox, monkeypatch
):
    # Claims are aged on the database's clock: a host whose clock runs ahead (or a
    # database whose clock runs behind) must not take over a live attempt's mail.
    event = uploaded_event(user)
    earlier_attempt_left(event, user, "claimed", claimed_seconds_ago=5)
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + dt.timedelta(days=1))

    with pytest.raises(TransientError, match="another attempt"):
        handlers.notify_upload.prepare(envelope_of(event))

    assert mailoutbox == []
    assert Notification.objects.get(event_id=event.id).state == "claimed"


def test_a_claim_goes_stale_after_the_consumers_time_limit_plus_the_lease_margin(
    user, mailoutbox, settings
):
    settings.EVENTS_LEASE_MARGIN_SECONDS = 7
    lease = consumer.time_limit + 7
    younger, older = uploaded_event(user), uploaded_event(user)
    earlier_attempt_left(younger, user, "claimed", claimed_seconds_ago=lease - 2)
    earlier_attempt_left(older, user, "claimed", claimed_seconds_ago=lease + 2)

    with pytest.raises(TransientError, match="another attempt"):
        handlers.notify_upload.prepare(envelope_of(younger))
    handlers.notify_upload.prepare(envelope_of(older))

    [resent] = mailoutbox
    assert resent.message()["Message-ID"] == message_id_for(older.id, user.email)
    assert Notification.objects.get(event_id=younger.id).state == "claimed"
    assert Notification.objects.get(event_id=older.id).state == "sent"


@pytest.mark.parametrize(
    ("make_owner", "reason"),
    [
        (lambda: User.objects.create_user("noemail", email=""), "owner has no email address"),
        (lambda: None, "owner no longer exists"),
    ],
    ids=["owner-without-email", "owner-deleted"],
)
def test_owner_without_email_is_skipped_with_the_reason_and_no_mail(
    db, mailoutbox, make_owner, reason
):
    event = uploaded_event(make_owner(), owner_id=987654)

    assert deliver(event).outcome == "done"

    assert mailoutbox == []
    notification = Notification.objects.get(event_id=event.id)
    assert (notification.state, notification.reason) == ("skipped", reason)
    assert notification.recipient == ""
    assert notification.sent_at is None
    assert delivery_of(event).state == "done"


def test_filename_with_html_is_escaped_in_the_html_part_only(user, mailoutbox):
    name = '<img src=x onerror="alert(1)">&co.txt'
    event = uploaded_event(user, name=name)

    deliver(event)

    [sent] = mailoutbox
    html = html_part(sent)
    assert "<img" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;co.txt" in html
    assert f'Your file "{name}"' in sent.body  # plain text is not HTML: verbatim
    assert sent.subject == f"Uploaded: {name}"


def test_handler_run_without_the_consumer_name_sends_once_too(user, mailoutbox):
    # replay_events --inline used to call run_delivery without the consumer's name.
    event = uploaded_event(user)

    assert deliver(event, from_message=False).outcome == "done"
    handlers.notify_upload.prepare(envelope_of(event))

    assert len(mailoutbox) == 1
    assert Notification.objects.get(event_id=event.id).state == "sent"


def test_a_rejected_mail_is_tried_again_when_its_dead_delivery_is_replayed(user, mailoutbox):
    event = uploaded_event(user)
    earlier_attempt_left(
        event,
        user,
        "rejected",
        claimed_seconds_ago=0,
        reason="mail to alice@example.com rejected: 550 mailbox full",
    )

    assert deliver(event).outcome == "done"

    assert len(mailoutbox) == 1
    notification = Notification.objects.get(event_id=event.id)
    assert (notification.state, notification.reason) == ("sent", "")


# ------------------------------------------------------------------------------
# Error classification: what the mail backend raised decides retry or dead
# ------------------------------------------------------------------------------
TRANSIENT_ERRORS = {
    "refused": ConnectionRefusedError(111, "Connection refused"),
    "reset": ConnectionResetError(104, "Connection reset by peer"),
    "timeout": TimeoutError("timed out"),
    "disconnected": smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
    "connect-error": smtplib.SMTPConnectError(554, b"no SMTP service here"),
    "421": smtplib.SMTPResponseException(421, b"4.3.2 Service shutting down"),
    "452-recipient": smtplib.SMTPRecipientsRefused({"alice@example.com": (452, b"full")}),
}
# The mail server itself out of reach (the breaker counts these even when one mail
# repeats them); a 4xx about one recipient is that mail's.
NOT_THE_SERVERS_FAULT = {"452-recipient"}
PERMANENT_ERRORS = {
    "550-recipient": smtplib.SMTPRecipientsRefused(
        {"alice@example.com": (550, b"5.1.1 User unknown")}
    ),
    "553-sender": smtplib.SMTPSenderRefused(553, b"5.7.1 Sender not allowed", "uploads@x"),
    "554-data": smtplib.SMTPDataError(554, b"5.7.1 Message rejected as spam"),
}


def failing_send(error: BaseException):
    def send(*args: object, **kwargs: object) -> None:
        raise error

    return send


@pytest.mark.parametrize("name", TRANSIENT_ERRORS.keys())
def test_unreachable_server_or_4xx_reply_releases_the_claim_and_retries(user, monkeypatch, name):
    error = TRANSIENT_ERRORS[name]
    monkeypatch.setattr("notifications.services.send_mail", failing_send(error))
    event = uploaded_event(user)

    outcome = deliver(event)

    assert outcome.outcome == "retry"
    raised = "TransientError" if name in NOT_THE_SERVERS_FAULT else "DependencyUnavailable"
    assert outcome.reason.startswith(
        f"{raised}: mail to alice@example.com not sent: {type(error).__name__}"
    )
    assert not Notification.objects.filter(event_id=event.id).exists()


@pytest.mark.parametrize("error", PERMANENT_ERRORS.values(), ids=PERMANENT_ERRORS.keys())
def test_5xx_reply_marks_the_mail_rejected_and_the_delivery_dead(user, monkeypatch, error):
    monkeypatch.setattr("notifications.services.send_mail", failing_send(error))
    event = uploaded_event(user)

    outcome = deliver(event)

    assert outcome.outcome == "dead"
    assert outcome.reason.startswith("PermanentError: mail to alice@example.com rejected: 5")
    notification = Notification.objects.get(event_id=event.id)
    assert notification.state == "rejected"
    assert notification.reason in outcome.reason


def test_any_other_error_while_sending_releases_the_claim_and_is_retried(user, monkeypatch):
    monkeypatch.setattr("notifications.services.send_mail", failing_send(ValueError("bug")))
    event = uploaded_event(user)

    outcome = deliver(event)

    assert (outcome.outcome, outcome.reason) == ("retry", "ValueError: bug")
    assert not Notification.objects.filter(event_id=event.id).exists()


class CloseFailsBackend(locmem.EmailBackend):
    """Accepts the mail, then fails to close the connection (a QUIT that times out)."""

    def close(self) -> None:
        raise TimeoutError("timed out waiting for the reply to QUIT")


def test_an_error_closing_the_connection_after_the_mail_was_accepted_does_not_resend(
    user, settings, mailoutbox
):
    settings.EMAIL_BACKEND = "tests.test_notifications.CloseFailsBackend"
    event = uploaded_event(user)

    assert deliver(event).outcome == "done"

    assert len(mailoutbox) == 1
    assert Notification.objects.get(event_id=event.id).state == "sent"


# ------------------------------------------------------------------------------
# Real SMTP (aiosmtpd in a thread)
# ------------------------------------------------------------------------------
def message_id(message: EmailMessage) -> str:
    """The Message-ID header unfolded (a long one is folded onto a second line)."""
    return str(message["Message-ID"]).strip()


class SmtpSink:
    """An SMTP server's handler: records messages, refuses ``bounce@`` and greylists."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.partition("@")[0]
        if local == "bounce":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local == "greylist":
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK: queued"


class SmtpServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sink = SmtpSink()
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=port)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def smtp_port(settings) -> int:
    """A free port, with Django's SMTP backend pointed at it."""
    port = free_port()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    return port


@pytest.fixture
def smtp_server(smtp_port: int) -> Iterator[SmtpServer]:
    server = SmtpServer(smtp_port).start()
    yield server
    server.stop()


def test_mail_is_delivered_through_real_smtp_with_the_message_id(user, smtp_server):
    event = uploaded_event(user)

    assert deliver(event).outcome == "done"

    [received] = smtp_server.sink.messages
    assert received["To"] == "alice@example.com"
    assert received["Subject"] == "Uploaded: notes.txt"
    assert message_id(received) == message_id_for(event.id, "alice@example.com")
    assert received.get_body(("plain",)).get_content().startswith("Hello alice,")
    assert "<strong>notes.txt</strong>" in received.get_body(("html",)).get_content()
    assert Notification.objects.get(event_id=event.id).state == "sent"


def test_recipient_refused_with_550_goes_dead_with_the_reason(db, smtp_server):
    bouncing = User.objects.create_user("bounce", "bounce@example.com")
    event = uploaded_event(bouncing)

    outcome = deliver(event)

    assert outcome.outcome == "dead"
    delivery = delivery_of(event)
    assert delivery.state == "dead"
    assert delivery.attempts == 1
    assert "rejected: 550 5.1.1 <bounce@example.com>: Recipient address rejected" in (
        delivery.last_error
    )
    notification = Notification.objects.get(event_id=event.id)
    assert notification.state == "rejected"
    assert "550 5.1.1" in notification.reason
    assert smtp_server.sink.messages == []


def test_recipient_greylisted_with_451_is_retried_and_the_claim_released(db, smtp_server):
    greylisted = User.objects.create_user("greylist", "greylist@example.com")
    event = uploaded_event(greylisted)

    outcome = deliver(event)

    assert outcome.outcome == "retry"
    assert "451 4.7.1 Greylisted" in delivery_of(event).last_error
    assert delivery_of(event).state == "retrying"
    assert not Notification.objects.filter(event_id=event.id).exists()


def test_smtp_server_down_retries_and_sends_exactly_once_when_it_is_back(user, smtp_port):
    event = uploaded_event(user)

    outcome = deliver(event)

    assert outcome.outcome == "retry"
    delivery = delivery_of(event)
    assert delivery.state == "retrying"
    assert (
        "DependencyUnavailable: mail to alice@example.com not sent: ConnectionRefusedError"
        in delivery.last_error
    )
    # The mail was not accepted, so the claim was given back for the retry.
    assert not Notification.objects.filter(event_id=event.id).exists()

    server = SmtpServer(smtp_port).start()
    try:
        assert deliver(event).outcome == "done"
        assert deliver(event).outcome == "skipped"  # a duplicate message of the retry
    finally:
        server.stop()

    [received] = server.sink.messages
    assert message_id(received) == message_id_for(event.id, "alice@example.com")
    assert delivery_of(event).state == "done"
    assert delivery_of(event).attempts == 2
    assert Notification.objects.get(event_id=event.id).state == "sent"


# ------------------------------------------------------------------------------
# Through a real worker (file backend)
# ------------------------------------------------------------------------------
def mail_files(settings) -> list[Path]:
    return sorted(Path(settings.EMAIL_FILE_PATH).iterdir())


def read_mail(path: Path) -> EmailMessage:
    # The file backend appends a line of dashes after each message.
    raw = path.read_bytes().rstrip().removesuffix(b"-" * 79)
    return email.message_from_bytes(raw, policy=policy.default)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_writes_one_mail_with_both_parts_for_an_upload(live_worker, user, settings):
    upload = upload_text(user, "hello", name="hello.txt")
    event = Event.objects.get(aggregate_id=str(upload.pk), type=FILE_UPLOADED)

    wait_for(lambda: settled(event), what="deliveries")
    assert delivery_of(event).state == "done"

    [path] = mail_files(settings)
    message = read_mail(path)
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Uploaded: hello.txt"
    assert message_id(message) == message_id_for(event.id, "alice@example.com")
    assert 'Your file "hello.txt"' in message.get_body(("plain",)).get_content()
    assert "<strong>hello.txt</strong>" in message.get_body(("html",)).get_content()
    notification = Notification.objects.get(event_id=event.id)
    assert (notification.state, notification.recipient) == ("sent", "alice@example.com")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_sends_no_second_mail_when_the_message_is_redelivered(live_worker, user, settings):
    upload = upload_text(user)
    event = Event.objects.get(aggregate_id=str(upload.pk), type=FILE_UPLOADED)
    deliveries = [delivery_of(event)]
    # Duplicates racing the message sent on commit, and one more after it is done.
    publish_deliveries_now(deliveries)
    publish_deliveries_now(deliveries)
    wait_for(lambda: settled(event), what="deliveries")
    publish_deliveries_now(deliveries)
    time.sleep(1.5)  # let the duplicate messages run

    assert len(mail_files(settings)) == 1
    assert Notification.objects.filter(event_id=event.id).count() == 1
    assert Notification.objects.get(event_id=event.id).state == "sent"
    assert delivery_of(event).state == "done"
