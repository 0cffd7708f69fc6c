"""Build hostile documents in memory: a DOCX zip bomb (valid package, one huge run of text)."""

from __future__ import annotations

import io
import zipfile

from tests.docs_factory import make_docx

_CHUNK = 1024 * 1024


def retag(archive: bytes, tag: bytes) -> bytes:
    """The same zip with another comment (a distinct upload without deflating a gigabyte again)."""
    assert archive[-2:] == b"\x00\x00", "expects an archive without a comment"
    return archive[:-2] + len(tag).to_bytes(2, "little") + tag


def make_docx_bomb(expanded_bytes: int, tag: bytes = b"") -> bytes:
    """A real .docx whose word/document.xml is ``expanded_bytes`` of one character, deflated
    (about 1000:1). Every other part comes from a genuine python-docx document, so the package
    opens; ``tag`` (in the zip comment) makes copies differ in content hash."""
    base = zipfile.ZipFile(io.BytesIO(make_docx(["x"])))
    out = io.BytesIO()
    head = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        b"<w:body><w:p><w:r><w:t>"
    )
    tail = b"</w:t></w:r></w:p></w:body></w:document>"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for item in base.infolist():
            if item.filename != "word/document.xml":
                bomb.writestr(item, base.read(item.filename))
        with bomb.open("word/document.xml", "w", force_zip64=True) as member:
            member.write(head)
            left = expanded_bytes - len(head) - len(tail)
            block = b"A" * _CHUNK
            while left > 0:
                member.write(block[: min(left, _CHUNK)])
                left -= _CHUNK
            member.write(tail)
        bomb.comment = tag
    return out.getvalue()
