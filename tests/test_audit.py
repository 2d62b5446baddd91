"""The audit log: an append-only hash chain, once per event, tamper-evident, read-only in admin."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import threading
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEntry
from audit.services import GENESIS_HASH, append_entry, entry_hash, payload_digest, verify_chain
from events.delivery import run_delivery
from events.models import Delivery, Event
from events.schemas import Envelope
from tests.factories import upload_text
from tests.processes import FakeTerminal

pytestmark = pytest.mark.django_db


def envelope(
    *, event_type: str = "file.uploaded", upload_id: int = 7, actor: int | None = 1
) -> Envelope:
    return Envelope(
        id=uuid.uuid4(),
        type=event_type,
        version=1,
        occurred_at=timezone.now() - dt.timedelta(seconds=3),
        aggregate_id=str(upload_id),
        actor=actor,
        payload={"upload_id": upload_id, "owner_id": 1, "name": f"file-{upload_id}.txt"},
    )


def append(env: Envelope) -> AuditEntry:
    # The consumer appends inside the delivery's transaction.
    with transaction.atomic():
        return append_entry(env)


def chain(count: int) -> list[AuditEntry]:
    return [append(envelope(upload_id=i)) for i in range(count)]


# ------------------------------------------------------------------------------
# Appending
# ------------------------------------------------------------------------------
def test_appends_form_a_chain_from_the_genesis_hash():
    first_envelope = envelope(actor=None)
    entries = [append(first_envelope), append(envelope()), append(envelope())]

    first = AuditEntry.objects.get(pk=entries[0].pk)
    assert first.prev_hash == GENESIS_HASH == "0" * 64
    assert (first.event_id, first.event_type, first.actor) == (
        first_envelope.id,
        "file.uploaded",
        None,
    )
    assert first.upload_id == "7"
    assert first.payload_digest == payload_digest(dict(first_envelope.payload))
    stored = list(AuditEntry.objects.order_by("pk"))
    for previous, entry in itertools.pairwise(stored):
        assert entry.prev_hash == previous.hash
    assert all(entry.hash == entry_hash(entry) for entry in stored)
    assert verify_chain().checked == 3


def test_replaying_an_event_adds_no_second_entry():
    env = envelope()
    first = append(env)
    append(envelope())

    again = append(env)

    assert again.pk == first.pk
    assert AuditEntry.objects.filter(event_id=env.id).count() == 1
    assert AuditEntry.objects.count() == 2
    assert verify_chain().broken is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_from_several_threads_never_fork_the_chain():
    threads_count, per_thread = 4, 8
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count)

    def worker() -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                append(envelope())
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    total = threads_count * per_thread
    report = verify_chain()
    assert (report.broken, report.checked) == (None, total)
    prev_hashes = list(AuditEntry.objects.values_list("prev_hash", flat=True))
    assert len(set(prev_hashes)) == total
    assert prev_hashes.count(GENESIS_HASH) == 1


# ------------------------------------------------------------------------------
# verify_audit
# ------------------------------------------------------------------------------
def test_verify_audit_prints_how_many_entries_it_checked():
    chain(3)
    out = io.StringIO()

    call_command("verify_audit", stdout=out)

    head = AuditEntry.objects.get(sequence=3).hash
    assert out.getvalue().strip() == f"audit chain intact: 3 entries checked, head {head}"


def test_verify_audit_draws_a_progress_bar_on_a_terminal_only():
    chain(3)
    terminal = FakeTerminal()

    call_command("verify_audit", stdout=terminal)
    piped = io.StringIO()
    call_command("verify_audit", stdout=piped)

    shown = terminal.getvalue()
    assert "\r" in shown and "3/3" in shown
    assert shown.index("3/3") < shown.index("audit chain intact: 3 entries checked")
    assert "\r" not in piped.getvalue()


@pytest.mark.django_db(transaction=True)
def test_verify_audit_exits_0_when_intact_and_1_naming_a_row_tampered_with_in_sql(run_manage):
    entries = chain(3)
    intact = run_manage("verify_audit")
    assert intact.returncode == 0
    assert intact.stdout.startswith("audit chain intact: 3 entries checked, head ")

    middle = entries[1]
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditentry SET actor = %s WHERE id = %s", [999, middle.pk])
    tampered = run_manage("verify_audit")

    assert tampered.returncode == 1
    assert f"audit chain broken at entry {middle.pk} (event {middle.event_id}" in tampered.stderr
    assert "content does not match its hash" in tampered.stderr
    assert "1 entries before it are intact" in tampered.stderr


@pytest.mark.django_db(transaction=True)
def test_verify_audit_reports_a_middle_row_deleted_in_sql(run_manage):
    _first, middle, last = chain(3)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditentry WHERE id = %s", [middle.pk])

    result = run_manage("verify_audit")

    assert result.returncode == 1
    assert f"audit chain broken at entry {last.pk}" in result.stderr
    assert "sequence is 3, expected 2 (entries before it are missing)" in result.stderr


def test_a_rewritten_hash_is_caught_by_the_next_entry():
    # Recomputing a tampered entry's own hash does not help: the next one still points
    # at the old hash.
    _first, middle, last = chain(3)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditentry SET actor = 999 WHERE id = %s", [middle.pk])
    middle.refresh_from_db()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditentry SET hash = %s WHERE id = %s", [entry_hash(middle), middle.pk]
        )

    report = verify_chain()

    assert report.broken is not None and report.broken.pk == last.pk
    assert report.reason == "prev_hash does not match the previous entry"
    assert report.checked == 2


# ------------------------------------------------------------------------------
# Truncation: sequence numbers, the ledger cross-check, anchors kept elsewhere
# ------------------------------------------------------------------------------
def audited_uploads(user: User, count: int) -> list[AuditEntry]:
    """``count`` uploads whose audit deliveries ran in this process, as a worker's would."""
    for n in range(count):
        upload = upload_text(user, name=f"{n}.txt")
        event = Event.objects.get(type="file.uploaded", aggregate_id=str(upload.pk))
        delivery = Delivery.objects.get(event=event, consumer="audit")
        outcome = run_delivery(delivery_id=delivery.pk, consumer_name="audit")
        assert outcome.outcome == "done"
    return list(AuditEntry.objects.order_by("sequence"))


