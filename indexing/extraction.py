"""Turning the bytes of one stored file into bounded plain text, or a reason why not.

Everything here is pure (bytes in, ``Extraction`` out) except ``read_stored_file``, and
every limit is explicit: a single huge or hostile file costs at most ``read_limit(kind)``
bytes of memory (``MAX_TEXT_BYTES``, ``MAX_PDF_BYTES``), ``MAX_TEXT_CHARS`` of index and
about ``TIME_BUDGET_SECONDS`` of CPU. HTML goes through libxml2 (lxml), which is linear in
its input and caps nesting depth; the standard library's ``html.parser`` is quadratic on
unclosed tags and raises on some malformed markup. Input that cannot be read, that an
extractor fails on, or that passes the time budget (or the task's soft time limit) is
indexed by name with a note, never retried: the same bytes fail the same way every time.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import charset_normalizer
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.storage import default_storage
from lxml import etree
from lxml import html as lxml_html
from pypdf import PdfReader, apply_configuration

logger = logging.getLogger(__name__)

# At most this much text per file goes into the index.
MAX_TEXT_CHARS = 1_000_000
# At most this much of a text-like file is read; HTML markup needs room beyond the text.
MAX_TEXT_BYTES = 8 * 1024 * 1024
# A PDF must be read whole to be parsed; larger ones are indexed by name.
MAX_PDF_BYTES = 64 * 1024 * 1024
MAX_PDF_PAGES = 2_000
# Every extractor's CPU budget, well below the consumer's soft time limit (100 s), so a
# slow file ends with a note, not a retry.
TIME_BUDGET_SECONDS = 30.0
# PDFs are parsed in a child process (``extract_in_child``) held to these by the
# kernel: RLIMIT_CPU a little over the cooperative budget (which normally stops first,
# between pages, keeping the pages read so far), RLIMIT_AS of 512 MiB. The child starts
# at about 60 MB; a crafted 500 KB PDF whose forms inflate to 500 MB took the worker to
# 585 MB before (issue 21).
CHILD_CPU_SECONDS = int(TIME_BUDGET_SECONDS) + 5
CHILD_MEMORY_BYTES = 512 * 1024 * 1024
# Wall-clock backstop for a child that sleeps instead of spinning.
CHILD_WALL_SECONDS = TIME_BUDGET_SECONDS * 2
# pypdf's own per-stream limits, lowered from its 75 MB defaults (300 MB of decoding
# work) so one stream cannot take a third of the child's memory; a content stream
# of real text is far below 16 MB. The declared (compressed) length may still be as
# large as a whole PDF we read.
PYPDF_LIMITS = {
    "zlib_maximum_output_length": 16_000_000,
    "lzw_maximum_output_length": 16_000_000,
    "run_length_maximum_output_length": 16_000_000,
    "brotli_maximum_output_length": 16_000_000,
    "array_based_stream_maximum_output_length": 16_000_000,
    "stream_decoding_work_maximum_length": 32_000_000,
}
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
# How often the budget is looked at while walking elements, JSON values or PDF pages.
_BUDGET_CHECK_EVERY = 1000
MAX_NOTE_CHARS = 255

# Private-use characters that the search backends put around highlighted terms. They
# are removed from indexed text so a file cannot forge a highlight.
HIGHLIGHT_START = "\ue000"
HIGHLIGHT_END = "\ue001"

# Control characters other than tab and newline, and the highlight marks.
_UNWANTED_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ue000\ue001]")

# Preferred, in this order, among encodings the detector finds equally likely.
TIE_BREAK_ENCODINGS = ("utf_8", "cp1252", "latin_1", "iso8859_15")

KIND_BY_EXTENSION = {
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    ".md": "text",
    ".markdown": "text",
    ".rst": "text",
    ".csv": "text",
    ".tsv": "text",
    ".json": "json",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
}
KIND_BY_CONTENT_TYPE = {
    "text/plain": "text",
    "text/markdown": "text",
    "text/x-markdown": "text",
    "text/csv": "text",
    "application/json": "json",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}


@dataclass(frozen=True)
class Extraction:
    """The text of one file (maybe empty) and a note saying why it is empty or partial."""

    text: str
    note: str = ""

    @classmethod
    def name_only(cls, reason: str) -> Extraction:
        """No text: the file is indexed by its name, with ``reason`` recorded."""
        return cls("", _note(f"{reason}; indexed by name"))


def kind_of(*, name: str, content_type: str = "") -> str | None:
    """``text``, ``json``, ``html``, ``pdf``, or None for types indexed by name only.

    The name's extension decides first (the stored content type is itself guessed from
    the name, or upcast from events that had none); an unknown extension falls back to
    the content type, and any ``text/*`` type is read as plain text.
    """
    extension = PurePosixPath(name.lower()).suffix
    if extension in KIND_BY_EXTENSION:
        return KIND_BY_EXTENSION[extension]
    content_type = content_type.split(";", 1)[0].strip().lower()
    if content_type in KIND_BY_CONTENT_TYPE:
        return KIND_BY_CONTENT_TYPE[content_type]
    if content_type.startswith("text/"):
        return "text"
    if content_type.endswith("+json"):
        return "json"
    return None


def read_limit(kind: str) -> int:
    """How many bytes of a file of ``kind`` are read at most."""
    return MAX_PDF_BYTES if kind == "pdf" else MAX_TEXT_BYTES


def read_stored_file(storage_name: str, *, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a file in default storage, and whether there was more.

    ``FileNotFoundError`` when it is gone; other ``OSError`` for the caller to retry.
    """
    with default_storage.open(storage_name, "rb") as handle:
        data = handle.read(limit + 1)
    return data[:limit], len(data) > limit


class BudgetExceeded(Exception):
    """An extractor ran past ``TIME_BUDGET_SECONDS``."""


class Deadline:
    """The moment an extraction must stop; ``check()`` raises ``BudgetExceeded`` after it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def passed(self) -> bool:
        """Whether the budget is used up."""
        return time.monotonic() > self.at

    def check(self) -> None:
        """Raise ``BudgetExceeded`` when the budget is used up."""
        if self.passed():
            raise BudgetExceeded(f"over the time budget of {self.seconds:g} s")


def extract(*, data: bytes, kind: str, truncated: bool = False) -> Extraction:
    """The text of ``data``, a file of ``kind``; ``truncated`` when only its start was read.

    Never raises for anything the bytes can cause: a parser error, the time budget
    (``TIME_BUDGET_SECONDS``) or the task's soft time limit give a name-only
    ``Extraction`` that says why, so the delivery ends ``done`` instead of being retried.
    """
    deadline = Deadline(TIME_BUDGET_SECONDS)
    try:
        return _extract(data, kind=kind, truncated=truncated, deadline=deadline)
    except BudgetExceeded as exc:
        return Extraction.name_only(f"{kind.upper()} text extraction stopped: {exc}")
    except SoftTimeLimitExceeded:
        return Extraction.name_only("text extraction ran out of time")
    except MemoryError:
        # Only in extract_in_child's child, whose address space is capped.
        return Extraction.name_only(_memory_limit_reason(kind))
    except Exception as exc:
        # A parser's own bug or limit on hostile input: the same bytes fail the same way
        # on every retry, so none is worth one.
        logger.info("%s could not be read: %s", kind, _describe(exc))
        return Extraction.name_only(f"{kind.upper()} could not be read ({_describe(exc)})")


def _memory_limit_reason(kind: str) -> str:
    return f"{kind.upper()} text extraction stopped: over the memory limit of {CHILD_MEMORY_BYTES // 2**20} MiB"


def extract_in_child(
    *,
    data: bytes,
    kind: str,
    truncated: bool = False,
    cpu_seconds: int = CHILD_CPU_SECONDS,
    memory_bytes: int = CHILD_MEMORY_BYTES,
) -> Extraction:
    """``extract`` in a child process held to ``cpu_seconds`` of CPU and ``memory_bytes``.

    The cooperative budget of ``extract`` is looked at only between pages; the kernel's
    RLIMIT_CPU and RLIMIT_AS hold a single page, or a parser stuck in one stream, too.
    The child is a fresh interpreter (``python -m indexing.extract_child``), not a fork:
    a Celery pool process may not fork multiprocessing children, and a fresh process
    starts small whatever the worker holds. Going over a limit gives a name-only
    ``Extraction`` like any other extraction failure; never raises for the bytes.
    """
    command = [
        sys.executable,
        "-m",
        "indexing.extract_child",
        kind,
        "1" if truncated else "0",
        str(cpu_seconds),
        str(memory_bytes),
    ]
    process = subprocess.Popen(
        command,
        cwd=_PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = process.communicate(data, timeout=CHILD_WALL_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return Extraction.name_only(
            f"{kind.upper()} text extraction stopped: over {CHILD_WALL_SECONDS:g} s"
        )
    finally:
        # The task's soft time limit (or anything else) must not leave the child running.
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return Extraction.name_only(
            f"{kind.upper()} text extraction stopped: over the CPU limit of {cpu_seconds} s"
        )
    if process.returncode == CHILD_EXIT_MEMORY:
        return Extraction.name_only(_memory_limit_reason(kind))
    if process.returncode != 0:
        last_line = (stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        logger.warning(
            "%s extraction child failed (exit %s): %s", kind, process.returncode, last_line
        )
        return Extraction.name_only(f"{kind.upper()} could not be read (exit {process.returncode})")
    result = json.loads(stdout)
    logger.info(
        "%s extracted in a child: %.1f s CPU, peak %d MiB",
        kind,
        result["cpu_seconds"],
        result["peak_rss_bytes"] // 2**20,
    )
    return Extraction(result["text"], result["note"])


# The child's exit status when even reporting a MemoryError ran out of memory.
CHILD_EXIT_MEMORY = 3


def child_main(argv: list[str]) -> int:
    """The child of ``extract_in_child``: limits, then bytes on stdin to JSON on stdout."""
    import resource

    kind, truncated, cpu_seconds, memory_bytes = argv
    data = sys.stdin.buffer.read()
    resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_seconds), int(cpu_seconds) + 1))
    resource.setrlimit(resource.RLIMIT_AS, (int(memory_bytes), int(memory_bytes)))
    try:
        extraction = extract(data=data, kind=kind, truncated=truncated == "1")
        del data
        usage = resource.getrusage(resource.RUSAGE_SELF)
        payload = json.dumps(
            {
                "text": extraction.text,
                "note": extraction.note,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_bytes": usage.ru_maxrss * 1024,
            }
        )
        sys.stdout.write(payload)
        sys.stdout.flush()
    except MemoryError:
        os._exit(CHILD_EXIT_MEMORY)
    return 0


def _extract(data: bytes, *, kind: str, truncated: bool, deadline: Deadline) -> Extraction:
    if kind == "pdf":
        return _pdf_text(data, truncated=truncated, deadline=deadline)
    text = decode_text(data, truncated=truncated)
    if text is None:
        return Extraction.name_only("content is not recognisable text")
    deadline.check()
    note = ""
    if kind == "html":
        text = html_to_text(text, deadline=deadline)
    elif kind == "json":
        text, note = _json_text(text, deadline=deadline)
    return _bounded(text, note=note, truncated=truncated)


def decode_text(data: bytes, *, truncated: bool = False) -> str | None:
    """``data`` decoded: UTF-8 when it is valid, else the encoding charset-normalizer finds.

    None when no encoding fits (binary content). A read cut short (``truncated``) may end
    in the middle of a character; that partial character is dropped.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    # UTF-16 text is valid UTF-8 byte by byte, but full of NULs: leave it to detection.
    if b"\x00" not in data[:4096]:
        try:
            return codecs.getincrementaldecoder("utf-8")().decode(data, final=not truncated)
        except UnicodeDecodeError:
            pass
    if not data:
        return ""
    # A cut-off multi-byte character would disqualify the right encoding.
    sample = data[:-8] if truncated and len(data) > 8 else data
    matches = charset_normalizer.from_bytes(sample)
    best = matches.best()
    if best is None:
        return None
    # Short Western text often scores the same in several code pages (é is é in both
    # cp1250 and cp1252, but è is not); on a tie prefer the most common legacy encoding,
    # windows-1252, which is also what browsers read for a "latin-1" label.
    tied = {
        m.encoding: m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)
    }
    for encoding in TIE_BREAK_ENCODINGS:
        if encoding in tied:
            return str(tied[encoding])
    return str(best)


# Elements whose content is not visible text.
_SKIPPED_TAGS = frozenset({"script", "style", "template", "noscript"})
# Elements that separate words visually, so their neighbours must not run together.
_BREAKING_TAGS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "figcaption",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "td",
        "th",
        "title",
        "tr",
        "ul",
    }
)


def html_to_text(html: str, *, deadline: Deadline | None = None) -> str:
    """The visible text of ``html``: tags stripped, scripts and styles dropped, entities decoded.

    libxml2 (lxml) parses in linear time, recovers from broken markup and caps nesting
    depth; the walk is iterative and looks at ``deadline`` every thousand elements.
    Raises ``lxml.etree.ParserError`` for a document with nothing in it.
    """
    if not html.strip():
        return ""
    parser = lxml_html.HTMLParser(
        remove_comments=True, remove_pis=True, no_network=True, recover=True
    )
    root = lxml_html.document_fromstring(html, parser=parser)
    parts: list[str] = []
    skip_depth = 0
    for number, (event, element) in enumerate(etree.iterwalk(root, events=("start", "end"))):
        if deadline is not None and number % _BUDGET_CHECK_EVERY == 0:
            deadline.check()
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in _SKIPPED_TAGS:
                skip_depth += 1
            elif tag in _BREAKING_TAGS:
                parts.append("\n")
            if element.text and not skip_depth:
                parts.append(element.text)
            continue
        if tag in _SKIPPED_TAGS:
            skip_depth = max(0, skip_depth - 1)
        elif tag in _BREAKING_TAGS:
            parts.append("\n")
        if element.tail and not skip_depth:
            parts.append(element.tail)
    text = "".join(parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r"\s*\n\s*", "\n", text).strip()


def _json_text(text: str, *, deadline: Deadline | None = None) -> tuple[str, str]:
    """Keys and scalar values of a JSON document, one per line; raw text if it is not JSON."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text, "not valid JSON; indexed as plain text"
    parts: list[str] = []
    stack = [value]
    steps = 0
    # Iterative, so a deeply nested document cannot exhaust the stack.
    while stack:
        steps += 1
        if deadline is not None and steps % _BUDGET_CHECK_EVERY == 0:
            deadline.check()
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                stack.append(child)
                stack.append(key)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            parts.append(item)
        elif item is not None and not isinstance(item, bool):
            parts.append(str(item))
    return "\n".join(parts), ""


def _pdf_text(data: bytes, *, truncated: bool, deadline: Deadline) -> Extraction:
    if truncated:
        return Extraction.name_only(f"PDF is larger than {MAX_PDF_BYTES} bytes")
    try:
        # pypdf's per-stream limits, lowered for this extraction only (a context var).
        with apply_configuration(**PYPDF_LIMITS):
            return _pdf_pages_text(data, deadline=deadline)
    except SoftTimeLimitExceeded:
        return Extraction.name_only("PDF text extraction ran out of time")
    except MemoryError:
        return Extraction.name_only(_memory_limit_reason("pdf"))
    except Exception as exc:
        # pypdf raises many exception types on malformed input; none is worth a retry,
        # because the same bytes fail the same way every time.
        logger.info("PDF could not be read: %s: %s", type(exc).__name__, exc)
        return Extraction.name_only(f"PDF could not be read ({_describe(exc)})")


def _pdf_pages_text(data: bytes, *, deadline: Deadline) -> Extraction:
    parts: list[str] = []
    length = 0
    notes: list[str] = []
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not _decrypts_with_empty_password(reader):
        return Extraction.name_only("PDF is encrypted")
    for number, page in enumerate(reader.pages, start=1):
        if number > MAX_PDF_PAGES:
            notes.append(f"only the first {MAX_PDF_PAGES} pages read")
            break
        if deadline.passed():
            notes.append(f"stopped after {number - 1} pages (time budget)")
            break
        try:
            page_text = page.extract_text() or ""
        except (SoftTimeLimitExceeded, MemoryError):
            raise
        except Exception as exc:
            # One broken page (bad font, bad stream) should not lose the others.
            notes.append(f"page {number} unreadable ({type(exc).__name__})")
            continue
        parts.append(page_text)
        length += len(page_text)
        if length >= MAX_TEXT_CHARS:
            break
    text = "\n".join(parts)
    if not text.strip():
        # Nothing to index but the name: say why, like every other failure.
        reason = "; ".join(notes) or "PDF has no extractable text (scanned images?)"
        return Extraction.name_only(reason)
    return _bounded(text, note="; ".join(notes), truncated=False)


def _decrypts_with_empty_password(reader: PdfReader) -> bool:
    """Whether an encrypted PDF opens without a password (owner-password-only PDFs do)."""
    try:
        return bool(reader.decrypt(""))
    except Exception:
        # Wrong password, or an AES PDF and no cryptography package to decrypt it.
        return False


def _bounded(text: str, *, note: str = "", truncated: bool = False) -> Extraction:
    """``text`` cleaned and cut to ``MAX_TEXT_CHARS``, with a note saying what was left out."""
    text = _UNWANTED_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    notes = [note] if note else []
    if truncated:
        notes.append(f"only the first {MAX_TEXT_BYTES} bytes read")
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS]
        notes.append(f"text cut to {MAX_TEXT_CHARS} characters")
    return Extraction(text, _note("; ".join(notes)))


def clean_name(name: str) -> str:
    """``name`` without control characters or highlight marks, safe to index."""
    return _UNWANTED_CHARS.sub("", name)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _note(text: str) -> str:
    return text if len(text) <= MAX_NOTE_CHARS else text[: MAX_NOTE_CHARS - 1] + "…"
