"""The breaker against a real outage: a real SMTP server on loopback, down, then up, with
a real worker and the relay running (issue 19, "done when").

Without the breaker each mail retries on its own backoff until its attempts run out, so
an outage longer than the retry schedule leaves the mail of that period dead. With it,
a few failures open the breaker, the rest park without counting attempts, one probe a
second (here) finds the server back, and everything parked goes out once.
"""

from __future__ import annotations

import pytest

from config.deployment import all_queues
from events.models import Breaker, Delivery, DeliveryAttempt
from tests.conftest import RelayLoop
from tests.factories import upload_text
from tests.processes import free_port, wait_for
from tests.test_notifications import SmtpServer, message_id

pytestmark = pytest.mark.django_db(transaction=True)

UPLOADS = 20
PROBE_SECONDS = 1


def notifications() -> list[Delivery]:
    return list(Delivery.objects.filter(consumer="notifications"))


def test_an_smtp_outage_ends_with_every_mail_sent_once_nothing_dead_and_few_attempts(
    live_worker, make_worker, user, settings
):
    port = free_port()  # nothing listens: the mail server is down
    settings.EVENTS_BREAKER_PROBE_SECONDS = PROBE_SECONDS  # the relay schedules probes
    live_worker.stop()  # its mail goes to files; this test's worker talks SMTP
    worker = make_worker(
        all_queues(),
        "worker-breaker-smtp.log",
        {
            "TEST_EMAIL_URL": f"smtp://127.0.0.1:{port}",
            "EVENTS_BREAKER_PROBE_SECONDS": str(PROBE_SECONDS),
        },
    )
    worker.start()
    server = SmtpServer(port)
    try:
        with RelayLoop():
            for i in range(UPLOADS):
                upload_text(user, f"file {i}", name=f"f{i}.txt")

            wait_for(
                lambda: Breaker.objects.filter(
                    consumer="notifications", opened_at__isnull=False
                ).exists(),
                what="the notifications breaker to open",
            )
            # The outage goes on: wait for three failed probes, the positive sign that
            # the breaker holds and probes, while the other consumers carry on.
            opened_with = DeliveryAttempt.objects.filter(delivery__consumer="notifications").count()
            wait_for(
                lambda: (
                    DeliveryAttempt.objects.filter(delivery__consumer="notifications").count()
                    >= opened_with + 3
                ),
                timeout=30,
                what="three failed probes",
            )
            wait_for(
                lambda: (
                    Delivery.objects.filter(
                        consumer__in=["indexing", "audit"], state="done"
                    ).count()
                    == 2 * UPLOADS
                ),
                what="indexing and audit to finish during the outage",
            )
            assert not any(d.state == "dead" for d in notifications())

            server.start()  # the mail server is back

            wait_for(
                lambda: all(d.state == "done" for d in notifications()),
                timeout=60,
                what="every mail to go out",
            )
    finally:
        server.stop()
        worker.stop()

    received = server.sink.messages
    assert len(received) == UPLOADS
    assert len({message_id(m) for m in received}) == UPLOADS  # each mail exactly once
    deliveries = notifications()
    assert [d.state for d in deliveries] == ["done"] * UPLOADS
    attempts = sum(d.attempts for d in deliveries)
    assert attempts / UPLOADS <= 2, f"{attempts} attempts for {UPLOADS} deliveries"
    assert not Breaker.objects.filter(consumer="notifications").exists()  # closed
    print(f"{attempts} attempts for {UPLOADS} mails ({attempts / UPLOADS:.2f} per delivery)")