def delete_entries(*entries: AuditEntry) -> None:
    with connection.cursor() as cursor:
        for entry in entries:
            cursor.execute("DELETE FROM audit_auditentry WHERE id = %s", [entry.pk])


def verify(*args: str) -> tuple[int, str]:
    """``verify_audit`` in this process: its exit status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_audit", *args, stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, str(exc)
    return 0, out.getvalue()


def test_entries_are_numbered_and_the_number_is_hashed():
    entries = chain(3)
    assert [entry.sequence for entry in entries] == [1, 2, 3]

    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditentry SET sequence = 7 WHERE id = %s", [entries[2].pk])

    report = verify_chain()
    assert report.broken is not None and report.broken.pk == entries[2].pk


def test_deleting_the_newest_entries_is_detected_through_the_ledger(user):
    entries = audited_uploads(user, 3)
    assert verify()[0] == 0

    delete_entries(entries[2])

    status, said = verify()
    assert status == 1
    assert f"event {entries[2].event_id}" in said and "has no audit entry" in said


def test_deleting_every_entry_is_detected_through_the_ledger(user):
    entries = audited_uploads(user, 2)

    delete_entries(*entries)

    status, said = verify()
    assert status == 1
    assert "has no audit entry" in said


def test_an_anchored_head_and_count_pass_while_the_log_grows():
    entries = chain(3)
    head = entries[-1].hash
    chain(2)

    assert verify("--expect-head", head, "--expect-count", "3")[0] == 0
    assert verify("--expect-count", "5")[0] == 0


def test_an_anchored_head_that_is_gone_is_reported(user):
    entries = chain(3)
    head = entries[-1].hash

    delete_entries(entries[-1])

    status, said = verify("--expect-head", head)
    assert status == 1
    assert f"expected head {head} is not in the chain" in said


def test_fewer_entries_than_anchored_is_reported():
    entries = chain(3)

    delete_entries(*entries)

    status, said = verify("--expect-count", "3")
    assert status == 1
    assert "0 entries, expected at least 3" in said


def test_a_head_anchored_at_a_count_must_be_that_entry():
    entries = chain(3)

    status, said = verify("--expect-head", entries[1].hash, "--expect-count", "3")

    assert status == 1
    assert "is entry 2, expected entry 3" in said


def test_verify_audit_refuses_a_malformed_head():
    status, said = verify("--expect-head", "not-a-hash")

    assert status != 0
    assert "64 hexadecimal" in said


# ------------------------------------------------------------------------------
# Admin: read-only for everyone, superusers included
# ------------------------------------------------------------------------------
@pytest.fixture
def superuser_client() -> Client:
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    return client


def test_superuser_cannot_add_an_audit_entry(superuser_client):
    response = superuser_client.get(reverse("admin:audit_auditentry_add"))
    assert response.status_code == 403

    changelist = superuser_client.get(reverse("admin:audit_auditentry_changelist"))
    assert changelist.status_code == 200
    assert reverse("admin:audit_auditentry_add") not in changelist.content.decode()


def test_superuser_sees_an_audit_entry_read_only(superuser_client):
    entry = append(envelope())
    url = reverse("admin:audit_auditentry_change", args=[entry.pk])

    page = superuser_client.get(url)
    posted = superuser_client.post(url, {"actor": "999", "upload_id": "x"})

    assert page.status_code == 200
    html = page.content.decode()
    assert entry.hash in html
    assert 'name="_save"' not in html
    assert 'name="actor"' not in html
    assert posted.status_code == 403
    entry_after = AuditEntry.objects.get(pk=entry.pk)
    assert (entry_after.actor, entry_after.upload_id) == (entry.actor, entry.upload_id)


def test_superuser_cannot_delete_an_audit_entry(superuser_client):
    entry = append(envelope())
    delete_url = reverse("admin:audit_auditentry_delete", args=[entry.pk])

    assert superuser_client.get(delete_url).status_code == 403
    assert superuser_client.post(delete_url, {"post": "yes"}).status_code == 403
    bulk = superuser_client.post(
        reverse("admin:audit_auditentry_changelist"),
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )

    assert bulk.status_code in (200, 302)
    assert AuditEntry.objects.filter(pk=entry.pk).exists()
