"""What every command shares: finding the lattice, a client for one command, argument types."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from superpose import config, protocol
from superpose.errors import BadRequestError, UserError
from superpose.local import state

if TYPE_CHECKING:  # the client (and nats-py) is imported by the commands that use it
    from superpose.client.client import Client

Command = Callable[[argparse.Namespace], int]
"""A command's body: the parsed arguments in, the exit status out."""


class AddCommand(Protocol):
    """How a group module adds a command: ``cli.main`` owns the subparsers and the
    ``--lattice`` option every command that talks to a lattice shares."""

    def __call__(
        self, name: str, fn: Command, help_text: str, lattice: bool = True
    ) -> argparse.ArgumentParser: ...


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def lattice_url(explicit: str | None) -> str:
    """``--lattice``, else ``$SUPERPOSE_LATTICE``, else the lattice ``up`` started here;
    checked, so a malformed URL is one ``error:`` line naming it."""
    found = config.settings()
    url = explicit or found.lattice or state.find_running_lattice(found.home)
    if not url:
        raise UserError(
            f"no lattice is running in {found.home}: start one with `superpose up --detach`, "
            f"or point at one with --lattice or {config.ENV_LATTICE}"
        )
    config.lattice_servers(url)
    return url


def use_creds(path: str | None) -> None:
    """``--creds FILE``: this command and the processes it starts connect with it (it
    becomes ``$SUPERPOSE_CREDS``, which a node's executors inherit)."""
    if path is None:
        return
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise UserError(f"--creds {path}: no such readable file")
    os.environ[config.ENV_CREDS] = os.path.abspath(path)


async def with_client(
    url: str | None, body: Callable[[Client], Awaitable[int]], key: str | None = None
) -> int:
    """``body`` with a client; ``key``: the deployer key file its writes sign with."""
    from superpose.client.client import Client

    client = await Client.open(lattice_url(url), key=Path(key) if key else None)
    try:
        return await body(client)
    finally:
        await client.aclose()


def parse_labels(text: str | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (text or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise BadRequestError(
                f"label {item!r} is not KEY=VALUE (e.g. --labels region=eu,gpu=1)"
            )
        labels[key.strip()] = value.strip()
    return labels


def app_arg(text: str) -> str:
    if not protocol.is_valid_name(text):
        raise BadRequestError(f"{text!r} is not an app name (letters, digits, _ and -)")
    return text


def short(digest: str | None) -> str:
    return digest[:12] if digest else "(none)"


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def port(text: str) -> int:
    """argparse type: a TCP port (0 picks a free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def count(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def parse_json_args(args_text: str | None, kwargs_text: str | None) -> bytes:
    """CLI arguments (a JSON array and a JSON object) as a JSON call body."""
    try:
        args = json.loads(args_text) if args_text else []
        kwargs = json.loads(kwargs_text) if kwargs_text else {}
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"arguments are not valid JSON: {exc}") from exc
    if not isinstance(args, list):
        raise BadRequestError("positional arguments must be a JSON array, e.g. '[1, 2]'")
    if not isinstance(kwargs, dict):
        raise BadRequestError("keyword arguments must be a JSON object, e.g. '{\"x\": 1}'")
    return json.dumps({"args": args, "kwargs": kwargs}).encode()


def print_untrusted(app: str, records: list[dict[str, Any]]) -> None:
    """Records of ``app`` no trusted key signed: each is named with who signed it."""
    for record in records:
        kept = short(record["following"]) if record["following"] else "nothing"
        print(
            f"  UNTRUSTED {app} {record['record']} → {short(record['names'])}: "
            f"{record['reason']}; not followed (still {kept})"
            if record["record"] != "version"
            else f"  UNTRUSTED {app} version {short(record['names'])}: {record['reason']}"
        )
