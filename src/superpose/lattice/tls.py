"""The client side of a lattice that requires TLS: which CA to trust, and what a
failed handshake means in words.

The CA a ``tls://`` lattice's certificate is checked against, first found wins:
``connect(tls_ca=...)`` (``--tls-ca``), ``$SUPERPOSE_TLS_CA``, the CA the
``superpose up`` of ``$SUPERPOSE_HOME`` serves this very URL with (its
``lattice.json`` says which), else the system's trust store (a certificate from a
public authority needs nothing more).
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superpose.config import ENV_TLS_CA, ENV_TLS_SERVER_NAME, settings, state_file
from superpose.errors import LatticeError, UserError

TLS_DIR = "tls"
"""In a home folder: what ``up --tls`` made (``local/tls.py``)."""
CA_FILE = "ca.pem"
"""The CA certificate clients trust; the one file of ``tls/`` to copy to other machines."""
TLS_SCHEMES = ("tls", "wss")
SYSTEM_STORE = "the system's trust store"


@dataclass(frozen=True)
class Trust:
    """How one lattice URL's certificate is checked."""

    url: str
    context: ssl.SSLContext | None
    """None: a plain URL with no CA asked for; nats-py still upgrades to TLS (with the
    system's trust store) if the server requires it."""
    source: str
    """Where the CA came from, for error messages."""

    def options(self) -> dict[str, Any]:
        """The keyword arguments nats-py's ``connect`` takes for it."""
        found: dict[str, Any] = {"tls": self.context} if self.context is not None else {}
        if server_name := os.environ.get(ENV_TLS_SERVER_NAME):  # relayed (sandbox)
            found["tls_hostname"] = server_name
        return found

    @property
    def required(self) -> bool:
        """True when the URL itself asks for TLS (``tls://`` or ``wss://``)."""
        return wants_tls(self.url)


def wants_tls(url: str) -> bool:
    """True when any server of the lattice URL is ``tls://`` or ``wss://``."""
    return any(server.split("://", 1)[0] in TLS_SCHEMES for server in url.split(","))


def trust_for(url: str, tls_ca: str | Path | None = None) -> Trust:
    """The trust for ``url``: see the module's docstring for the order."""
    ca, source = _ca_file(url, tls_ca)
    if ca is None and not wants_tls(url):
        return Trust(url, None, SYSTEM_STORE)
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except ssl.SSLError as exc:
        raise UserError(f"{source}: not a PEM CA certificate ({exc.reason or exc})") from exc
    return Trust(url, context, source)


def _ca_file(url: str, explicit: str | Path | None) -> tuple[Path | None, str]:
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"TLS CA {explicit}: no such file")
        return path, f"the CA in {path}"
    found = settings()
    if found.tls_ca is not None:
        return found.tls_ca, f"the CA in {found.tls_ca} (${ENV_TLS_CA})"
    home_ca = _home_ca(found.home, url)
    if home_ca is not None:
        return home_ca, f"the CA in {home_ca} (made by `superpose up`)"
    return None, SYSTEM_STORE


def _home_ca(home: Path, url: str) -> Path | None:
    """The CA of the lattice ``up`` runs from ``home``, if ``url`` is that lattice."""
    try:
        state = json.loads(state_file(home).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("lattice") != url:
        return None
    named = state.get("tls_ca") or home / TLS_DIR / CA_FILE
    path = Path(named)
    return path if path.is_file() else None


def refusal(trust: Trust, exc: BaseException) -> str | None:
    """What a failed first connection means, when trying again cannot help; else None.

    nats-py upgrades even a ``nats://`` connection to TLS when the server requires
    it, with the system's trust store: so a plain URL whose handshake fails is a
    lattice that requires TLS, and a ``tls://`` one a certificate not trusted.
    """
    if not isinstance(exc, ssl.SSLError):
        return None
    why = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else exc.reason
    why = why or str(exc)
    if trust.context is None:
        return (
            f"the lattice at {trust.url} requires TLS, and its certificate is not trusted "
            f"by {SYSTEM_STORE} ({why}): connect with a tls:// URL and its CA (--tls-ca FILE, "
            f"${ENV_TLS_CA}, or tls_ca= in superpose.connect); `superpose up --tls` keeps it "
            f"as {TLS_DIR}/{CA_FILE} in its state folder"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of the lattice at {trust.url} was refused: {why} "
            f"(checked against {trust.source}); give the CA that signed the lattice's "
            f"certificate (--tls-ca FILE or ${ENV_TLS_CA})"
        )
    return f"the TLS handshake with the lattice at {trust.url} failed: {why}"


def check_encrypted(trust: Trust, server_info: dict[str, Any]) -> None:
    """Refuse a plaintext connection made to a ``tls://`` URL.

    nats-py asks for TLS only when the server requires it: given ``tls://`` and a
    server without TLS it would talk in plaintext, which the URL ruled out.
    """
    if trust.required and not server_info.get("tls_required"):
        raise LatticeError(
            f"the lattice at {trust.url} does not use TLS, though the URL asks for it: "
            "refused rather than sending in plaintext (use nats:// if that was meant)"
        )
