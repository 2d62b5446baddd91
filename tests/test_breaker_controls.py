"""Operators' controls of an open breaker (issue 19): close it, or have the relay probe
now, from the services, the ``consumers`` command and the admin overview, each recorded
in the audit log. In-process, with a real SMTP server on loopback going down and up.

With a real worker and the relay running: ``tests/test_breaker_smtp.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from audit.models import AuditEntry
from audit.services import verify_chain
from events.breaker import take_due_probes
from events.control import BreakerNotOpen, close_breaker, probe_breaker
from events.delivery import run_delivery
from events.models import Breaker, Delivery
from events.registry import get_consumer
from events.relay import due_delivery_ids, relay_outbox
from events.testing import drain
from housekeeping.events import OPERATOR_CONTROL
from tests.factories import upload_text
from tests.processes import free_port
from tests.test_notifications import SmtpServer, message_id

pytestmark = pytest.mark.django_db

UPLOADS = 5
CONTROL_URL = "admin:events_consumer_control"


@pytest.fixture(autouse=True)
def _breaker_settings(settings):
    settings.EVENTS_BREAKER_FAILURES = 3
    # No probe within any test unless an operator asks for one.
    settings.EVENTS_BREAKER_PROBE_SECONDS = 3600


class Smtp:
    """A real SMTP server on loopback, down until ``up()``; Django's SMTP backend aims at it."""

    def __init__(self, port: int) -> None:
        self.server = SmtpServer(port)
        self.running = False

    def up(self) -> None:
        self.server.start()
        self.running = True

    @property
    def messages(self) -> list:
        return self.server.sink.messages


@pytest.fixture
def smtp(settings) -> Iterator[Smtp]:
    port = free_port()  # nothing listens yet: the mail server is down
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    smtp = Smtp(port)
    yield smtp
    if smtp.running:
        smtp.server.stop()


def notification_deliveries() -> list[Delivery]:
    return list(Delivery.objects.filter(consumer="notifications").order_by("pk"))


def open_the_mail_breaker(user) -> None:
    """Upload ``UPLOADS`` files with the mail server down: two mails retry, the third
    failure opens the breaker, the rest park."""
    for i in range(UPLOADS):
        upload_text(user, f"file {i}", name=f"f{i}.txt")
    outcomes = [o.outcome for o in drain("notifications")]
    assert outcomes == ["retry", "retry"] + ["parked"] * (UPLOADS - 2)
    assert Breaker.objects.get(consumer="notifications").opened_at is not None


def run(delivery: Delivery) -> str:
    return run_delivery(delivery_id=delivery.pk, consumer_name=delivery.consumer).outcome


def make_breaker(consumer: str, key: str = "", *, opened: bool = True, failures: int = 5):
    return Breaker.objects.create(
        consumer=consumer,
        key=key,
        failures=failures,
        opened_at="2026-01-01T00:00Z" if opened else None,
        probe_at="2999-01-01T00:00Z" if opened else None,
    )


# ------------------------------------------------------------------------------
# The services
# ------------------------------------------------------------------------------
def test_close_sends_every_parked_mail_at_once_and_each_exactly_once(user, smtp, caplog):
    open_the_mail_breaker(user)
    smtp.up()  # the mail server is back; the next probe is an hour away
    assert {o.outcome for o in drain("notifications")} == {"parked"}
    assert not due_delivery_ids(["notifications"], limit=100)

    with caplog.at_level(logging.WARNING, logger="events.control"):
        closed = close_breaker(consumer="notifications")

    assert closed.parked == UPLOADS
    assert not Breaker.objects.filter(consumer="notifications").exists()
    assert "breaker notifications closed by an operator: 5 parked deliveries" in caplog.text
    # every one is due now, the two that retried before it opened included
    assert set(due_delivery_ids(["notifications"], limit=100)) == {
        d.pk for d in notification_deliveries()
    }
    assert [o.outcome for o in drain("notifications")] == ["done"] * UPLOADS
    assert drain("notifications") == []
    assert len(smtp.messages) == UPLOADS
    assert len({message_id(m) for m in smtp.messages}) == UPLOADS


