"""Issue 24: every format becomes RAG-Anything's content list, in the bounded parse child, offline.

Documents are generated here (tests/multimodal_docs.py); OCR runs the PP-OCRv4 models shipped in
the rapidocr-onnxruntime wheel."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from src.rag.parsing.content import DocumentParseError, indexable_text
from src.rag.parsing.isolated import run_isolated
from src.rag.parsing.limits import ParseLimits
from tests.multimodal_docs import (
    docx_rich,
    pdf_with_table,
    pptx_deck,
    scanned_pdf,
    text_image,
    xlsx_book,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LIMITS = ParseLimits()


def _parse(tmp_path: Path, name: str, data: bytes, kind: str, limits: ParseLimits = LIMITS, **kw):
    path = tmp_path / name
    path.write_bytes(data)
    return run_isolated(kind, path, tmp_path / "out" / name, limits, **kw)


def _types(items: list[dict]) -> list[str]:
    return [item["type"] for item in items]


def test_scanned_chinese_pdf_is_ocrd_page_by_page(tmp_path: Path) -> None:
    pages = [["东湖街道排水管网老化严重。", "共有管网一百二十公里。"], ["消防通道被违规占用。"]]
    progress: list[tuple[int, int]] = []
    items = _parse(
        tmp_path, "scan.pdf", scanned_pdf(pages), "pdf", on_progress=lambda d, t: progress.append((d, t))
    )
    assert _types(items) == ["text", "text"]
    assert [item["page_idx"] for item in items] == [0, 1]
    assert "排水管网老化严重" in items[0]["text"] and "消防通道被违规占用" in items[1]["text"]
    assert progress[-1] == (2, 2)


def test_ocr_that_makes_no_progress_is_stopped(tmp_path: Path) -> None:
    """Catches: a parse child that runs forever (PARSE_TIMEOUT_SECONDS counts time without progress)."""
    limits = ParseLimits(timeout_seconds=0.3)
    with pytest.raises(DocumentParseError, match="no progress for 0.3 s"):
        _parse(tmp_path, "scan.pdf", scanned_pdf([["很多文字"] * 20]), "pdf", limits)


def test_pdf_table_becomes_a_table_item_and_leaves_the_page_text(tmp_path: Path) -> None:
    rows = [["Item", "Count"], ["Hydrants", "42"], ["Manholes", "17"]]
    items = _parse(tmp_path, "t.pdf", pdf_with_table("Inspection results for district A.", rows), "pdf")
    assert _types(items) == ["text", "table"]
    assert items[0]["text"] == "Inspection results for district A."
    assert items[1]["table_body"] == "| Item | Count |\n|---|---|\n| Hydrants | 42 |\n| Manholes | 17 |"


def test_docx_table_picture_and_equation(tmp_path: Path) -> None:
    picture = text_image(["消防通道被违规占用", "Fire lane blocked"])
    data = docx_rich(["城市体检报告第一段。"], [["指标", "数值"], ["绿地率", "35%"]], picture)
    items = _parse(tmp_path, "r.docx", data, "docx")
    assert _types(items) == ["text", "table", "image", "equation"]
    assert items[1]["table_body"] == "| 指标 | 数值 |\n|---|---|\n| 绿地率 | 35% |"
    image = items[2]
    assert Path(image["img_path"]).is_file() and Path(image["img_path"]).parent == tmp_path / "out" / "r.docx"
    assert (image["width"], image["height"]) == (1000, 400)
    assert "消防通道被违规占用" in image["ocr_text"] and "Fire lane blocked" in image["ocr_text"]
    assert items[3]["text"] == "\\frac{a}{b}+{x}^{2}" and items[3]["text_format"] == "latex"
    text = indexable_text(items)
    assert (
        "绿地率" in text and "Text in the image (OCR): 消防通道被违规占用" in text and "\\frac{a}{b}" in text
    )


def test_pptx_slides_are_pages(tmp_path: Path) -> None:
    picture = text_image(["隐患照片"])
    data = pptx_deck([("预算概览", "第一季度预算"), ("隐患", "消防通道")], [["A", "B"], ["1", "2"]], picture)
    items = _parse(tmp_path, "d.pptx", data, "pptx")
    assert [(i["type"], i["page_idx"]) for i in items] == [
        ("text", 0),
        ("text", 1),
        ("table", 1),
        ("image", 1),
    ]
    assert items[0]["text"] == "预算概览\n第一季度预算"
    assert "隐患照片" in items[3]["ocr_text"]


def test_xlsx_and_csv_become_tables_in_pieces(tmp_path: Path) -> None:
    rows = [["街道", "隐患数"]] + [[f"街道{n}", n] for n in range(120)]
    items = _parse(tmp_path, "b.xlsx", xlsx_book({"数据": rows, "空": []}), "xlsx")
    assert _types(items) == ["table", "table", "table"]
    assert [i["table_caption"] for i in items] == [
        ["Sheet 数据, rows 2-51"],
        ["Sheet 数据, rows 52-101"],
        ["Sheet 数据, rows 102-121"],
    ]
    assert all(i["table_body"].startswith("| 街道 | 隐患数 |") for i in items)
    csv_items = _parse(tmp_path, "c.csv", b"name;count\nalpha;1\nbeta;2\n", "csv")
    assert csv_items[0]["table_body"] == "| name | count |\n|---|---|\n| alpha | 1 |\n| beta | 2 |"


def test_a_huge_sheet_fails_clearly(tmp_path: Path) -> None:
    rows = [[n] * 20 for n in range(200)]
    with pytest.raises(DocumentParseError, match="MAX_TABLE_CELLS"):
        _parse(tmp_path, "h.xlsx", xlsx_book({"big": rows}), "xlsx", ParseLimits(max_table_cells=1000))


def test_forged_sheet_dimensions_cost_nothing(tmp_path: Path) -> None:
    """Catches: openpyxl padding every row to a declared A1:XFD1048576 (17 billion cells)."""
    data = xlsx_book({"s": [["a", "b"], ["1", "2"]]})
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as forged:
        for info in source.infolist():
            body = source.read(info)
            if info.filename.startswith("xl/worksheets/"):
                body = body.replace(b'<dimension ref="A1:B2"/>', b'<dimension ref="A1:XFD1048576"/>')
            forged.writestr(info, body)
    items = _parse(tmp_path, "f.xlsx", out.getvalue(), "xlsx", ParseLimits(max_table_cells=1000))
    assert items[0]["table_body"] == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_photo_with_chinese_text_is_read_by_ocr(tmp_path: Path) -> None:
    items = _parse(tmp_path, "p.jpg", text_image(["消防通道被违规占用", "Exit blocked"], fmt="JPEG"), "image")
    assert _types(items) == ["image"]
    lines = items[0]["ocr_text"].splitlines()
    assert lines[0] == "消防通道被违规占用" and lines[1].startswith("Exit")
    assert Path(items[0]["img_path"]).suffix == ".jpg"


def test_pixel_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buffer, format="PNG")  # ~100 KB, 900 megapixels
    with pytest.raises(DocumentParseError, match="MAX_IMAGE_PIXELS"):
        _parse(tmp_path, "bomb.png", buffer.getvalue(), "image")


def test_unreadable_image_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(DocumentParseError, match="bad.png: not a readable image"):
        _parse(tmp_path, "bad.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image")


def _epub(chapters: list[str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as book:
        book.writestr("mimetype", "application/epub+zip")
        book.writestr(
            "META-INF/container.xml",
            '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
            '<rootfile full-path="OEBPS/book.opf"/></rootfiles></container>',
        )
        manifest = "".join(
            f'<item id="c{n}" href="c{n}.xhtml" media-type="application/xhtml+xml"/>'
            for n in range(len(chapters))
        )
        spine = "".join(f'<itemref idref="c{n}"/>' for n in reversed(range(len(chapters))))
        book.writestr(
            "OEBPS/book.opf",
            f'<package xmlns="http://www.idpf.org/2007/opf"><manifest>{manifest}</manifest><spine>{spine}</spine></package>',
        )
        for n, text in enumerate(chapters):
            book.writestr(f"OEBPS/c{n}.xhtml", f"<html><body><p>{text}</p><script>x()</script></body></html>")
    return out.getvalue()


def test_epub_chapters_in_spine_order(tmp_path: Path) -> None:
    items = _parse(tmp_path, "b.epub", _epub(["第一章 排水", "第二章 消防"]), "epub")
    assert [(i["text"], i["page_idx"]) for i in items] == [("第二章 消防", 0), ("第一章 排水", 1)]


def _bundle(
    items: list[dict], files: dict[str, bytes], json_name: str = "out/doc_content_list.json"
) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bundle:
        bundle.writestr(json_name, json.dumps(items, ensure_ascii=False))
        for name, data in files.items():
            bundle.writestr(name, data)
    return out.getvalue()


def test_content_list_bundle_parsed_elsewhere(tmp_path: Path) -> None:
    picture = text_image(["井盖缺失"])
    content = [
        {"type": "text", "text": "MinerU 解析的正文", "page_idx": 0},
        {"type": "image", "img_path": "images/a.png", "image_caption": ["图1 井盖"], "page_idx": 1},
        {"type": "table", "table_body": "<table><tr><td>1</td></tr></table>", "page_idx": 1},
        {"type": "equation", "text": "E=mc^2", "page_idx": 2},
        {"type": "discarded", "text": "page header"},
    ]
    items = _parse(tmp_path, "mineru.zip", _bundle(content, {"out/images/a.png": picture}), "bundle")
    assert _types(items) == ["text", "image", "table", "equation"]
    assert items[1]["image_caption"] == ["图1 井盖"] and "井盖缺失" in items[1]["ocr_text"]
    assert items[1]["page_idx"] == 1 and Path(items[1]["img_path"]).is_file()


@pytest.mark.parametrize(
    ("content", "files", "json_name", "message"),
    [
        ([{"type": "text", "text": "x"}], {}, "notes.json", "exactly one \\*content_list.json"),
        ([{"type": "image", "img_path": "missing.png"}], {}, "c_content_list.json", "missing.png is not in"),
        (
            [{"type": "image", "img_path": "../../etc/passwd"}],
            {},
            "c_content_list.json",
            "is not in the .zip",
        ),
        ({"type": "text"}, {}, "c_content_list.json", "JSON list"),
        ([{"type": "discarded", "text": "x"}], {}, "c_content_list.json", "no usable items"),
    ],
)
def test_bad_content_list_bundles_fail_clearly(tmp_path, content, files, json_name, message) -> None:
    with pytest.raises(DocumentParseError, match=message):
        _parse(tmp_path, "b.zip", _bundle(content, files, json_name), "bundle")


def test_rtf_and_odt_text(tmp_path: Path) -> None:
    rtf = _parse(tmp_path, "n.rtf", rb"{\rtf1\ansi Inspection of {\b Donghu} street.\par}", "rtf")
    assert rtf[0]["text"] == "Inspection of Donghu street."
    odt = io.BytesIO()
    with zipfile.ZipFile(odt, "w") as doc:
        doc.writestr(
            "content.xml",
            '<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
            'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
            'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"><office:body><office:text>'
            "<text:h>报告</text:h><text:p>正文<text:s/>内容</text:p>"
            "<table:table><table:table-row><table:table-cell><text:p>k</text:p></table:table-cell>"
            "<table:table-cell><text:p>v</text:p></table:table-cell></table:table-row></table:table>"
            "</office:text></office:body></office:document-content>",
        )
    items = _parse(tmp_path, "d.odt", odt.getvalue(), "odt")
    assert [(i["type"], i.get("text") or i.get("table_body")) for i in items] == [
        ("text", "报告"),
        ("text", "正文 内容"),
        ("table", "| k | v |\n|---|---|"),
    ]
