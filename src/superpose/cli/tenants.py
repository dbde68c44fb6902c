"""``superpose tenant create|ls``, and ``--tenant NAME`` on every command that connects.

A tenant is a NATS account of its own (``security/tenants.py``). ``create`` runs
where ``superpose up`` runs (it needs the state folder's operator key); if that
lattice is running, its supervisor is told to reload the servers' accounts
(``ACCOUNTS_SIGNAL``) and ``create`` returns once the tenant can connect.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from superpose import config
from superpose.cli import common
from superpose.errors import LatticeError, UserError
from superpose.local.state import read_state
from superpose.security import tenants

ACCOUNTS_SIGNAL = signal.SIGUSR1
"""What ``tenant create`` sends the running ``up``: reload the servers' accounts."""
APPLIED_TIMEOUT_S = 15.0
ROLE_OF_COMMAND = {"worker": "node", "gateway": "gateway"}
"""Which of a tenant's users a command connects as; every other command is ``admin``."""


def use_tenant(ns: argparse.Namespace) -> None:
    """``--tenant NAME`` (else ``$SUPERPOSE_TENANT``, unless ``--creds`` is given): this
    command, and every process it starts, connects with that tenant's creds from the
    home folder, through ``$SUPERPOSE_CREDS``; the variable ``$SUPERPOSE_TENANT`` is
    dropped then, so a node's executors use the node's creds and nothing else."""
    flag, creds = getattr(ns, "tenant", None), getattr(ns, "creds", None)
    if flag and creds:
        raise UserError(f"give --tenant or --creds, not both (--tenant {flag}, --creds {creds})")
    name = flag or (None if creds else config.settings().tenant)
    if name is None or not hasattr(ns, "lattice"):  # none, or a command that does not connect
        return
    role = ROLE_OF_COMMAND.get(ns.command, "admin")
    path = tenants.role_creds(tenants.load(config.settings().home, name), role)
    os.environ[config.ENV_CREDS] = str(path)
    os.environ.pop(config.ENV_TENANT, None)


def cmd_tenant_create(ns: argparse.Namespace) -> int:
    home = config.settings().home
    tenant = tenants.create(home, ns.name)
    print(f"tenant {tenant.name} created (account {tenant.account})")
    print(f"creds    {tenant.creds_dir}/{{admin,node,gateway}}.creds")
    state = reload_running(home)
    if state is None:
        print(f"no lattice is running in {home}: `superpose up` will accept it")
        return 0
    made = "the tenant was made"
    creds, tls_ca = tenant.creds("admin"), state.get("tls_ca")
    asyncio.run(wait_accepted(str(state["lattice"]), made, creds=creds, tls_ca=tls_ca))
    print(f"the lattice {state['lattice']} accepts it now (no restart, no dropped connection)")
    return 0


def reload_running(home: Path) -> dict[str, Any] | None:
    """Tell the ``up`` running in ``home`` to reload its servers' accounts (tenants and
    revocations, ``LocalLattice.reload_accounts``); its state, or None if none is
    running (the next ``up`` reads them anyway)."""
    state = read_state(home)
    if not (state and state.get("ready")):
        return None
    os.kill(int(state["pid"]), ACCOUNTS_SIGNAL)
    return state


async def wait_accepted(
    url: str,
    made: str,
    *,
    creds: Path | None = None,
    creds_text: str | None = None,
    tls_ca: str | None = None,
) -> None:
    """Until a connection with ``creds`` (or ``creds_text``) is accepted: the servers
    reloaded their accounts (``reload_running``). ``made`` says what was made, for the
    error if they never do."""
    from superpose.lattice.connection import connect

    deadline = time.monotonic() + APPLIED_TIMEOUT_S
    while True:
        try:
            nc = await connect(
                url,
                name="superpose-reload-check",
                creds=creds,
                creds_text=creds_text,
                tls_ca=tls_ca,
            )
        except LatticeError as exc:
            if time.monotonic() > deadline:
                raise LatticeError(
                    f"{made}, but the lattice at {url} did not accept it within "
                    f"{APPLIED_TIMEOUT_S:.0f} s ({exc.message}); restart it with "
                    "`superpose down` and `superpose up`, which reads it from the state folder"
                ) from exc
            await asyncio.sleep(0.1)
            continue
        await nc.close()
        return


def cmd_tenant_ls(ns: argparse.Namespace) -> int:
    home = config.settings().home
    found = [tenants.load(home, name) for name in tenants.names(home)]
    if not found:
        print(f"no tenants in {home} (make one with `superpose tenant create NAME`)")
        return 0
    for tenant in found:
        print(f"{tenant.name:<32}  {tenant.account}  {tenant.creds_dir}")
    return 0


def add_commands(add: common.AddCommand) -> None:
    parent = add(
        "tenant",
        cmd_tenant_ls,
        "create and list tenants: a NATS account each, isolated from the others",
        lattice=False,
    )
    actions = parent.add_subparsers(dest="action", required=True, metavar="create|ls")
    p = actions.add_parser("create", help="make a tenant (its account and its creds)")
    p.set_defaults(func=cmd_tenant_create)
    p.add_argument("name", metavar="NAME", help="lowercase letters, digits, _ and -")
    p = actions.add_parser("ls", help="list the tenants of this state folder")
    p.set_defaults(func=cmd_tenant_ls)


def add_tenant_option(p: argparse.ArgumentParser) -> None:
    """``--tenant NAME`` on a command that connects to the lattice."""
    p.add_argument(
        "--tenant",
        metavar="NAME",
        help=f"connect as this tenant, with its creds in the home folder (or {config.ENV_TENANT})",
    )
