"""Webhooks fit for production (issue 20): isolation, deletion, rotation, types, auto-disable,
the call log and its retention, each against a real receiver on 127.0.0.1.

The isolation test speaks only of what receivers see and of the call log, so it also ran
against the design before this one (one delivery calling an owner's endpoints in turn),
where it failed: alice's second endpoint waited behind the trickling one.
"""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db.models.functions import Now
from django.urls import reverse
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from events.models import Delivery, Event
from events.testing import drain
from tests.factories import upload_text
from tests.processes import wait_for
from tests.webhook_receiver import Reply, deliver_webhooks
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.services import delete_upload
from webhooks.models import RESPONSE_KEPT_BYTES, Call, Endpoint, EndpointDelivery
from webhooks.services import add_endpoint, prune_calls, rotate_secret, send_ping


def mails(settings) -> list:
    return [
        message_from_bytes(path.read_bytes())
        for path in sorted(Path(settings.EMAIL_FILE_PATH).iterdir())
    ]


# ------------------------------------------------------------------------------
# Isolation
# ------------------------------------------------------------------------------
@pytest.mark.worker
def test_a_trickling_endpoint_delays_neither_its_owners_other_endpoint_nor_another_users(
    live_worker, running_relay, receiver, user, other_user, settings
):
    # given one of alice's endpoints trickling its answer for 60 s, added first so that a
    # design calling her endpoints in turn meets it first
    deadline = settings.WEBHOOKS_CALL_DEADLINE_SECONDS
    trickle = Reply(body=b"x" * 200, trickle=0.3)
    trickling = add_endpoint(owner=user, url=receiver.always("/trickle", trickle))
    add_endpoint(owner=user, url=receiver.url("/alice"))
    add_endpoint(owner=other_user, url=receiver.url("/bob"))

    # when each of them uploads three files
    for index in range(3):
        upload_text(user, name=f"a{index}.txt")
        upload_text(other_user, name=f"b{index}.txt")

    # then the other endpoints get every event within seconds: a third of one trickling
    # answer (the suite's one worker has two processes for every queue, so allow for
    # the trickling calls holding them up to the deadline each)
    patience = 20
    wait_for(lambda: len(receiver.at("/alice")) == 3, timeout=patience, what="alice's 3 events")
    wait_for(lambda: len(receiver.at("/bob")) == 3, timeout=patience, what="bob's 3 events")
    # and the trickling endpoint's calls are cut at the deadline (plus a second)
    wait_for(
        lambda: Call.objects.filter(endpoint=trickling).count() >= 3,
        timeout=patience,
        what="three calls to the trickling endpoint",
    )
    durations = list(Call.objects.filter(endpoint=trickling).values_list("duration_ms", flat=True))
    assert max(durations) <= (deadline + 1) * 1000, durations
    assert {c.outcome for c in Call.objects.filter(endpoint=trickling)} == {"transient"}

    # Deleting it stops its retries at once (and lets the worker go quiet for the next test).
    trickling.delete()
    wait_for(
        lambda: not Delivery.objects.filter(state__in=Delivery.OPEN_STATES).exists(),
        timeout=patience,
        what="every delivery to finish",
    )


# ------------------------------------------------------------------------------
# Deletion
# ------------------------------------------------------------------------------
@pytest.mark.worker
def test_deleting_an_endpoint_stops_its_calls_including_scheduled_retries(
    live_worker, running_relay, receiver, user
):
    endpoint = add_endpoint(owner=user, url=receiver.always("/failing", Reply(503)))
    upload_text(user)
    wait_for(lambda: len(receiver.at("/failing")) >= 2, what="a first retry")

    endpoint.delete()
    wait_for(
        lambda: not Delivery.objects.filter(state__in=Delivery.OPEN_STATES).exists(),
        what="the retries to end",
    )
    calls_when_done = len(receiver.at("/failing"))

    # The waiting retry ended without a call: nothing more came, and the ledger says done.
    assert calls_when_done <= 3  # at most the one already under way when it was deleted
    assert not Delivery.objects.filter(state="dead").exists()
    upload_text(user)  # nothing is fanned out to a deleted endpoint
    wait_for(
        lambda: Delivery.objects.filter(consumer="webhooks", state="done").count() == 2,
        what="the second upload's fan-out",
    )
    assert len(receiver.at("/failing")) == calls_when_done


