"""What an upload may be: file kinds by extension, and the magic bytes each kind must start with.

Stdlib only: the upload path imports this while bytes arrive, and the parse child imports it too.
A renamed binary (an .exe called report.pdf, a zip called notes.txt) is refused at upload time,
before a task exists. Images accept any image signature whatever their image extension (a PNG
saved as .jpg is common and harmless: Pillow reads the content, not the name).
"""

from __future__ import annotations

#: Text files indexed as they are (LightRAG Server's text-like list, plus .markdown).
TEXT_LIKE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".txt", ".md", ".markdown", ".mdx", ".tex", ".xml", ".yaml", ".yml", ".log", ".conf",
        ".ini", ".properties", ".sql", ".bat", ".sh", ".c", ".h", ".cpp", ".hpp", ".py", ".java",
        ".js", ".ts", ".swift", ".go", ".rb", ".php", ".css", ".scss", ".less", ".json",
    }
)  # fmt: skip
HTML_EXTENSIONS: frozenset[str] = frozenset({".html", ".htm"})
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)
#: Zip containers: Office Open XML, OpenDocument, EPUB, and a content-list bundle (``.zip``).
ZIP_EXTENSIONS: frozenset[str] = frozenset({".docx", ".pptx", ".xlsx", ".odt", ".epub", ".zip"})
#: Formats parsed in the bounded child process (src/rag/parsing/worker.py).
ISOLATED_EXTENSIONS: frozenset[str] = frozenset({".pdf", ".csv", ".rtf"}) | ZIP_EXTENSIONS | IMAGE_EXTENSIONS
SUPPORTED_EXTENSIONS: frozenset[str] = TEXT_LIKE_EXTENSIONS | HTML_EXTENSIONS | ISOLATED_EXTENSIONS

#: Extension → the parser module's kind (worker.py dispatches on it).
_KINDS: dict[str, str] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".odt": "odt",
    ".epub": "epub",
    ".csv": "csv",
    ".rtf": "rtf",
    ".zip": "bundle",
    **{ext: "image" for ext in IMAGE_EXTENSIONS},
}

_IMAGE_SIGNATURES: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


def kind_of(extension: str) -> str:
    """The parse kind of an extension: "text" (read directly), "html", or an isolated kind."""
    extension = extension.lower()
    if extension in TEXT_LIKE_EXTENSIONS:
        return "text"
    if extension in HTML_EXTENSIONS:
        return "html"
    try:
        return _KINDS[extension]
    except KeyError:
        raise ValueError(f"unsupported file type {extension or '(none)'}") from None


def is_image(head: bytes) -> bool:
    return head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def magic_mismatch(extension: str, head: bytes) -> str | None:
    """Why ``head`` (the first bytes of the file) cannot be a ``extension`` file, or None if it can."""
    extension = extension.lower()
    if extension == ".pdf":
        return None if b"%PDF-" in head[:1024] else "file has a .pdf extension but is not a PDF"
    if extension in ZIP_EXTENSIONS:
        if head.startswith(b"PK\x03\x04"):
            return None
        return f"file has a {extension} extension but is not a {extension[1:].upper()} (zip) file"
    if extension in IMAGE_EXTENSIONS:
        return None if is_image(head) else f"file has a {extension} extension but is not an image"
    if extension == ".rtf":
        return (
            None
            if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{\\rtf")
            else ("file has a .rtf extension but is not RTF")
        )
    if b"\x00" in head[:8192] and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"file has a {extension} extension but contains binary data"
    return None
