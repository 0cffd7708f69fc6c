"""Document parsing: every format becomes RAG-Anything's content list.

A content list is MinerU's format, the one RAG-Anything's ``insert_content_list`` takes:
``text`` blocks, ``image`` items (``img_path``, caption, footnote, ``page_idx``), ``table`` items
(Markdown ``table_body``, caption) and ``equation`` items. Rich formats are parsed in a child process
per document (``isolated.run_isolated`` → ``worker.py``) under memory, time and size bounds, one
module per format; OCR (``ocr.py``) reads pages without a text layer and pictures, offline.
``formats.py`` is what an upload may be (extensions, magic bytes); it imports nothing heavy so the
upload path can use it.
"""
