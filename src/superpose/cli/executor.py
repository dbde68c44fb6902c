"""The executor process: ``python -m superpose.cli.executor --fd N --lattice URL --node ID``
(and ``--sandboxed`` when the agent started it as a user of its own).

An executor is node-side machinery (``node/executor``) that hosts user code, and
user code calls other functions through the caller's side (``client``). Those two
layers may not import each other, so the process is composed here, above both:
the executor is handed the opener of the client its user code calls through.
Node agents start it by module name (``node/executor_process.EXECUTOR_ENTRY``).
"""

from __future__ import annotations

import argparse
import os

from superpose import config
from superpose.client.client import open_node_client
from superpose.node.executor import relay
from superpose.node.executor.confine import confine
from superpose.node.executor.main import serve_forever
from superpose.security.executor_identity import ExecutorCreds


def serve(fd: int, lattice: str, node_id: str, creds: ExecutorCreds | None = None) -> None:
    """Be an executor on the agent's socket ``fd``; never returns (also run by a child
    the node forked, before its event loop started). ``creds``: its own NATS user's."""
    serve_forever(fd, lattice, node_id, open_node_client, creds)


def main() -> None:
    parser = argparse.ArgumentParser(prog="superpose-executor")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--lattice", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--sandboxed", action="store_true")
    parser.add_argument("--id", default=None, help="the name of its own NATS user")
    parser.add_argument(
        "--lattice-socket", default=None, help="reach the lattice through this unix socket"
    )
    ns = parser.parse_args()
    if ns.sandboxed:  # before any user code: limits it cannot raise again
        confine()
    lattice = ns.lattice
    if ns.lattice_socket:  # a network namespace of its own (bwrap): the relay is the way out
        lattice, server_name = relay.relayed_url(lattice, relay.start(ns.lattice_socket))
        os.environ[config.ENV_TLS_SERVER_NAME] = server_name
    creds = config.settings().creds  # the node puts its own user's creds file there
    own = ExecutorCreds(ns.id, creds) if ns.id and creds is not None else None
    serve(ns.fd, lattice, ns.node, own)


if __name__ == "__main__":
    main()
