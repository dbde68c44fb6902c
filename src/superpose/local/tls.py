"""The lattice server's TLS: certificates ``up --tls`` makes, or the user's own.

``up --tls`` makes a private certificate authority once, in ``<home>/tls/``, and a
server certificate it signs for every name the server is reached by (the listen
host, this machine's names and addresses, localhost, and ``--tls-name``). Both are
kept: a restart reuses them, so clients that were given ``ca.pem`` keep trusting the
lattice. The server certificate alone is made again when it no longer names every
host asked for, or nears its end. ``cryptography`` is imported only on that path.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from superpose.errors import UserError
from superpose.lattice.tls import CA_FILE, TLS_DIR
from superpose.security.files import PRIVATE_FILE_MODE, write_whole

PUBLIC_FILE_MODE = 0o644
"""Certificates: anyone who connects may read them."""

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_KEY_FILE = "ca-key.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"
CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 825
"""The longest lifetime browsers and Apple's TLS stack accept for a server certificate."""
RENEW_BEFORE_DAYS = 30
HANDSHAKE_TIMEOUT_S = 5
"""nats-server's TLS handshake timeout (its default, 0.5 s, is short for a loaded WAN)."""


@dataclass(frozen=True)
class ServerTls:
    """What nats-server needs to require TLS, and what its clients should trust."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None
    """The CA that signed ``cert_file``; None: it chains to the system's trust store."""

    def config_text(self) -> str:
        """The ``tls`` block of nats.conf. No client certificates (``verify``): clients
        authenticate with credentials, and TLS keeps the wire private and the server
        proven."""
        return (
            "tls {\n"
            f'  cert_file: "{self.cert_file}"\n'
            f'  key_file: "{self.key_file}"\n'
            f"  timeout: {HANDSHAKE_TIMEOUT_S}\n"
            "}\n"
        )


def own(cert: Path, key: Path, ca: Path | None) -> ServerTls:
    """The user's certificate and key (``--tls-cert``, ``--tls-key``, ``--tls-ca``),
    checked now: a pair that does not load would only fail inside nats-server."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if path is not None and not path.is_file():
            raise UserError(f"{flag} {path}: no such file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise UserError(
            f"--tls-cert {cert} with --tls-key {key}: not a PEM certificate and its "
            f"private key ({exc.reason or exc})"
        ) from exc
    if ca is not None:
        try:
            ssl.create_default_context(cafile=str(ca))
        except ssl.SSLError as exc:
            raise UserError(f"--tls-ca {ca}: not a PEM certificate ({exc.reason or exc})") from exc
    return ServerTls(cert.resolve(), key.resolve(), ca.resolve() if ca else None)


def generated(home: Path, hosts: Iterable[str]) -> ServerTls:
    """The CA and server certificate in ``<home>/tls/``, made or renewed as needed."""
    folder = home / TLS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    names = server_names(hosts)
    ca_cert, ca_key = _certificate_authority(folder)
    if not _server_still_good(folder / SERVER_CERT_FILE, ca_cert, names):
        key = _new_key()
        cert = _sign(_subject("superpose lattice"), key, ca_cert.subject, ca_key, names)
        write_whole(folder / SERVER_KEY_FILE, _key_pem(key), PRIVATE_FILE_MODE)
        write_whole(folder / SERVER_CERT_FILE, _cert_pem(cert), PUBLIC_FILE_MODE)
    return ServerTls(folder / SERVER_CERT_FILE, folder / SERVER_KEY_FILE, folder / CA_FILE)


def server_names(hosts: Iterable[str]) -> list[str]:
    """Every name the server certificate should hold: those asked for, localhost and
    loopback, and this machine's host names and their addresses. A wildcard listen
    host (0.0.0.0, ::) is a bind address, not a name, and is left out."""
    names = ["localhost", "127.0.0.1", "::1", *hosts]
    for name in {socket.gethostname(), socket.getfqdn()}:
        names.append(name)
        try:
            names += [str(info[4][0]) for info in socket.getaddrinfo(name, None)]
        except OSError:
            continue
    wanted = [n for n in dict.fromkeys(names) if n and n not in ("0.0.0.0", "::")]
    return [n.split("%", 1)[0] for n in wanted]


def _certificate_authority(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_path, key_path = folder / CA_FILE, folder / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UserError(
                f"{key_path}: not the key `up --tls` made; remove {folder} to start over"
            )
        return cert, key
    key = _new_key()
    # A name of its own: a client given another lattice's CA is told the issuer is
    # unknown, not that a signature by a namesake failed.
    subject = _subject(f"superpose lattice CA {socket.gethostname()} {secrets.token_hex(4)}")
    cert = _sign(subject, key, subject, key, names=None)
    write_whole(key_path, _key_pem(key), PRIVATE_FILE_MODE)
    write_whole(cert_path, _cert_pem(cert), PUBLIC_FILE_MODE)
    return cert, key


def _server_still_good(path: Path, ca: x509.Certificate, names: list[str]) -> bool:
    """True if the server certificate exists, was signed by ``ca``, names every one
    of ``names`` and is valid for RENEW_BEFORE_DAYS more."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    if not path.exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    renew_at = cert.not_valid_after_utc - datetime.timedelta(days=RENEW_BEFORE_DAYS)
    if datetime.datetime.now(datetime.UTC) > renew_at:
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    held = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    held |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return all(str(_ip_or_none(n) or n) in held for n in names)


def _sign(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    names: list[str] | None,
) -> x509.Certificate:
    """A CA certificate (``names`` None) or a server certificate for ``names``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.UTC)
    days = CA_VALID_DAYS if names is None else SERVER_VALID_DAYS
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=names is None, path_length=None), critical=True)
    )
    if names is None:
        usage = _key_usage(cert_sign=True)
    else:
        usage = _key_usage(cert_sign=False)
        alt = [_alt_name(n) for n in names]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.add_extension(usage, critical=True).sign(issuer_key, hashes.SHA256())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_name(name: str) -> x509.GeneralName:
    from cryptography import x509

    ip = _ip_or_none(name)
    return x509.IPAddress(ip) if ip is not None else x509.DNSName(name)


def _ip_or_none(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _subject(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> ec.EllipticCurvePrivateKey:
    """ECDSA P-256: what every TLS stack (Go's in nats-server, OpenSSL) accepts."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)
