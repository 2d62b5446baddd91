"""The breaker against a real outage: a real SMTP server on loopback, down, then up, with
a real worker and the relay running (issue 19, "done when").

Without the breaker each mail retries on its own backoff until its attempts run out, so
an outage longer than the retry schedule leaves the mail of that period dead. With it,
a few failures open the breaker, the rest park without counting attempts, one probe a
second (here) finds the server back, and everything parked goes out once. An operator
need not wait for the probe: "probe now" and "close" move the parked mail at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from config.deployment import all_queues
from events.control import close_breaker, probe_breaker
from events.models import Breaker, Delivery, DeliveryAttempt
from tests.conftest import RelayLoop
from tests.factories import upload_text
from tests.processes import free_port, wait_for
from tests.test_notifications import SmtpServer, message_id

pytestmark = pytest.mark.django_db(transaction=True)

UPLOADS = 20


def notifications() -> list[Delivery]:
    return list(Delivery.objects.filter(consumer="notifications"))


def mail_attempts() -> int:
    return DeliveryAttempt.objects.filter(delivery__consumer="notifications").count()


@contextmanager
def mail_server_down(
    live_worker, make_worker, settings, *, probe_seconds: float, log: str
) -> Iterator[SmtpServer]:
    """A worker for every queue that mails through SMTP to a port where nothing listens
    yet, and the relay running; yields the server, which the test starts when it likes."""
    port = free_port()  # nothing listens: the mail server is down
    settings.EVENTS_BREAKER_PROBE_SECONDS = probe_seconds  # the relay schedules probes
    live_worker.stop()  # its mail goes to files; this test's worker talks SMTP
    worker = make_worker(
        all_queues(),
        log,
        {
            "TEST_EMAIL_URL": f"smtp://127.0.0.1:{port}",
            "EVENTS_BREAKER_PROBE_SECONDS": str(probe_seconds),
        },
    )
    worker.start()
    server = SmtpServer(port)
    try:
        with RelayLoop():
            yield server
    finally:
        server.controller.stop(no_assert=True)  # whether or not the test started it
        worker.stop()


def upload_until_the_breaker_opens(user, uploads: int) -> None:
    """Upload while the mail server is down: the breaker opens, the other consumers finish."""
    for i in range(uploads):
        upload_text(user, f"file {i}", name=f"f{i}.txt")
    wait_for(
        lambda: Breaker.objects.filter(consumer="notifications", opened_at__isnull=False).exists(),
        what="the notifications breaker to open",
    )
    wait_for(
        lambda: (
            Delivery.objects.filter(consumer__in=["indexing", "audit"], state="done").count()
            == 2 * uploads
        ),
        what="indexing and audit to finish during the outage",
    )


def assert_each_mail_sent_once(server: SmtpServer, uploads: int) -> float:
    """Every mail arrived exactly once, every delivery is done; attempts per delivery."""
    received = server.sink.messages
    assert len(received) == uploads
    assert len({message_id(m) for m in received}) == uploads  # each mail exactly once
    deliveries = notifications()
    assert [d.state for d in deliveries] == ["done"] * uploads
    attempts = sum(d.attempts for d in deliveries)
    print(f"{attempts} attempts for {uploads} mails ({attempts / uploads:.2f} per delivery)")
    return attempts / uploads


def test_an_smtp_outage_ends_with_every_mail_sent_once_nothing_dead_and_few_attempts(
    live_worker, make_worker, user, settings
):
    with mail_server_down(
        live_worker, make_worker, settings, probe_seconds=1, log="worker-breaker-smtp.log"
    ) as server:
        upload_until_the_breaker_opens(user, UPLOADS)
        # The outage goes on: wait for three failed probes, the positive sign that the
        # breaker holds and probes, while the other consumers carry on.
        opened_with = mail_attempts()
        wait_for(lambda: mail_attempts() >= opened_with + 3, timeout=30, what="three failed probes")
        assert not any(d.state == "dead" for d in notifications())

        server.start()  # the mail server is back

        wait_for(
            lambda: all(d.state == "done" for d in notifications()),
            timeout=60,
            what="every mail to go out",
        )

    assert assert_each_mail_sent_once(server, UPLOADS) <= 2
    assert not Breaker.objects.filter(consumer="notifications").exists()  # closed


def test_one_mail_through_an_outage_longer_than_its_retries_is_sent_once_not_dead(
    live_worker, make_worker, user, settings
):
    # A quiet hour: one upload, nothing else failing beside it. Its own failures open
    # the breaker (the mail server is unreachable, not the mail at fault).
    with mail_server_down(
        live_worker, make_worker, settings, probe_seconds=1, log="worker-breaker-lone.log"
    ) as server:
        upload_until_the_breaker_opens(user, 1)
        budget = 8  # notifications' max_attempts
        wait_for(lambda: mail_attempts() > budget + 2, timeout=60, what="probes past its budget")
        assert [d.state for d in notifications()] == ["retrying"]

        server.start()

        wait_for(lambda: notifications()[0].state == "done", timeout=60, what="the mail")

    assert_each_mail_sent_once(server, 1)


def test_probe_now_and_close_move_the_parked_mail_at_once_each_mail_once(
    live_worker, make_worker, user, settings
):
    uploads = 12
    # No probe of the relay's own within the test: only the operator moves the mail.
    with mail_server_down(
        live_worker, make_worker, settings, probe_seconds=3600, log="worker-breaker-controls.log"
    ) as server:
        upload_until_the_breaker_opens(user, uploads)
        # "Probe now" while the server is still down: one attempt, well before the hour,
        # which fails and leaves the breaker open.
        before = mail_attempts()
        probe_breaker(consumer="notifications")
        wait_for(lambda: mail_attempts() == before + 1, timeout=30, what="the probe")
        wait_for(
            lambda: Breaker.objects.get(consumer="notifications").probe_delivery_id is None,
            what="the failed probe to be recorded",
        )
        assert Breaker.objects.get(consumer="notifications").opened_at is not None
        assert not any(d.state in ("dead", "done") for d in notifications())

        server.start()  # the mail server is back; the breaker's own probe is an hour away
        assert close_breaker(consumer="notifications").parked == uploads

        wait_for(
            lambda: all(d.state == "done" for d in notifications()),
            timeout=60,
            what="every mail to go out",
        )

    assert assert_each_mail_sent_once(server, uploads) <= 2
