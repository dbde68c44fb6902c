"""Where ``up``'s servers listen: ``--listen HOST:PORT`` and ``--gateway-listen HOST:PORT``.

Parsed here once, so a typo is refused where it was typed (naming the flag and the
bad part) and a port already taken is refused before a server fails on it.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass

from superpose.errors import UserError

LOOPBACK = "127.0.0.1"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
EXAMPLE = "e.g. 0.0.0.0:4222, 10.0.0.5:4222 or [::]:4222"


@dataclass(frozen=True)
class Listen:
    """One listening address; port 0 asks for a free one."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{bracketed(self.host)}:{self.port}"


def bracketed(host: str) -> str:
    """A host as URLs and nats.conf's ``listen`` take it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def local_host(host: str) -> str:
    """How this machine reaches a server listening on ``host``: loopback for a wildcard."""
    return {"0.0.0.0": LOOPBACK, "::": "::1"}.get(host, host)


def parse_listen(text: str, flag: str) -> Listen:
    """``HOST:PORT`` (``[IPv6]:PORT`` for an IPv6 address); a UserError naming ``flag``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise UserError(f"{flag} {text!r}: expected HOST:PORT ({EXAMPLE})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or int(port_text) > 65535:
        raise UserError(f"{flag} {text!r}: the port must be a whole number from 0 to 65535")
    if not _valid_host(host):
        raise UserError(f"{flag} {text!r}: {host!r} is not an IP address or host name ({EXAMPLE})")
    return Listen(host, int(port_text))


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and ":" not in host


def check_free(listen: Listen, flag: str) -> None:
    """Refuse a port already in use on that host, naming the flag to change.

    Port 0 is always free. A race with another process taking it in between is
    still caught, later, by the server's own start-up error.
    """
    if listen.port == 0:
        return
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as exc:
            why = (
                "is in use"
                if exc.errno == errno.EADDRINUSE
                else f"cannot be listened on ({exc.strerror})"
            )
            raise UserError(f"{flag} {listen}: the port {why}; pick another") from exc