def test_probe_now_makes_the_relays_next_pass_send_one_probe(user, smtp, sent_tasks):
    open_the_mail_breaker(user)
    relay_outbox()
    assert "notifications" not in {c.kwargs["queue"] for c in sent_tasks.call_args_list}
    assert take_due_probes([get_consumer("notifications")]) == []  # an hour away

    probed = probe_breaker(consumer="notifications")

    assert probed.parked == UPLOADS
    sent_tasks.reset_mock()
    relay_outbox()
    sent = [c for c in sent_tasks.call_args_list if c.kwargs["queue"] == "notifications"]
    assert len(sent) == 1  # one probe, not the whole backlog
    breaker = Breaker.objects.get(consumer="notifications")
    probe = Delivery.objects.get(pk=breaker.probe_delivery_id)
    assert probe.enqueued_at is not None
    # only the probe may run; it finds the server back, which closes the breaker
    smtp.up()
    other = next(d for d in notification_deliveries() if d.pk != probe.pk)
    assert run(other) == "parked"
    assert run(probe) == "done"
    assert not Breaker.objects.exists()
    assert [o.outcome for o in drain("notifications")] == ["done"] * (UPLOADS - 1)
    assert len({message_id(m) for m in smtp.messages}) == len(smtp.messages) == UPLOADS


def test_a_probe_asked_for_while_the_dependency_is_still_down_fails_and_waits_the_interval(
    user, smtp
):
    open_the_mail_breaker(user)
    probe_breaker(consumer="notifications")
    [probe] = take_due_probes([get_consumer("notifications")])
    assert take_due_probes([get_consumer("notifications")]) == []
    attempts_before = Delivery.objects.get(pk=probe).attempts

    outcomes = drain("notifications")
    assert [o.outcome for o in outcomes] == ["parked"] * UPLOADS  # the probe failed, parked

    breaker = Breaker.objects.get(consumer="notifications")
    assert breaker.opened_at is not None and breaker.probe_delivery_id is None
    assert take_due_probes([get_consumer("notifications")]) == []  # the next in an hour
    assert Delivery.objects.get(pk=probe).attempts == attempts_before + 1
    assert smtp.messages == []


def test_a_control_on_an_unknown_consumer_or_a_breaker_that_is_not_open_is_a_clear_error():
    make_breaker("webhook_calls", "7")
    make_breaker("audit", opened=False, failures=2)

    with pytest.raises(LookupError, match=r"unknown consumer 'mailer' \(known: .*notifications"):
        close_breaker(consumer="mailer")
    with pytest.raises(BreakerNotOpen, match=r"^breaker notifications is not open$"):
        probe_breaker(consumer="notifications")
    with pytest.raises(BreakerNotOpen, match=r"breaker audit is not open \(2 failures counted"):
        close_breaker(consumer="audit")
    with pytest.raises(
        BreakerNotOpen,
        match=r"breaker webhook_calls\[9\] is not open \(open: webhook_calls\[7\]\)",
    ):
        close_breaker(consumer="webhook_calls", key="9")
    with pytest.raises(BreakerNotOpen, match=r"breaker webhook_calls is not open \(open: .*\[7\]"):
        probe_breaker(consumer="webhook_calls")
    assert Breaker.objects.count() == 2

    assert close_breaker(consumer="webhook_calls", key="7").parked == 0
    assert not Breaker.objects.filter(consumer="webhook_calls").exists()


# ------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------
def test_consumers_breakers_lists_open_and_counting_breakers(user, capsys):
    call_command("consumers", "breakers")
    assert "no breaker has counted a failure" in capsys.readouterr().out

    upload_text(user)  # a mail waiting with no message out: parked under the open breaker
    make_breaker("notifications")
    make_breaker("webhook_calls", "7")
    make_breaker("audit", opened=False, failures=2)

    call_command("consumers", "breakers")

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["breaker", "state", "failures", "next", "probe", "parked"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"notifications", "webhook_calls[7]", "audit"}
    assert " open " in rows["notifications"] and rows["notifications"].split()[-1] == "1"
    assert rows["webhook_calls[7]"].split()[-1] == "0"
    assert "counting" in rows["audit"] and rows["audit"].split()[-1] == "-"


