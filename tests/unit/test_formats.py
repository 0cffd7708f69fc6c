"""Upload-time file kinds and magic bytes (src/rag/parsing/formats.py)."""

from __future__ import annotations

import pytest

from src.rag.parsing.formats import SUPPORTED_EXTENSIONS, kind_of, magic_mismatch

pytestmark = pytest.mark.unit

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF"
ZIP = b"PK\x03\x04\x14\x00"


def test_lightrag_server_types_are_all_supported() -> None:
    lightrag_server = {
        ".txt", ".md", ".mdx", ".pdf", ".docx", ".pptx", ".xlsx", ".rtf", ".odt", ".tex", ".epub",
        ".html", ".htm", ".csv", ".json", ".xml", ".yaml", ".yml", ".log", ".conf", ".ini",
        ".properties", ".sql", ".bat", ".sh", ".c", ".h", ".cpp", ".hpp", ".py", ".java", ".js",
        ".ts", ".swift", ".go", ".rb", ".php", ".css", ".scss", ".less",
    }  # fmt: skip
    images = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    assert lightrag_server | images <= SUPPORTED_EXTENSIONS
    with pytest.raises(ValueError, match="unsupported file type .exe"):
        kind_of(".exe")


@pytest.mark.parametrize(
    ("extension", "head"),
    [
        (".pdf", b"%PDF-1.7\n"),
        (".docx", ZIP),
        (".pptx", ZIP),
        (".xlsx", ZIP),
        (".epub", ZIP),
        (".zip", ZIP),
        (".png", PNG),
        (".jpg", JPEG),
        (".jpg", PNG),  # a PNG saved as .jpg is still a picture
        (".webp", b"RIFF\x00\x00\x00\x00WEBPVP8 "),
        (".gif", b"GIF89a"),
        (".bmp", b"BM\x00\x00"),
        (".tif", b"II*\x00"),
        (".tiff", b"MM\x00*"),
        (".rtf", b"{\\rtf1\\ansi hello}"),
        (".csv", "名称,数量\n".encode()),
        (".py", b"print('hi')\n"),
        (".txt", "\ufeff文本".encode("utf-16")),
    ],
)
def test_matching_content_is_accepted(extension: str, head: bytes) -> None:
    assert magic_mismatch(extension, head) is None


@pytest.mark.parametrize(
    ("extension", "head", "message"),
    [
        (".pdf", b"MZ\x90\x00", "not a PDF"),
        (".xlsx", b"%PDF-1.4", "not a XLSX (zip) file"),
        (".zip", b"\x1f\x8b\x08", "not a ZIP (zip) file"),
        (".png", b"%PDF-1.4", "not an image"),
        (".jpeg", b"hello", "not an image"),
        (".rtf", b"plain text", "not RTF"),
        (".csv", b"a,b\x00\x00c", "contains binary data"),
        (".json", b"\x00\x01\x02", "contains binary data"),
    ],
)
def test_mismatching_content_is_named(extension: str, head: bytes, message: str) -> None:
    assert message in (magic_mismatch(extension, head) or "")
