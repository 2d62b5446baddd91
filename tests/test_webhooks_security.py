"""Webhooks: the call deadline and the security review's findings (issue 20).

Each test reproduces one finding against a real receiver on 127.0.0.1 and checks it is
gone: a trickling answer is cut at the deadline, the ping never runs in the request,
URLs and their secrets reach no log and no error text, the address is checked before
any connection, and every refusal reads the same.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from events.models import Delivery
from tests.factories import upload_text
from tests.processes import wait_for
from tests.webhook_receiver import Reply, deliver_webhooks
from webhooks import transport
from webhooks.models import Call, Endpoint
from webhooks.services import EndpointRefused, add_endpoint, send_ping

SLACK_STYLE_SECRET = "B00000000/hunter2xyzzyPathSecret"


# ------------------------------------------------------------------------------
# The deadline
# ------------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("head", [False, True], ids=["trickling-body", "trickling-headers"])
def test_a_trickling_answer_is_cut_at_the_call_deadline(user, receiver, settings, head):
    # given a receiver that would take 40 s to answer, each byte well within the read timeout
    settings.WEBHOOKS_CALL_DEADLINE_SECONDS = 1
    # Far above the pause between bytes, even on a loaded machine: only the deadline ends it.
    settings.WEBHOOKS_READ_TIMEOUT_SECONDS = 10
    trickle = Reply(body=b"x" * 200, trickle=0.2, trickle_head=head)
    endpoint = add_endpoint(owner=user, url=receiver.always("/drip", trickle))

    # when it is called
    result = send_ping(endpoint=endpoint)

    # then the call is a transient failure that stopped reading long before the answer ended
    assert result.outcome == "transient"
    assert "deadline" in result.error
    call = Call.objects.get(endpoint=endpoint)
    assert call.outcome == "transient"
    assert call.duration_ms < 20_000  # half the answer's length; the deadline is 1 s
    wait_for(lambda: receiver.was_cut_off("/drip"), what="the receiver to see the call dropped")


# ------------------------------------------------------------------------------
# The ping goes through a task
# ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_ping_is_queued_and_never_sent_inside_the_request(client, user, receiver, monkeypatch):
    from webhooks import tasks

    queued: list[int] = []
    monkeypatch.setattr(
        tasks.send_ping, "apply_async", lambda args, **options: queued.append(args[0])
    )
    endpoint = add_endpoint(owner=user, url=receiver.url("/ping"))
    client.force_login(user)

    response = client.post(reverse("webhooks:ping", args=[endpoint.pk]), follow=True)

    assert response.status_code == 200
    assert queued == [endpoint.pk]
    assert receiver.at("/ping") == []
    assert "queued" in response.content.decode()


# ------------------------------------------------------------------------------
# Secrets in URLs
# ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_secret_in_the_url_reaches_no_log_and_no_error_text(user, receiver, caplog):
    url = receiver.always(f"/services/{SLACK_STYLE_SECRET}", Reply(503))
    endpoint = add_endpoint(owner=user, url=url)
    upload_text(user)

    with caplog.at_level(logging.DEBUG):
        deliver_webhooks()

    assert receiver.at(f"/services/{SLACK_STYLE_SECRET}")  # it was called, and failed
    assert "hunter2" not in caplog.text
    errors = [d.last_error for d in Delivery.objects.all()]
    errors += [c.error for c in Call.objects.all()]
    assert any(f"endpoint {endpoint.pk}" in error for error in errors)
    assert not [error for error in errors if "hunter2" in error]


@pytest.mark.django_db
def test_a_url_with_credentials_is_refused_without_echoing_them(user, receiver):
    url = f"http://alice:hunter2@127.0.0.1:{receiver.port}/x"

    with pytest.raises(EndpointRefused) as refused:
        add_endpoint(owner=user, url=url)
    with pytest.raises(CommandError) as command_refused:
        call_command("add_webhook", user.username, url)

    assert "hunter2" not in str(refused.value) + str(command_refused.value)
    assert "user:password" in str(refused.value)
    assert not Endpoint.objects.exists()


# ------------------------------------------------------------------------------
# SSRF: check, then connect to the checked address; one answer for every refusal
# ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of a private network
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2001:0:4136:e378::1",  # Teredo
        "::7f00:1",  # IPv4-compatible
        "100.64.0.1",  # carrier-grade NAT
        "198.18.0.1",  # benchmarking
    ],
)
def test_transition_and_special_ranges_are_refused(address):
    assert transport.refused_address(address)


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A port on 127.0.0.1 that accepts connections (nothing answers them)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


@pytest.mark.django_db
def test_an_open_and_a_closed_private_port_give_the_same_refusal_and_no_connection(
    user, settings, listening
):
    open_port = listening.getsockname()[1]
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    # Stored as if the host had resolved to a public address when it was added.
    endpoints = [
        Endpoint.objects.create(owner=user, url=f"http://localhost:{port}/x", secret="whsec_AAAA")
        for port in (open_port, closed_port)
    ]
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False

    results = [send_ping(endpoint=endpoint) for endpoint in endpoints]

    assert [r.outcome for r in results] == ["rejected", "rejected"]
    assert results[0].error == results[1].error
    assert str(open_port) not in results[0].error
    with pytest.raises(BlockingIOError):
        listening.accept()  # nothing ever connected to the open port


@pytest.mark.django_db
def test_every_refusal_when_adding_reads_the_same(user, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False
    messages = set()
    for url in ("http://127.0.0.1/x", "http://[::1]/x", "http://no-such-host.invalid/x"):
        with pytest.raises(EndpointRefused) as refused:
            add_endpoint(owner=user, url=url)
        messages.add(str(refused.value))
    assert len(messages) == 1


# ------------------------------------------------------------------------------
# Pages and commands
# ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_page_showing_a_new_secret_is_never_stored(client, user, receiver):
    client.force_login(user)
    client.post(reverse("webhooks:endpoints"), {"url": receiver.url("/page")})

    response = client.get(reverse("webhooks:endpoints"))

    assert Endpoint.objects.get().secret in response.content.decode()
    assert "no-store" in response["Cache-Control"]


@pytest.mark.django_db
def test_an_over_long_url_is_a_clear_400_and_a_command_error(client, user):
    url = "https://example.com/" + "a" * 2100
    client.force_login(user)

    response = client.post(reverse("webhooks:endpoints"), {"url": url})
    with pytest.raises(CommandError, match="2000"):
        call_command("add_webhook", user.username, url)

    assert response.status_code == 400
    assert "2000" in response.content.decode()
    assert not Endpoint.objects.exists()


@pytest.mark.django_db
def test_calls_leave_no_descriptor_and_no_deadline_timer_behind(user, receiver):
    import os
    import threading

    endpoint = add_endpoint(owner=user, url=receiver.url("/count"))
    send_ping(endpoint=endpoint)  # the first call opens what stays open anyway (database)
    descriptors = len(os.listdir("/proc/self/fd"))

    for _ in range(10):
        assert send_ping(endpoint=endpoint).outcome == "delivered"

    # A leak is one descriptor per call (10); other threads of the session (a relay
    # loop's connection, a receiver's socket) may open or close one meanwhile.
    assert len(os.listdir("/proc/self/fd")) - descriptors < 3
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


@pytest.mark.django_db
def test_an_endpoint_stored_with_credentials_is_not_called_with_them(user, receiver):
    # Added before credentials were refused: its calls are refused, the secret never sent.
    endpoint = Endpoint.objects.create(
        owner=user, url=f"http://alice:hunter2@127.0.0.1:{receiver.port}/old", secret="whsec_AAAA"
    )

    result = send_ping(endpoint=endpoint)

    assert result.outcome == "rejected"
    assert "hunter2" not in result.error
    assert receiver.at("/old") == []