def test_close_and_probe_commands_say_what_happens_and_refuse_what_they_cannot_do(user, capsys):
    make_breaker("webhook_calls", "7")
    make_breaker("notifications")

    call_command("consumers", "probe-breaker", "notifications")
    assert capsys.readouterr().out.startswith("breaker notifications: nothing is parked")
    upload_text(user)
    call_command("consumers", "probe-breaker", "notifications")
    out = capsys.readouterr().out
    assert out.startswith("breaker notifications: the relay sends a probe on its next pass")
    assert "(one of 1 parked delivery)" in out
    assert Breaker.objects.get(consumer="notifications").probe_at.year < 2999

    call_command("consumers", "close-breaker", "webhook_calls", "--key", "7")
    assert capsys.readouterr().out.startswith("breaker webhook_calls[7] closed")
    assert not Breaker.objects.filter(consumer="webhook_calls").exists()

    with pytest.raises(CommandError, match=r"unknown consumer 'mailer' \(known: "):
        call_command("consumers", "close-breaker", "mailer")
    with pytest.raises(CommandError, match=r"^breaker webhook_calls\[7\] is not open$"):
        call_command("consumers", "probe-breaker", "webhook_calls", "--key", "7")
    with pytest.raises(CommandError, match="--json does not go with close-breaker"):
        call_command("consumers", "--json", "close-breaker", "notifications")
    with pytest.raises(CommandError, match="--procfile does not go with breakers"):
        call_command("consumers", "--procfile", "breakers")
    assert Breaker.objects.get(consumer="notifications").opened_at is not None


def test_the_commands_exit_codes(transactional_db, run_manage):
    make_breaker("notifications")

    listed = run_manage("consumers", "breakers")
    assert listed.returncode == 0 and "notifications" in listed.stdout
    refused = run_manage("consumers", "close-breaker", "webhook_calls", "--key", "3")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "CommandError: breaker webhook_calls[3] is not open"
    closed = run_manage("consumers", "close-breaker", "notifications")
    assert closed.returncode == 0, closed.stderr
    assert not Breaker.objects.exists()


# ------------------------------------------------------------------------------
# The admin overview
# ------------------------------------------------------------------------------
def breaker_row(html: str, consumer: str) -> str:
    row = html[html.index(f'<tr data-consumer="{consumer}">') :]
    return row[: row.index("</tr>")]


def test_the_overview_has_probe_now_and_close_next_to_each_open_breaker(admin_client, user):
    index = reverse("admin:index")
    upload_text(user)
    make_breaker("webhook_calls", "7")
    make_breaker("notifications")

    html = admin_client.get(index).content.decode()

    row = breaker_row(html, "webhook_calls")
    assert 'name="key" value="7"' in row
    assert 'value="probe-breaker"' in row and 'value="close-breaker"' in row
    assert "next probe in" in row
    assert 'value="close-breaker"' not in breaker_row(html, "indexing")
    assert (
        'value="close-breaker"'
        in admin_client.get(reverse("admin:events_overview")).content.decode()
    )

    # probe now: the probe is due at once
    response = admin_client.post(
        reverse(CONTROL_URL),
        {"consumer": "webhook_calls", "key": "7", "action": "probe-breaker"},
        HTTP_REFERER=f"http://testserver{index}",
    )
    assert response.status_code == 302 and response["Location"].endswith(index)
    assert Breaker.objects.get(consumer="webhook_calls").probe_at.year < 2999
    html = admin_client.get(index).content.decode()
    assert "Breaker webhook_calls[7]: nothing is parked to probe with" in html
    assert "next probe due" in breaker_row(html, "webhook_calls")

    # close asks first, and changes nothing until confirmed
    asked = admin_client.post(
        reverse(CONTROL_URL),
        {"consumer": "notifications", "action": "close-breaker"},
        HTTP_REFERER=f"http://testserver{index}",
    )
    page = asked.content.decode()
    assert asked.status_code == 200 and "Close breaker notifications?" in page
    assert "1 parked delivery" in page
    assert 'name="confirmed" value="yes"' in page and f'name="next" value="{index}"' in page
    assert Breaker.objects.get(consumer="notifications").opened_at is not None

    confirmed = admin_client.post(
        reverse(CONTROL_URL),
        {"consumer": "notifications", "action": "close-breaker", "confirmed": "yes", "next": index},
        follow=True,
    )
    assert confirmed.redirect_chain == [(index, 302)]
    assert not Breaker.objects.filter(consumer="notifications").exists()
    assert "Breaker notifications closed: the relay sends its 1 parked delivery" in (
        confirmed.content.decode()
    )

    # a breaker no longer open (a probe closed it meanwhile): a clear message, nothing done
    gone = admin_client.post(
        reverse(CONTROL_URL),
        {"consumer": "notifications", "action": "close-breaker", "confirmed": "yes"},
        follow=True,
    )
    assert "Breaker notifications is not open" in gone.content.decode()
    asked = admin_client.post(
        reverse(CONTROL_URL), {"consumer": "mailer", "action": "close-breaker"}, follow=True
    )
    assert "Unknown consumer &#x27;mailer&#x27;" in asked.content.decode()


