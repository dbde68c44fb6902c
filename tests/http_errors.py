"""The gateway's one error body, read the same way by every HTTP test."""

from __future__ import annotations

import httpx


def error_of(response: httpx.Response) -> dict[str, str]:
    """``{"error": {"type", "message", ...}}``, checked to be exactly that shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, str] = body["error"]
    assert error["type"] and error["message"]
    return error
