"""Signed session tokens for LightRAG's WebUI: what its login and guest access hand out.

The WebUI keeps a bearer token (a JWT: it reads ``sub``, ``role`` and ``exp`` from the payload) and
sends it on every request. We issue one when an API key is presented at ``/lightrag/login`` (the
password field; the token names the key's tenant, never the key) and, while the service is open
(no API key exists), a guest token from ``/lightrag/auth-status``. HS256 with TOKEN_SECRET (LightRAG
Server's name), or a random secret kept in DATA_DIR/token_secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

GUEST = "guest"
USER = "user"


@dataclass(frozen=True)
class Session:
    tenant: str
    role: str
    subject: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionTokens:
    def __init__(self, secret: str, ttl_seconds: float) -> None:
        self._key = secret.encode()
        self.ttl_seconds = ttl_seconds

    def issue(self, tenant: str, role: str, subject: str) -> str:
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        claims = {
            "sub": subject,
            "role": role,
            "tenant": tenant,
            "exp": int(time.time() + self.ttl_seconds),
            "metadata": {"auth_mode": "disabled" if role == GUEST else "enabled"},
        }
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def verify(self, token: str) -> Session | None:
        """The session a token carries, or None (not ours, forged, malformed or expired)."""
        parts = token.split(".")
        if len(parts) != 3 or len(token) > 4096:
            return None
        header, payload, signature = parts
        expected = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(signature), expected):
                return None
            claims = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            return None
        if not isinstance(claims, dict) or float(claims.get("exp") or 0) < time.time():
            return None
        tenant, role = claims.get("tenant"), claims.get("role")
        if not isinstance(tenant, str) or role not in (GUEST, USER):
            return None
        return Session(tenant, role, str(claims.get("sub") or tenant))


def load_or_create_token_secret(configured: str | None, data_dir: Path) -> str:
    """TOKEN_SECRET, or a random one kept in DATA_DIR/token_secret (so tokens survive a restart)."""
    if configured:
        return configured
    path = data_dir / "token_secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    path.write_text(secret)
    path.chmod(0o600)
    return secret