def test_staff_without_the_change_permission_neither_see_nor_use_the_breaker_controls(
    delivery_viewer_client,
):
    client = delivery_viewer_client
    make_breaker("notifications")

    html = client.get(reverse("admin:index")).content.decode()
    row = breaker_row(html, "notifications")
    assert "breaker open" in row and "next probe in" in row  # the state, not the controls
    assert 'value="close-breaker"' not in html and 'value="probe-breaker"' not in html
    for action in ("close-breaker", "probe-breaker"):
        response = client.post(
            reverse(CONTROL_URL),
            {"consumer": "notifications", "action": action, "confirmed": "yes"},
        )
        assert response.status_code == 403
    breaker = Breaker.objects.get(consumer="notifications")
    assert breaker.opened_at is not None and breaker.probe_at.year == 2999


def test_the_breaker_controls_take_a_post_with_its_csrf_token_only(admin_user):
    make_breaker("notifications")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    url = reverse(CONTROL_URL)
    data = {"consumer": "notifications", "action": "close-breaker", "confirmed": "yes"}

    assert client.get(url, data).status_code == 405
    assert client.post(url, data).status_code == 403  # no CSRF token
    assert Breaker.objects.get(consumer="notifications").opened_at is not None

    client.get(reverse("admin:index"))
    token = client.cookies["csrftoken"].value
    assert client.post(url, {**data, "csrfmiddlewaretoken": token}).status_code == 302
    assert not Breaker.objects.exists()


# ------------------------------------------------------------------------------
# The audit log
# ------------------------------------------------------------------------------
def test_every_control_is_chained_into_the_audit_log_with_who_did_it(
    admin_client, admin_user, capsys
):
    make_breaker("notifications")
    control = reverse(CONTROL_URL)
    admin_client.post(control, {"consumer": "notifications", "action": "probe-breaker"})
    admin_client.post(
        control, {"consumer": "notifications", "action": "close-breaker", "confirmed": "yes"}
    )
    call_command("consumers", "pause", "notifications", "--reason", "smtp move")
    call_command("consumers", "resume", "notifications")
    # refused controls record nothing
    admin_client.post(control, {"consumer": "notifications", "action": "close-breaker"})
    with pytest.raises(CommandError):
        call_command("consumers", "probe-breaker", "notifications")

    assert [o.outcome for o in drain("audit")] == ["done"] * 4

    entries = list(AuditEntry.objects.filter(event_type=OPERATOR_CONTROL).order_by("sequence"))
    assert [e.detail["action"] for e in entries] == [
        "probe-breaker",
        "close-breaker",
        "pause",
        "resume",
    ]
    by_admin, closed, paused, resumed = entries
    assert (by_admin.actor, by_admin.detail["operator"]) == (admin_user.pk, "admin")
    assert by_admin.detail["consumer"] == "notifications" and by_admin.detail["key"] == ""
    assert closed.detail["outcome"].startswith("breaker notifications closed")
    assert paused.actor is None and paused.detail["operator"].endswith("(command line)")
    assert paused.detail["reason"] == "smtp move"
    assert resumed.detail["outcome"].startswith("notifications resumed")
    assert verify_chain().intact
