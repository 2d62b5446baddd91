"""PDF extraction under real limits: a child process with RLIMIT_CPU and RLIMIT_AS, and
pypdf's own per-stream limits lowered. Over a limit, the file is indexed by name, once.

The crafted PDF (tests/pdf_bomb.py) is made here, never committed: one page, ten form
XObjects of 50 MB of whitespace each, about 500 KB compressed. Before these limits it
took the extracting process to about 585 MB.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from events.models import Delivery
from indexing import services
from indexing.extraction import CHILD_MEMORY_BYTES, extract_in_child
from indexing.models import IndexEntry
from tests.pdf_bomb import whitespace_form_pdf
from tests.processes import wait_for
from uploads.services import create_upload

# Every PDF extraction runs in a limited child process.
pytestmark = pytest.mark.usefixtures("pdf_extraction")

MIB = 2**20


def peak_reported(caplog: pytest.LogCaptureFixture) -> int:
    """The child's peak memory (bytes) from its log line."""
    for record in caplog.records:
        found = re.search(r"in a child: ([\d.]+) s CPU, peak (\d+) MiB", record.getMessage())
        if found:
            return int(found.group(2)) * MIB
    raise AssertionError("the child reported no peak memory")


@pytest.mark.django_db
def test_the_crafted_pdf_is_indexed_by_name_within_the_memory_cap(caplog):
    pdf = whitespace_form_pdf(forms=10, megabytes=50)
    assert len(pdf) < 600_000
    name = default_storage.save("bomb.pdf", ContentFile(pdf))

    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="indexing.extraction"):
        extraction = services.extract_upload_text(
            upload_id=1, storage_name=name, name="bomb.pdf", content_type="application/pdf"
        )
    elapsed = time.perf_counter() - started

    peak = peak_reported(caplog)
    print(f"\ncrafted PDF ({len(pdf)} bytes): {elapsed:.2f} s, child peak {peak // MIB} MiB")
    assert extraction.text == ""
    assert extraction.note.endswith("indexed by name")
    assert peak < CHILD_MEMORY_BYTES


def test_a_pdf_past_the_memory_limit_is_indexed_by_name():
    # Forty 12 MB forms: each under pypdf's lowered 16 MB stream limit, together far
    # over the child's address-space cap.
    pdf = whitespace_form_pdf(forms=40, megabytes=12)

    extraction = extract_in_child(data=pdf, kind="pdf")

    assert extraction.text == ""
    assert "over the memory limit of 512 MiB" in extraction.note
    assert extraction.note.endswith("indexed by name")


def test_a_pdf_past_the_cpu_limit_is_indexed_by_name():
    # The same forty forms take a couple of CPU seconds to parse with memory to spare.
    pdf = whitespace_form_pdf(forms=40, megabytes=12)

    extraction = extract_in_child(data=pdf, kind="pdf", cpu_seconds=1, memory_bytes=4 * 2**30)

    assert extraction.text == ""
    assert "over the CPU limit of 1 s" in extraction.note


def test_an_ordinary_pdf_still_gives_its_text_through_the_child():
    pdf = whitespace_form_pdf(forms=1, megabytes=1, text="the quokka census")

    extraction = extract_in_child(data=pdf, kind="pdf")

    assert "the quokka census" in extraction.text
    assert extraction.note == ""


def _process_tree_peak_bytes(root_pid: int) -> int:
    """The largest VmHWM (peak resident memory) among ``root_pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    peak, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        if found:
            peak = max(peak, int(found.group(1)) * 1024)
    return peak


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_live_worker_indexes_the_crafted_pdf_by_name_once_within_the_caps(live_worker, user):
    pdf = whitespace_form_pdf(forms=10, megabytes=50)

    upload = create_upload(owner=user, file=ContentFile(pdf, name="bomb.pdf"))

    delivery = wait_for(
        lambda: Delivery.objects.filter(
            event__aggregate_id=str(upload.pk),
            event__type="file.uploaded",
            consumer="indexing",
            state=Delivery.State.DONE,
        ).first(),
        timeout=90,
        what="the indexing delivery of the crafted PDF done",
    )
    entry = IndexEntry.objects.get(upload_id=upload.pk)
    took = (delivery.completed_at - delivery.created_at).total_seconds()
    worker_peak = _process_tree_peak_bytes(live_worker.process.pid)
    print(
        f"\nlive worker: crafted PDF delivered in {took:.2f} s, {delivery.attempts} attempt(s); "
        f"worker process tree peak {worker_peak // MIB} MiB"
    )
    assert entry.text == ""
    assert entry.note.endswith("indexed by name")
    assert delivery.attempts == 1
    assert worker_peak < CHILD_MEMORY_BYTES