# ------------------------------------------------------------------------------
# Rotation
# ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_after_rotation_both_secrets_verify_during_the_overlap_then_only_the_new(user, receiver):
    endpoint = add_endpoint(owner=user, url=receiver.url("/rotate"))
    old = endpoint.secret

    rotated = rotate_secret(endpoint_id=endpoint.pk)
    send_ping(endpoint=rotated)
    Endpoint.objects.filter(pk=endpoint.pk).update(
        previous_secret_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    rotated.refresh_from_db()
    send_ping(endpoint=rotated)

    during, after = receiver.at("/rotate")
    assert rotated.secret != old
    assert Webhook(old).verify(during.body, during.headers)["type"] == "webhook.test"
    assert Webhook(rotated.secret).verify(during.body, during.headers)["type"] == "webhook.test"
    assert during.headers["webhook-signature"].count("v1,") == 2
    assert Webhook(rotated.secret).verify(after.body, after.headers)["type"] == "webhook.test"
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)
    assert after.headers["webhook-signature"].count("v1,") == 1


@pytest.mark.django_db
def test_rotate_command_prints_the_new_secret_alone_on_the_last_line(user, capsys):
    endpoint = add_endpoint(owner=user, url="https://127.0.0.1/hook")

    call_command("rotate_webhook_secret", str(endpoint.pk))

    last = capsys.readouterr().out.splitlines()[-1]
    endpoint.refresh_from_db()
    assert last == endpoint.secret != endpoint.previous_secret
    assert endpoint.previous_secret_expires_at > timezone.now() + dt.timedelta(hours=23)


@pytest.mark.django_db
def test_rotate_command_refuses_an_unknown_endpoint():
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="no webhook endpoint 999"):
        call_command("rotate_webhook_secret", "999")


@pytest.mark.django_db
def test_rotate_button_shows_the_new_secret_once_on_a_page_never_stored(
    client, user, other_user, receiver
):
    endpoint = add_endpoint(owner=user, url=receiver.url("/r"))
    theirs = add_endpoint(owner=other_user, url=receiver.url("/t"))
    client.force_login(user)

    response = client.post(reverse("webhooks:rotate", args=[endpoint.pk]), follow=True)

    endpoint.refresh_from_db()
    assert endpoint.secret in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert endpoint.secret not in client.get(reverse("webhooks:endpoints")).content.decode()
    assert client.post(reverse("webhooks:rotate", args=[theirs.pk])).status_code == 404


# ------------------------------------------------------------------------------
# Event types
# ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_each_endpoint_gets_only_the_types_it_chose_and_types_change_on_the_page(
    client, user, receiver
):
    add_endpoint(owner=user, url=receiver.url("/deletions"), event_types=[FILE_DELETED])
    everything = add_endpoint(owner=user, url=receiver.url("/all"))
    upload = upload_text(user)
    delete_upload(upload, actor=user)
    deliver_webhooks()

    assert [r.headers["webhook-id"] for r in receiver.at("/deletions")] == [
        str(Event.objects.get(type=FILE_DELETED).id)
    ]
    assert len(receiver.at("/all")) == 2

    # the owner limits the second endpoint to uploads on the page
    client.force_login(user)
    client.post(
        reverse("webhooks:types", args=[everything.pk]),
        {f"endpoint-{everything.pk}-event_types": [FILE_UPLOADED]},
    )
    delete_upload(upload_text(user), actor=user)
    deliver_webhooks()

    everything.refresh_from_db()
    assert everything.event_types == [FILE_UPLOADED]
    assert len(receiver.at("/all")) == 3
    assert len(receiver.at("/deletions")) == 2


