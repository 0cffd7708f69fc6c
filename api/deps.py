"""FastAPI dependencies: access to the long-lived services built at start-up."""

from __future__ import annotations

from fastapi import Request

from src.service import Services


def get_services(request: Request) -> Services:
    return request.app.state.services
