"""The webhooks consumers: signed POSTs to each owner's endpoints, one delivery per call.

Delivery tests run a real worker against a real HTTP receiver on 127.0.0.1
(``tests/webhook_receiver.py``); the test settings allow private addresses for that, and
the SSRF tests turn the setting off to see the refusal. Tests without a worker run the
same consumers in-process through ``events.testing``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from celery import current_app
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from events.models import Delivery, DeliveryAttempt, Event
from events.testing import drain
from tests.factories import upload_text
from tests.processes import wait_for
from tests.webhook_receiver import Reply, deliver_webhooks
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.services import delete_upload
from webhooks import transport
from webhooks.consumer import calls, fan_out
from webhooks.models import Call, Endpoint, EndpointDelivery
from webhooks.services import EndpointRefused, add_endpoint, parse_retry_after, send_ping


def call_delivery(event: Event, endpoint: Endpoint) -> Delivery | None:
    """The ``webhook_calls`` delivery of ``event`` to ``endpoint``, once fanned out."""
    return Delivery.objects.filter(
        consumer=calls.name,
        event__payload__message_id=str(event.id),
        event__payload__endpoint_id=endpoint.pk,
    ).first()


def settled_call(event: Event, endpoint: Endpoint) -> Delivery | None:
    delivery = call_delivery(event, endpoint)
    return delivery if delivery and delivery.state in ("done", "dead") else None


def settled_webhooks(event: Event) -> list[Delivery] | None:
    """Every call delivery of ``event``, once its fan-out and all its calls are finished."""
    fan = Delivery.objects.get(event=event, consumer=fan_out.name)
    if fan.state not in ("done", "dead"):
        return None
    deliveries = list(
        Delivery.objects.filter(consumer=calls.name, event__payload__message_id=str(event.id))
    )
    if any(d.state not in ("done", "dead") for d in deliveries):
        return None
    return deliveries or [fan]


def uploaded_event(upload) -> Event:
    return Event.objects.get(aggregate_id=str(upload.pk), type=FILE_UPLOADED)


def worker_finished(live_worker, task_name: str, task_id: str) -> bool:
    return any(
        f"{task_name}[{task_id}] succeeded" in line
        for line in live_worker.log_path.read_text(errors="replace").splitlines()
    )


# ------------------------------------------------------------------------------
# Through a real worker
# ------------------------------------------------------------------------------
@pytest.mark.worker
def test_every_request_is_signed_and_verifies_with_the_standardwebhooks_library(
    live_worker, receiver, user
):
    endpoint = add_endpoint(owner=user, url=receiver.url("/hook"))

    upload = upload_text(user, "signed and sealed", name="seal.txt")
    uploaded = uploaded_event(upload)
    upload_id = upload.pk
    [call] = wait_for(lambda: settled_webhooks(uploaded), what="webhook delivery")
    assert call.state == "done"
    delete_upload(upload, actor=user)
    deleted = Event.objects.get(aggregate_id=str(upload_id), type=FILE_DELETED)
    wait_for(lambda: settled_webhooks(deleted), what="webhook delivery of the deletion")

    first, second = receiver.at("/hook")
    verifier = Webhook(endpoint.secret)
    body = verifier.verify(first.body, first.headers)
    assert first.headers["webhook-id"] == str(uploaded.id)
    assert first.headers["content-type"] == "application/json"
    assert body["type"] == FILE_UPLOADED
    assert dt.datetime.fromisoformat(body["timestamp"]) == uploaded.occurred_at
    assert body["data"] == {
        "upload_id": upload_id,
        "owner_id": user.pk,
        "name": "seal.txt",
        "size": len("signed and sealed"),
        "content_type": "text/plain",
    }
    assert verifier.verify(second.body, second.headers) == {
        "type": FILE_DELETED,
        "timestamp": deleted.occurred_at.isoformat(),
        "data": {"upload_id": upload_id, "owner_id": user.pk, "name": "seal.txt"},
    }
    assert second.headers["webhook-id"] == str(deleted.id)
    # Signed with another secret, the library refuses it.
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 32).verify(first.body, first.headers)


@pytest.mark.worker
def test_500_twice_then_200_is_one_acknowledged_call_and_the_retries_are_visible(
    live_worker, running_relay, receiver, user
):
    url = receiver.script("/flaky", Reply(500), Reply(500), Reply(200))
    endpoint = add_endpoint(owner=user, url=url)

    event = uploaded_event(upload_text(user))

    delivery = wait_for(lambda: settled_call(event, endpoint), what="webhook call")
    assert (delivery.state, delivery.attempts) == ("done", 3)
    requests = receiver.at("/flaky")
    assert len(requests) == 3
    assert {request.headers["webhook-id"] for request in requests} == {str(event.id)}
    outcomes = list(Call.objects.filter(endpoint=endpoint).order_by("pk"))
    assert [(c.outcome, c.status_code) for c in outcomes] == [
        ("transient", 500),
        ("transient", 500),
        ("delivered", 200),
    ]
    row = EndpointDelivery.objects.get(event_id=event.id, endpoint=endpoint)
    assert (row.state, row.calls, row.last_status) == ("delivered", 3, 200)
    # A 5xx is the endpoint's fault, not the message's: its breaker counts every one.
    retries = DeliveryAttempt.objects.filter(delivery=delivery, outcome="retry")
    assert [a.error.split(":")[0] for a in retries] == ["DependencyUnavailable"] * 2


@pytest.mark.worker
def test_400_is_final_for_that_endpoint_while_another_retries_on_its_own(
    live_worker, running_relay, receiver, user
):
    refusing = add_endpoint(owner=user, url=receiver.script("/refuses", Reply(400)))
    flaky = add_endpoint(owner=user, url=receiver.script("/flaky", Reply(503), Reply(200)))

    event = uploaded_event(upload_text(user))

    deliveries = wait_for(lambda: settled_webhooks(event), what="webhook calls")
    # Each endpoint its own delivery: the 503 retried one, the 400 ended the other at once.
    attempts = {d.event.payload["endpoint_id"]: (d.state, d.attempts) for d in deliveries}
    assert attempts == {refusing.pk: ("done", 1), flaky.pk: ("done", 2)}
    assert len(receiver.at("/refuses")) == 1
    assert len(receiver.at("/flaky")) == 2
    rows = {row.endpoint_id: row for row in EndpointDelivery.objects.filter(event_id=event.id)}
    assert (rows[refusing.pk].state, rows[refusing.pk].last_status) == ("rejected", 400)
    assert rows[flaky.pk].state == "delivered"
    refusing.refresh_from_db()
    assert refusing.active  # a 400 is about this event, not the endpoint


@pytest.mark.worker
def test_410_gone_deactivates_the_endpoint(live_worker, receiver, user):
    gone = add_endpoint(owner=user, url=receiver.script("/gone", Reply(410)))
    witness = add_endpoint(owner=user, url=receiver.url("/witness"))

    first = uploaded_event(upload_text(user, name="one.txt"))
    wait_for(lambda: settled_webhooks(first), what="first webhook delivery")
    gone.refresh_from_db()
    assert not gone.active
    assert "410" in gone.deactivated_reason

    second = uploaded_event(upload_text(user, name="two.txt"))
    wait_for(lambda: settled_webhooks(second), what="second delivery")

    # The witness got both events; the gone one only the first.
    assert len(receiver.at("/witness")) == 2
    assert [r.headers["webhook-id"] for r in receiver.at("/gone")] == [str(first.id)]
    assert call_delivery(second, gone) is None
    assert witness.pk != gone.pk


@pytest.mark.worker
def test_redirect_is_not_followed(live_worker, receiver, user):
    target = receiver.url("/elsewhere")
    endpoint = add_endpoint(
        owner=user, url=receiver.script("/moved", Reply(302, {"Location": target}))
    )

    event = uploaded_event(upload_text(user))

    delivery = wait_for(lambda: settled_call(event, endpoint), what="webhook call")
    assert (delivery.state, delivery.attempts) == ("done", 1)
    assert len(receiver.at("/moved")) == 1
    assert receiver.at("/elsewhere") == []
    row = EndpointDelivery.objects.get(event_id=event.id, endpoint=endpoint)
    assert (row.state, row.last_status) == ("rejected", 302)
    assert "redirects are not followed" in row.last_error


@pytest.mark.worker
def test_slow_receiver_times_out_and_is_retried(
    live_worker, running_relay, receiver, user, settings
):
    # The test settings' read timeout is 1.5 s; the first answer comes after 4 s.
    assert settings.WEBHOOKS_READ_TIMEOUT_SECONDS < 4
    endpoint = add_endpoint(owner=user, url=receiver.script("/slow", Reply(200, delay=4)))

    event = uploaded_event(upload_text(user))

    delivery = wait_for(lambda: settled_call(event, endpoint), what="webhook call")
    assert (delivery.state, delivery.attempts) == ("done", 2)
    assert len(receiver.at("/slow")) == 2
    first, second = Call.objects.filter(endpoint=endpoint).order_by("pk")
    assert (first.outcome, first.status_code) == ("transient", None)
    assert "timed out" in first.error
    assert (second.outcome, second.status_code) == ("delivered", 200)


@pytest.mark.worker
def test_duplicate_messages_and_forced_replays_call_no_endpoint_twice(live_worker, receiver, user):
    endpoint = add_endpoint(owner=user, url=receiver.url("/once"))
    event = uploaded_event(upload_text(user))
    delivery = wait_for(lambda: settled_call(event, endpoint), what="webhook call")
    assert len(receiver.at("/once")) == 1

    # when the call's message arrives twice more
    duplicates = [str(uuid.uuid4()), str(uuid.uuid4())]
    for task_id in duplicates:
        current_app.send_task(
            calls.task_name,
            kwargs={
                "delivery_id": delivery.pk,
                "event_id": str(delivery.event_id),
                "event_type": delivery.event.type,
            },
            queue=calls.queue,
            task_id=task_id,
        )
    for task_id in duplicates:
        wait_for(
            lambda t=task_id: worker_finished(live_worker, calls.task_name, t),
            what=f"duplicate {task_id}",
        )

    # and when the upload event and the call are replayed by force, inline
    for consumer, event_id in ((fan_out.name, event.id), (calls.name, delivery.event_id)):
        call_command(
            "replay_events", "--consumer", consumer, "--event", str(event_id), "--force", "--inline"
        )

    # then the endpoint that answered 2xx was called once in all
    assert Delivery.objects.filter(consumer=calls.name).count() == 1
    assert len(receiver.at("/once")) == 1
    assert Call.objects.count() == 1


# ------------------------------------------------------------------------------
# SSRF
# ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "224.0.0.1",
        "240.0.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert transport.refused_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert transport.refused_address(address) is None


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "http:///x"])
def test_only_http_and_https_urls_with_a_host_are_accepted(user, url):
    with pytest.raises(EndpointRefused):
        add_endpoint(owner=user, url=url)


@pytest.mark.django_db
def test_private_address_is_refused_when_added_without_the_setting(user, receiver, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False

    with pytest.raises(EndpointRefused, match="public address"):
        add_endpoint(owner=user, url=receiver.url("/hook"))
    with pytest.raises(CommandError, match="public address"):
        call_command("add_webhook", user.username, "http://localhost:9/hook")

    assert not Endpoint.objects.exists()


@pytest.mark.django_db
def test_private_address_is_refused_at_send_time_before_connecting(user, receiver, settings):
    # given an endpoint whose host now resolves to loopback (added while it did not)
    endpoint = Endpoint.objects.create(
        owner=user, url=receiver.url("/rebound"), secret="whsec_" + "A" * 32
    )
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False
    upload_text(user)

    # when the event is delivered
    deliver_webhooks()

    # then the call was refused before a byte was sent, for good
    [call] = Call.objects.filter(endpoint=endpoint)
    assert (call.outcome, call.error) == ("rejected", transport.REFUSED)
    assert receiver.at("/rebound") == []
    assert EndpointDelivery.objects.get(endpoint=endpoint).state == "rejected"


# ------------------------------------------------------------------------------
# Retry-After
# ------------------------------------------------------------------------------
def test_retry_after_in_seconds_or_as_a_date_is_capped_at_the_longest_backoff(settings):
    settings.EVENTS_RETRY_BACKOFF_MAX_SECONDS = 600
    now = timezone.now()

    assert parse_retry_after("120") == 120
    assert parse_retry_after("86400") == 600
    in_a_minute = (now + dt.timedelta(seconds=60)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 55 <= parse_retry_after(in_a_minute, now=now) <= 60
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.django_db
def test_429_with_retry_after_is_not_called_again_before_that_time(user, receiver, settings):
    settings.EVENTS_RETRY_BACKOFF_MAX_SECONDS = 600
    url = receiver.script("/busy", Reply(429, {"Retry-After": "300"}))
    endpoint = add_endpoint(owner=user, url=url)
    upload_text(user)
    drain(fan_out.name)

    [first] = drain(calls.name)
    # A retry that comes sooner waits without calling (and without counting an attempt).
    [second] = drain(calls.name)

    assert (first.outcome, second.outcome) == ("retry", "retry")
    assert "HTTP 429" in first.reason
    assert 290 <= second.countdown <= 300
    assert len(receiver.at("/busy")) == 1
    row = EndpointDelivery.objects.get(endpoint=endpoint)
    assert (row.state, row.last_status) == ("failed", 429)
    assert Delivery.objects.get(consumer=calls.name).attempts == 1


# ------------------------------------------------------------------------------
# add_webhook
# ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_add_webhook_prints_the_secret_alone_on_its_last_line(user, capsys):
    call_command("add_webhook", user.username, "https://127.0.0.1/hook", "--type", FILE_DELETED)

    last = capsys.readouterr().out.splitlines()[-1]
    endpoint = Endpoint.objects.get()
    assert last == endpoint.secret
    assert last.startswith("whsec_")
    assert (endpoint.owner, endpoint.event_types) == (user, [FILE_DELETED])
    Webhook(last)  # the library accepts it as a signing secret


@pytest.mark.django_db
def test_add_webhook_refuses_an_unknown_user_or_type():
    with pytest.raises(CommandError, match="no user"):
        call_command("add_webhook", "nobody", "https://127.0.0.1/hook")
    with pytest.raises(CommandError):
        call_command("add_webhook", "nobody", "https://127.0.0.1/hook", "--type", "file.renamed")
    assert not Endpoint.objects.exists()


@pytest.mark.django_db
def test_endpoint_limited_to_deletions_gets_no_upload_event(user, receiver):
    add_endpoint(owner=user, url=receiver.url("/deletions"), event_types=[FILE_DELETED])
    upload_text(user)

    deliver_webhooks()

    assert not EndpointDelivery.objects.exists()
    assert not Delivery.objects.filter(consumer=calls.name).exists()
    assert receiver.at("/deletions") == []


# ------------------------------------------------------------------------------
# Pages
# ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_added_endpoint_shows_its_secret_once(client, user, receiver):
    client.force_login(user)

    response = client.post(reverse("webhooks:endpoints"), {"url": receiver.url("/page")})

    assert response.status_code == 302
    endpoint = Endpoint.objects.get(owner=user)
    first = client.get(reverse("webhooks:endpoints")).content.decode()
    assert endpoint.secret in first
    assert endpoint.url in first
    again = client.get(reverse("webhooks:endpoints")).content.decode()
    assert endpoint.secret not in again
    assert endpoint.url in again


@pytest.mark.django_db
def test_add_form_refuses_a_private_address_without_the_setting(client, user, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False
    client.force_login(user)

    response = client.post(reverse("webhooks:endpoints"), {"url": "http://127.0.0.1/hook"})

    assert response.status_code == 400
    assert "public address" in response.content.decode()
    assert not Endpoint.objects.exists()


@pytest.mark.django_db
def test_pages_show_and_touch_only_the_owners_endpoints(client, user, other_user, receiver):
    theirs = add_endpoint(owner=other_user, url=receiver.url("/theirs"))
    mine = add_endpoint(owner=user, url=receiver.url("/mine"))
    client.force_login(user)

    html = client.get(reverse("webhooks:endpoints")).content.decode()
    ping_theirs = client.post(reverse("webhooks:ping", args=[theirs.pk]))
    delete_theirs = client.post(reverse("webhooks:delete", args=[theirs.pk]))

    assert "/mine" in html and "/theirs" not in html
    assert (ping_theirs.status_code, delete_theirs.status_code) == (404, 404)
    assert receiver.at("/theirs") == []
    assert Endpoint.objects.filter(pk=theirs.pk).exists()
    assert client.post(reverse("webhooks:delete", args=[mine.pk])).status_code == 302
    assert not Endpoint.objects.filter(pk=mine.pk).exists()


@pytest.mark.worker
def test_test_ping_is_sent_by_a_worker_signed_and_listed_among_the_last_calls(
    live_worker, client, user, receiver
):
    endpoint = add_endpoint(owner=user, url=receiver.url("/ping"))
    client.force_login(user)

    queued = client.post(reverse("webhooks:ping", args=[endpoint.pk]), follow=True)
    [ping] = wait_for(lambda: receiver.at("/ping"), what="the ping")
    wait_for(lambda: Call.objects.filter(endpoint=endpoint).exists(), what="the ping's log")

    assert "Test ping queued" in queued.content.decode()
    assert Webhook(endpoint.secret).verify(ping.body, ping.headers)["type"] == "webhook.test"
    html = client.get(reverse("webhooks:endpoints")).content.decode()
    assert "webhook.test" in html  # in the last calls table


def test_pages_need_a_login(client, db):
    response = client.get(reverse("webhooks:endpoints"))

    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


@pytest.mark.django_db
def test_ping_to_a_dead_port_is_a_transient_failure(user):
    endpoint = add_endpoint(owner=user, url="http://127.0.0.1:9/nothing-listens")

    result = send_ping(endpoint=endpoint)

    assert result.outcome == "transient"
    assert json.dumps(result.error)  # a readable reason
    assert Call.objects.get(endpoint=endpoint).outcome == "transient"
