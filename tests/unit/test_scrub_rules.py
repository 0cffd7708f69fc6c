"""The text filters of the service's errors and logs on their own: paths out of error texts, secrets
out of URLs in access logs (in a real server: tests/test_hardening_access.py)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_scrub_and_redact_rules() -> None:
    """The two text filters on their own: paths out of error texts, secrets out of URLs in logs."""
    from src.core.logs import redact_secrets
    from src.core.scrub import scrub_paths

    text = "Error 2 connecting to unix socket: /srv/data/redis/redis.sock. No such file or directory."
    assert "/srv" not in scrub_paths(text) and "redis.sock" not in scrub_paths(text)
    assert scrub_paths("unix:///var/run/r.sock down") == "unix://<server path> down"
    known = {"/srv/data/uploads/ab12.docx": "report.docx", "ab12.docx": "report.docx"}
    assert scrub_paths("Package not found at '/srv/data/uploads/ab12.docx'", known) == (
        "Package not found at 'report.docx'"
    )
    kept = "GET /health and http://example.com/a/b stay"
    assert scrub_paths(kept) == kept
    line = "GET /events?limit=5&access_token=rsk_abc_def&token=t0k&x=1 HTTP/1.1"
    assert redact_secrets(line) == "GET /events?limit=5&access_token=[redacted]&token=[redacted]&x=1 HTTP/1.1"
