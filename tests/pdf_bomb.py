"""A crafted PDF for the extraction limits (issue 21), made on the fly: no binary committed.

One page whose content stream draws ``forms`` form XObjects, each a FlateDecode stream
of ``megabytes`` MB of whitespace. Whitespace compresses about 1000:1, so ten 50 MB forms
make a file of about 500 KB; under pypdf's default 75 MB per-stream cap, each one is
inflated and parsed in full by ``extract_text``.
"""

from __future__ import annotations

import functools
import zlib


@functools.cache
def _compressed_whitespace(size: int) -> bytes:
    return zlib.compress(b" " * size, 9)


def whitespace_form_pdf(*, forms: int = 10, megabytes: int = 50, text: str = "") -> bytes:
    """The PDF's bytes; ``text`` (ASCII) is drawn on the page too when given."""
    stream = _compressed_whitespace(megabytes * 1_000_000)
    names = [f"Fm{n}" for n in range(forms)]
    first_form = 5
    xobjects = " ".join(f"/{name} {first_form + n} 0 R" for n, name in enumerate(names))
    content = " ".join(f"/{name} Do" for name in names).encode()
    if text:
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET ".encode() + content
    font_number = first_form + forms
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            f"/Resources << /XObject << {xobjects} >> /Font << /F1 {font_number} 0 R >> >> >>"
        ).encode(),
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    for _ in names:
        # With a font in its resources, as a real form has: pypdf skips a form without.
        objects.append(
            b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] "
            b"/Resources << /Font << /F1 %d 0 R >> >> /Filter /FlateDecode "
            b"/Length %d >>\nstream\n" % (font_number, len(stream)) + stream + b"\nendstream"
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")

    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref_at,
    )
    return bytes(out)
