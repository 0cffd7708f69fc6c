"""EPUB and ODT → content list, read straight from their zip (stdlib XML, members read with a
size cap). EPUB: the chapters in spine order, one ``page_idx`` per chapter, as their visible text.
ODT: headings and paragraphs as text, tables as table items."""

from __future__ import annotations

import posixpath
import zipfile
from xml.etree import ElementTree as ET

from src.rag.parsing.content import ContentList, DocumentParseError, markdown_table, table_item, text_item
from src.rag.parsing.job import ParseJob
from src.rag.parsing.text import decode_text, html_to_text
from src.rag.parsing.zipguard import read_member

_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_OPF = "{http://www.idpf.org/2007/opf}"
_TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
_TABLE = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"


def _open(job: ParseJob, kind: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(job.path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DocumentParseError(f"{job.name}: not a readable .{kind}") from exc


def _xml(job: ParseJob, archive: zipfile.ZipFile, member: str) -> ET.Element:
    try:
        return ET.fromstring(read_member(archive, member, job.limits.max_expanded_bytes))
    except KeyError:
        raise DocumentParseError(f"{job.name}: {member} is missing") from None
    except ET.ParseError as exc:
        raise DocumentParseError(f"{job.name}: {member} is not well-formed XML ({exc})") from None


def parse_epub(job: ParseJob) -> ContentList:
    with _open(job, "epub") as archive:
        container = _xml(job, archive, "META-INF/container.xml")
        rootfile = container.find(f".//{_CONTAINER}rootfile")
        if rootfile is None or not rootfile.get("full-path"):
            raise DocumentParseError(f"{job.name}: no package document in META-INF/container.xml")
        opf_path = rootfile.get("full-path", "")
        opf = _xml(job, archive, opf_path)
        base = posixpath.dirname(opf_path)
        manifest = {
            item.get("id"): item.get("href", "")
            for item in opf.iter(f"{_OPF}item")
            if "html" in (item.get("media-type") or "")
        }
        spine = [ref.get("idref") for ref in opf.iter(f"{_OPF}itemref")]
        chapters = [manifest[idref] for idref in spine if idref in manifest]
        items: ContentList = []
        for index, href in enumerate(chapters):
            member = posixpath.normpath(posixpath.join(base, href.split("#")[0]))
            try:
                raw = read_member(archive, member, job.limits.max_expanded_bytes)
            except KeyError:
                continue
            text = html_to_text(decode_text(raw, job.name))
            if text:
                job.budget.take(text)
                items.append(text_item(text, index))
            job.progress(index + 1, len(chapters))
    if not items:
        raise DocumentParseError(f"{job.name}: the book contains no text")
    return items


def _odt_text(element: ET.Element) -> str:
    parts: list[str] = []
    for node in element.iter():
        if node.text and node.tag != f"{_TEXT}note-citation":
            parts.append(node.text)
        if node.tag == f"{_TEXT}s":
            parts.append(" ")
        elif node.tag in (f"{_TEXT}tab", f"{_TEXT}line-break"):
            parts.append("\n" if node.tag.endswith("line-break") else "\t")
        if node is not element and node.tail:
            parts.append(node.tail)
    return "".join(parts).strip()


def parse_odt(job: ParseJob) -> ContentList:
    with _open(job, "odt") as archive:
        root = _xml(job, archive, "content.xml")
    body = root.find(".//{urn:oasis:names:tc:opendocument:xmlns:office:1.0}text")
    if body is None:
        raise DocumentParseError(f"{job.name}: no text body in content.xml")
    items: ContentList = []

    def walk(parent: ET.Element) -> None:
        for child in parent:
            if child.tag in (f"{_TEXT}p", f"{_TEXT}h"):
                text = _odt_text(child)
                if text:
                    job.budget.take(text)
                    items.append(text_item(text, 0))
            elif child.tag == f"{_TABLE}table":
                rows = [
                    [_odt_text(cell) for cell in row.iter(f"{_TABLE}table-cell")]
                    for row in child.iter(f"{_TABLE}table-row")
                ]
                table = markdown_table(rows)
                if table:
                    job.budget.take(table)
                    items.append(table_item(table, 0))
            else:
                walk(child)

    walk(body)
    if not items:
        raise DocumentParseError(f"{job.name}: the document contains no text")
    return items
