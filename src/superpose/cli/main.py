"""The ``superpose`` command: one parser, and one place that turns errors into exit statuses.

The commands live in one module per group (``lattice``, ``apps``, ``calls``, ``routing``,
``schedules``, ``envs``, ``secrets``, ``tokens``); the cli package is the only one that prints or
exits, library code raises.
"""

from __future__ import annotations

import argparse
import os
import sys

from superpose import config
from superpose.cli import (
    apps,
    cache,
    calls,
    common,
    creds,
    envs,
    keys,
    lattice,
    objects,
    routing,
    schedules,
    secrets,
    tenants,
    tokens,
)
from superpose.errors import RemoteError, SuperposeError

HELP_ORDER = (
    *("up", "down", "worker", "gateway", "deploy", "call", "result", "failed", "replay"),
    *("cancel", "ls", "versions", "alias", "promote", "rollback", "schedules", "status"),
    *("logs", "secret", "token", "key", "tenant", "creds"),
)
"""Commands in the order ``superpose --help`` lists them: the order users already know,
from starting a lattice to reading logs, which is not the order of the modules.
Commands not named here (the routing ones) follow, in the order they were added."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="superpose", description="Run plain Python functions on a lattice of generic nodes."
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the installed version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, fn: common.Command, help_text: str, lattice: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        if lattice:
            p.add_argument("--lattice", help=f"NATS URL of the lattice (or {config.ENV_LATTICE})")
            p.add_argument(
                "--creds",
                metavar="FILE",
                help=f"NATS credentials file to connect with (or {config.ENV_CREDS})",
            )
            tenants.add_tenant_option(p)
        return p

    lattice.add_commands(add)
    apps.add_commands(add)
    calls.add_commands(add)
    routing.add_commands(add)
    schedules.add_commands(add)
    envs.add_commands(add)
    secrets.add_commands(add)
    tokens.add_commands(add)
    keys.add_commands(add)
    tenants.add_commands(add)
    creds.add_commands(add)
    objects.add_commands(add)
    cache.add_commands(add)
    _in_help_order(sub)
    return parser


class _Version(argparse.Action):
    """``--version``: the package metadata is read only when asked for, so every other
    command starts without it."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"superpose {installed_version()}")
        parser.exit()


def installed_version() -> str:
    """The version pip installed; a source tree never installed has none to tell."""
    from importlib import metadata

    try:
        return metadata.version("superpose")
    except metadata.PackageNotFoundError:
        return "(version unknown: not installed as a package)"


def _in_help_order(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Reorder the commands to ``HELP_ORDER`` (argparse lists them in the order added)."""

    def rank(name: str) -> int:
        return HELP_ORDER.index(name) if name in HELP_ORDER else len(HELP_ORDER)

    parsers = sorted(sub.choices.items(), key=lambda item: rank(item[0]))
    sub.choices.clear()
    sub.choices.update(parsers)
    sub._choices_actions.sort(key=lambda action: rank(action.dest))


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        tenants.use_tenant(ns)
        common.use_creds(getattr(ns, "creds", None))
        code: int = ns.func(ns)
    except RemoteError as exc:
        if exc.traceback:
            where = f" (node {exc.node})" if exc.node else ""
            common.err(f"{exc.traceback_label}{where}:\n{exc.traceback.rstrip()}")
        common.err(f"error: {exc.kind}: {exc.type}: {exc.remote_message}")
        return 1
    except SuperposeError as exc:
        common.err(f"error: {exc.message}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `superpose logs APP | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
