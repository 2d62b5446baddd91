"""Pause and resume a consumer (issue 19 part 1), in-process: the claim, the relay,
the command, ``event_status``, ``/metrics`` and the admin overview's controls.

The same with real workers, a restart and two pools: ``tests/test_pause_workers.py``.
"""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from events.control import pause_consumer, resume_consumer
from events.delivery import run_delivery
from events.models import ConsumerState, Delivery, DeliveryAttempt
from events.relay import relay_outbox
from tests.factories import upload_text

pytestmark = pytest.mark.django_db


def notification_deliveries() -> list[Delivery]:
    return list(Delivery.objects.filter(consumer="notifications").order_by("pk"))


def run(delivery: Delivery) -> str:
    return run_delivery(delivery_id=delivery.pk, consumer_name=delivery.consumer).outcome


def test_a_paused_consumers_delivery_is_parked_with_no_attempt_counted(user, mailoutbox):
    upload_text(user)
    pause_consumer(name="notifications", reason="smtp move")
    [delivery] = notification_deliveries()
    Delivery.objects.filter(pk=delivery.pk).update(enqueued_at="2026-01-01T00:00:00Z")

    assert run(delivery) == "parked"

    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.enqueued_at) == ("pending", 0, None)
    assert delivery.retry_at is not None  # due the moment the consumer may run again
    assert not DeliveryAttempt.objects.exists()
    assert mailoutbox == []
    # the other consumers are not held
    indexing = Delivery.objects.get(consumer="indexing")
    assert run(indexing) == "done"


def test_the_pause_is_read_in_the_claim_statement_itself(user):
    upload_text(user)
    [delivery] = notification_deliveries()
    with CaptureQueriesContext(connection) as unpaused:
        run(delivery)
    upload_text(user)
    pause_consumer(name="notifications")
    paused = notification_deliveries()[-1]

    with CaptureQueriesContext(connection) as queries:
        run(paused)

    # (on PostgreSQL the claim is wrapped in WITH ... to read the event in the same trip)
    claim = queries.captured_queries[0]["sql"]
    assert claim.lstrip().startswith(("UPDATE", "WITH claimed AS (\n    UPDATE"))
    assert "events_consumerstate" in claim and "paused" in claim
    # a claim that went through costs what it cost before: no read of the pause first
    first = unpaused.captured_queries[0]["sql"]
    assert first.lstrip().startswith(("UPDATE", "WITH claimed AS (\n    UPDATE"))
    assert "events_consumerstate" in first


def test_a_resumed_consumer_runs_its_parked_delivery_once(user, mailoutbox):
    upload_text(user)
    pause_consumer(name="notifications")
    [delivery] = notification_deliveries()
    assert run(delivery) == "parked"

    resume_consumer(name="notifications")

    assert run(delivery) == "done"
    assert run(delivery) == "skipped"
    assert len(mailoutbox) == 1
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("done", 1)


def test_an_expired_lease_of_a_paused_consumer_is_parked_not_dead_lettered(user):
    upload_text(user)
    pause_consumer(name="notifications")
    [delivery] = notification_deliveries()
    # An attempt that died with its last attempt used: unpaused, the claim would bury it.
    Delivery.objects.filter(pk=delivery.pk).update(
        state="running", attempts=8, lease_expires_at="2026-01-01T00:00:00Z"
    )

    assert run(delivery) == "parked"

    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.enqueued_at) == ("running", 8, None)


def test_the_relay_leaves_a_paused_consumer_alone_and_sends_its_parked_deliveries_on_resume(
    user, sent_tasks
):
    upload_text(user)
    pause_consumer(name="notifications")
    # As after the on-commit publish failed: every delivery is due with no message out.
    Delivery.objects.update(enqueued_at=None, retry_at="2026-01-01T00:00:00Z")

    relay_outbox()

    sent = {call.kwargs["queue"] for call in sent_tasks.call_args_list}
    assert "notifications" not in sent
    assert {"indexing", "audit"} <= sent
    assert relay_outbox().published == 0  # not republished in a loop either

    sent_tasks.reset_mock()
    resume_consumer(name="notifications")
    assert relay_outbox().published == 1
    assert [call.kwargs["queue"] for call in sent_tasks.call_args_list] == ["notifications"]


def test_a_paused_consumer_is_not_retired_by_the_relay(user, settings, sent_tasks):
    pause_consumer(name="notifications")
    settings.EVENTS_RETIRED_CONSUMER_GRACE_SECONDS = 0
    upload_text(user)

    relay_outbox()

    assert Delivery.objects.filter(state="dead").count() == 0