# ------------------------------------------------------------------------------
# Auto-disable
# ------------------------------------------------------------------------------
@pytest.mark.worker
def test_an_endpoint_failing_for_days_is_disabled_and_its_owner_gets_one_email(
    live_worker, receiver, user, settings
):
    # given an endpoint whose calls have all failed for six days (the limit is five)
    failing = add_endpoint(owner=user, url=receiver.always("/down", Reply(500)))
    Endpoint.objects.filter(pk=failing.pk).update(failing_since=Now() - dt.timedelta(days=6))

    # when one more call fails
    upload_text(user, name="one.txt")

    # then it is disabled, and the owner is mailed once through the pipeline
    disabled = wait_for(
        lambda: Event.objects.filter(type="webhook.endpoint_disabled").first(),
        what="the disable event",
    )
    wait_for(
        lambda: Delivery.objects.filter(event=disabled, state="done").exists(),
        what="the notification of the disable",
    )
    failing.refresh_from_db()
    assert not failing.active
    assert "failed for 5 days" in failing.deactivated_reason
    about_it = [m for m in mails(settings) if "disabled" in m["Subject"]]
    assert len(about_it) == 1
    assert about_it[0]["To"] == user.email
    assert f"Webhook endpoint {failing.pk} disabled" in about_it[0]["Subject"]
    text = about_it[0].get_payload(0).get_payload(decode=True).decode()
    assert "/down" not in text  # the URL's path may hold a secret
    called = len(receiver.at("/down"))

    # and a disabled endpoint is not called; enabled again on the page, it is
    upload_text(user, name="two.txt")
    wait_for(
        lambda: Delivery.objects.filter(consumer="webhooks", state="done").count() == 2,
        what="the second fan-out",
    )
    assert len(receiver.at("/down")) == called
    from django.test import Client

    page = Client()
    page.force_login(user)
    page.post(reverse("webhooks:enable", args=[failing.pk]))
    failing.refresh_from_db()
    assert (failing.active, failing.failing_since) == (True, None)
    receiver.defaults["/down"] = Reply(200)
    upload_text(user, name="three.txt")
    wait_for(lambda: len(receiver.at("/down")) > called, what="a call after enabling")
    Endpoint.objects.filter(pk=failing.pk).delete()  # no retries left for the next test


@pytest.mark.django_db
def test_a_success_ends_the_failure_streak(user, receiver):
    endpoint = add_endpoint(owner=user, url=receiver.script("/flaky", Reply(500), Reply(200)))
    upload_text(user)
    drain("webhooks")

    drain("webhook_calls")
    endpoint.refresh_from_db()
    assert endpoint.failing_since is not None
    drain("webhook_calls")
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None
    assert endpoint.active


# ------------------------------------------------------------------------------
# The call log
# ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_call_log_shows_status_duration_and_the_escaped_start_of_the_answer(
    client, user, receiver
):
    answer = b"<script>alert(1)</script>" + b"y" * 3000
    endpoint = add_endpoint(owner=user, url=receiver.always("/log", Reply(500, body=answer)))
    upload_text(user)
    deliver_webhooks()
    client.force_login(user)

    html = client.get(reverse("webhooks:endpoints")).content.decode()

    call = Call.objects.get(endpoint=endpoint)
    assert (call.status_code, call.outcome) == (500, "transient")
    assert len(call.response_body.encode()) == RESPONSE_KEPT_BYTES
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    assert f"{call.duration_ms} ms" in html
    assert "y" * 3000 not in html


@pytest.mark.django_db
def test_prune_calls_deletes_old_calls_and_finished_rows_in_chunks(user, receiver):
    endpoint = add_endpoint(owner=user, url=receiver.url("/p"))
    for _ in range(5):
        upload_text(user)
    deliver_webhooks()
    assert Call.objects.count() == 5
    Call.objects.filter(pk__in=list(Call.objects.values_list("pk", flat=True)[:3])).update(
        created_at=timezone.now() - dt.timedelta(days=40)
    )
    EndpointDelivery.objects.update(updated_at=timezone.now() - dt.timedelta(days=40))

    deleted = prune_calls(older_than=timezone.now() - dt.timedelta(days=30), chunk_size=2)

    assert deleted == 3 + 5
    assert Call.objects.filter(endpoint=endpoint).count() == 2
    assert not EndpointDelivery.objects.exists()
