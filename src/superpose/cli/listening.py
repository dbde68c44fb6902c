"""``up``'s options for where the lattice listens and how it is encrypted:
``--listen``, ``--gateway-listen`` and the ``--tls`` family.

Kept apart from ``cli/lattice.py``: they are parsed into a ``Listen`` and a
``ServerTls`` (``local/listen.py``, ``local/tls.py``) before anything starts, and
handed again, as they were typed, to the detached ``up``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from superpose import config
from superpose.errors import UserError
from superpose.local import tls
from superpose.local.listen import LOOPBACK, Listen, parse_listen


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where nats-server listens (default 127.0.0.1 and a free port; "
        "0.0.0.0:4222 for other machines; port 0: a free one)",
    )
    p.add_argument(
        "--gateway-listen",
        metavar="HOST:PORT",
        help="where the HTTP gateway listens (default 127.0.0.1 and --gateway-port)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="require TLS, with a CA and certificate made once in $SUPERPOSE_HOME/tls/",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="require TLS with your own certificate")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert")
    p.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="the CA that signed --tls-cert, handed to the lattice's own processes",
    )
    p.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP for the --tls certificate (repeatable)",
    )


def argv(ns: argparse.Namespace) -> list[str]:
    """The options as typed, for the foreground ``up`` that ``--detach`` starts."""
    out: list[str] = []
    for flag in ("listen", "gateway_listen", "tls_cert", "tls_key", "tls_ca"):
        value = getattr(ns, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", value]
    out += [arg for name in ns.tls_name for arg in ("--tls-name", name)]
    return out + (["--tls"] if ns.tls else [])


def lattice_listen(ns: argparse.Namespace) -> Listen:
    """``--listen``, else 127.0.0.1 at ``--lattice-port`` (-1: a free port)."""
    if ns.listen is None:
        return Listen(LOOPBACK, ns.lattice_port if ns.lattice_port is not None else -1)
    if ns.lattice_port is not None:
        raise UserError("give the port once: --listen HOST:PORT or --lattice-port, not both")
    return parse_listen(ns.listen, "--listen")


def gateway_listen(ns: argparse.Namespace) -> Listen:
    """``--gateway-listen``, else 127.0.0.1 at ``--gateway-port``."""
    if ns.gateway_listen is None:
        return Listen(LOOPBACK, ns.gateway_port)
    if ns.gateway_port != config.DEFAULT_GATEWAY_PORT:
        raise UserError("give the gateway's port once: --gateway-listen or --gateway-port")
    return parse_listen(ns.gateway_listen, "--gateway-listen")


def server_tls(ns: argparse.Namespace, home: Path, listen: Listen) -> tls.ServerTls | None:
    """None without TLS; the generated or the user's certificate otherwise."""
    own = ns.tls_cert is not None or ns.tls_key is not None
    if ns.tls and own:
        raise UserError("--tls makes a certificate; --tls-cert/--tls-key bring one: pick one")
    if own:
        if ns.tls_cert is None or ns.tls_key is None:
            raise UserError("--tls-cert and --tls-key go together: a certificate and its key")
        ca = Path(ns.tls_ca) if ns.tls_ca else None
        return tls.own(Path(ns.tls_cert), Path(ns.tls_key), ca)
    if ns.tls_ca is not None or ns.tls_name:
        raise UserError("--tls-ca and --tls-name only go with --tls or --tls-cert/--tls-key")
    if not ns.tls:
        return None
    return tls.generated(home, [listen.host, *ns.tls_name])
