"""What the gateway allows a client: connections held at once, and how long one may
take to send its request.

Kept apart from the server that enforces them so the CLI can build and check them
without importing uvicorn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from superpose import config
from superpose.errors import UserError


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The gateway's limits on its clients, checked when made."""

    max_connections: int = config.GATEWAY_MAX_CONNECTIONS
    """Connections open at once (``--max-connections``)."""
    header_timeout_s: float = config.GATEWAY_HEADER_TIMEOUT_S
    """From a connection's start (or its previous answer) to the end of the request's
    headers (``--header-timeout``); a slowloris client is cut off after it."""
    body_timeout_s: float = config.GATEWAY_BODY_TIMEOUT_S
    """From the end of the headers to the end of the body (``--body-timeout``): a
    total, so a byte a second does not keep a request alive."""

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise UserError(f"--max-connections must be at least 1, got {self.max_connections}")
        for flag, seconds in (
            ("--header-timeout", self.header_timeout_s),
            ("--body-timeout", self.body_timeout_s),
        ):
            if not (seconds > 0 and math.isfinite(seconds)):
                raise UserError(f"{flag} must be a number of seconds above 0, got {seconds}")
