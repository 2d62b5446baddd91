"""Turning the bytes of one stored file into bounded plain text, or a reason why not.

Everything here is pure (bytes in, ``Extraction`` out) except ``read_stored_file``, and
every limit is explicit: a single huge or hostile file costs at most ``MAX_TEXT_BYTES``
or ``MAX_PDF_BYTES`` of memory, ``MAX_TEXT_CHARS`` of index and ``PDF_TIME_BUDGET_SECONDS``
of CPU. Input that cannot be read is indexed by name with a note, never retried: no
retry turns a malformed PDF into a good one.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import re
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath

import charset_normalizer
from celery.exceptions import SoftTimeLimitExceeded
from django.core.files.storage import default_storage
from pypdf import PdfReader

logger = logging.getLogger(__name__)

# At most this much text per file goes into the index.
MAX_TEXT_CHARS = 1_000_000
# At most this much of a text-like file is read; HTML markup needs room beyond the text.
MAX_TEXT_BYTES = 8 * 1024 * 1024
# A PDF must be read whole to be parsed; larger ones are indexed by name.
MAX_PDF_BYTES = 64 * 1024 * 1024
MAX_PDF_PAGES = 2_000
# Below the consumer's soft time limit, so a slow PDF ends with a note, not a retry.
PDF_TIME_BUDGET_SECONDS = 60.0
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


def extract(*, data: bytes, kind: str, truncated: bool = False) -> Extraction:
    """The text of ``data``, a file of ``kind``; ``truncated`` when only its start was read."""
    if kind == "pdf":
        return _pdf_text(data, truncated=truncated)
    text = decode_text(data, truncated=truncated)
    if text is None:
        return Extraction.name_only("content is not recognisable text")
    note = ""
    if kind == "html":
        text = html_to_text(text)
    elif kind == "json":
        text, note = _json_text(text)
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


class _HTMLText(HTMLParser):
    """Collects the text of an HTML document, without scripts, styles or templates."""

    SKIPPED = frozenset({"script", "style", "template"})
    # Tags that separate words visually, so their neighbours must not run together.
    BREAKING = frozenset(
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

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIPPED:
            self.skip_depth += 1
        elif tag in self.BREAKING:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <script/> opens nothing; <br/> still breaks the line.
        if tag in self.BREAKING:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in self.BREAKING:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """The visible text of ``html``: tags stripped, scripts and styles dropped, entities decoded."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r"\s*\n\s*", "\n", text).strip()


def _json_text(text: str) -> tuple[str, str]:
    """Keys and scalar values of a JSON document, one per line; raw text if it is not JSON."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text, "not valid JSON; indexed as plain text"
    parts: list[str] = []
    stack = [value]
    # Iterative, so a deeply nested document cannot exhaust the stack.
    while stack:
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


def _pdf_text(data: bytes, *, truncated: bool) -> Extraction:
    if truncated:
        return Extraction.name_only(f"PDF is larger than {MAX_PDF_BYTES} bytes")
    deadline = time.monotonic() + PDF_TIME_BUDGET_SECONDS
    parts: list[str] = []
    length = 0
    notes: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _decrypts_with_empty_password(reader):
            return Extraction.name_only("PDF is encrypted")
        for number, page in enumerate(reader.pages, start=1):
            if number > MAX_PDF_PAGES:
                notes.append(f"only the first {MAX_PDF_PAGES} pages read")
                break
            if time.monotonic() > deadline:
                notes.append(f"stopped after {number - 1} pages (time budget)")
                break
            try:
                page_text = page.extract_text() or ""
            except SoftTimeLimitExceeded:
                raise
            except Exception as exc:
                # One broken page (bad font, bad stream) should not lose the others.
                notes.append(f"page {number} unreadable ({type(exc).__name__})")
                continue
            parts.append(page_text)
            length += len(page_text)
            if length >= MAX_TEXT_CHARS:
                break
    except SoftTimeLimitExceeded:
        return Extraction.name_only("PDF text extraction ran out of time")
    except Exception as exc:
        # pypdf raises many exception types on malformed input; none is worth a retry,
        # because the same bytes fail the same way every time.
        logger.info("PDF could not be read: %s: %s", type(exc).__name__, exc)
        return Extraction.name_only(f"PDF could not be read ({_describe(exc)})")
    text = "\n".join(parts)
    if not text.strip() and not notes:
        return Extraction.name_only("PDF has no extractable text (scanned images?)")
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
