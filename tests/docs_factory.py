"""Test documents now live in tests/helpers.py; kept for modules that import them from here."""

from tests.helpers import make_docx, make_pdf, story

__all__ = ["make_docx", "make_pdf", "story"]