def test_pause_and_resume_commands_with_reason_and_clear_errors(capsys):
    call_command("consumers", "pause", "notifications", "--reason", "smtp move")
    assert "notifications paused since" in capsys.readouterr().out
    state = ConsumerState.objects.get(name="notifications")
    assert (state.paused, state.paused_reason) == (True, "smtp move")
    first_paused_at = state.paused_at

    # pausing again keeps when it began
    call_command("consumers", "pause", "notifications", "--reason", "still moving")
    state.refresh_from_db()
    assert (state.paused_at, state.paused_reason) == (first_paused_at, "still moving")

    call_command("consumers", "resume", "notifications")
    assert "notifications resumed" in capsys.readouterr().out
    state.refresh_from_db()
    assert (state.paused, state.paused_reason, state.paused_at) == (False, "", None)
    call_command("consumers", "resume", "notifications")
    assert "notifications was not paused" in capsys.readouterr().out

    with pytest.raises(CommandError, match=r"unknown consumer 'mailer' \(known: .*notifications"):
        call_command("consumers", "pause", "mailer")
    with pytest.raises(CommandError, match="unknown consumer 'mailer'"):
        call_command("consumers", "resume", "mailer")
    with pytest.raises(CommandError, match="--json does not go with pause"):
        call_command("consumers", "--json", "pause", "notifications")
    assert not ConsumerState.objects.filter(name="mailer").exists()


def test_event_status_shows_the_pause_in_json_text_and_check(user, capsys):
    upload_text(user)
    pause_consumer(name="notifications", reason="smtp move")
    ConsumerState.objects.filter(name="notifications").update(paused_at="2026-01-01T00:00:00Z")

    call_command("event_status", "--json")
    consumers = json.loads(capsys.readouterr().out)["consumers"]
    assert consumers["notifications"]["paused"] is True
    assert consumers["notifications"]["paused_reason"] == "smtp move"
    assert consumers["notifications"]["paused_seconds"] > 3600
    assert (consumers["indexing"]["paused"], consumers["indexing"]["paused_reason"]) == (False, "")

    call_command("event_status")
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[-1] == "held"
    assert next(line for line in table if line.startswith("notifications")).endswith(
        "paused (smtp move)"
    )

    with pytest.raises(SystemExit) as exited:
        call_command(
            "event_status", "--check", "--max-waiting-seconds", "1e9", "--max-paused-seconds", "60"
        )
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert out.startswith("notifications: paused ") and out.rstrip().endswith("s (smtp move)")
    # without the limit a pause is no breach
    call_command("event_status", "--check", "--max-waiting-seconds", "1e9")
    assert capsys.readouterr().out.startswith("ok: ")
    with pytest.raises(CommandError, match="go with --check"):
        call_command("event_status", "--max-paused-seconds", "5")


def test_metrics_show_the_paused_consumer(client, settings):
    settings.METRICS_TOKEN = "t0ken"
    pause_consumer(name="notifications")

    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken")

    [family] = [
        f
        for f in text_string_to_metric_families(response.content.decode())
        if f.name == "events_consumer_paused"
    ]
    values = {sample.labels["consumer"]: sample.value for sample in family.samples}
    assert values["notifications"] == 1.0
    assert values["indexing"] == 0.0


def test_admin_overview_shows_the_pause_and_its_controls_pause_and_resume(admin_client):
    index = reverse("admin:index")
    html = admin_client.get(index).content.decode()
    assert 'name="action" value="pause"' in html

    response = admin_client.post(
        reverse("admin:events_consumer_control"),
        {"consumer": "notifications", "action": "pause", "reason": "smtp move"},
        HTTP_REFERER=f"http://testserver{index}",
    )
    assert response.status_code == 302 and response["Location"].endswith(index)
    assert ConsumerState.objects.get(name="notifications").paused

    html = admin_client.get(index).content.decode()
    row = html[html.index('<tr data-consumer="notifications">') :]
    row = row[: row.index("</tr>")]
    assert 'class="paused">paused' in row and "smtp move" in row
    assert 'value="resume"' in row
    assert "paused" in admin_client.get(reverse("admin:events_overview")).content.decode()

    admin_client.post(
        reverse("admin:events_consumer_control"), {"consumer": "notifications", "action": "resume"}
    )
    assert not ConsumerState.objects.get(name="notifications").paused
    response = admin_client.post(
        reverse("admin:events_consumer_control"),
        {"consumer": "mailer", "action": "pause"},
        follow=True,
    )
    assert "Unknown consumer &#x27;mailer&#x27;" in response.content.decode()


def test_only_staff_with_the_change_permission_may_pause(delivery_viewer_client):
    client = delivery_viewer_client

    html = client.get(reverse("admin:index")).content.decode()
    assert 'id="index-events-overview"' in html
    assert 'value="pause"' not in html
    response = client.post(
        reverse("admin:events_consumer_control"), {"consumer": "notifications", "action": "pause"}
    )
    assert response.status_code == 403
    assert not ConsumerState.objects.filter(name="notifications", paused=True).exists()
