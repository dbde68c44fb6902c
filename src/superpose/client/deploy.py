"""``superpose deploy``: a folder or file becomes a registered, content-addressed version."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from superpose import protocol
from superpose.client.client import Client
from superpose.code import bundle as bundles
from superpose.code import store
from superpose.code.asgi_entry import entry_spec
from superpose.code.discover import FunctionSpec, discover
from superpose.errors import BadRequestError, DeployError
from superpose.protocol import Version
from superpose.registry.mirror import LATEST

RESERVED_HTTP_APPS = frozenset({"v1"})
"""Paths the gateway answers itself, so no HTTP app can be served there."""


@dataclass
class Deployed:
    app: str
    version: str
    functions: list[str]
    files: int
    uploaded: int
    size: int
    asgi: str | None = None
    """The ASGI entry (``main:app``) served at ``/<app>/`` by the gateway, if any."""


def app_name_for(path: Path, name: str | None) -> str:
    app = name or (path.stem if path.is_file() else path.name)
    app = app.replace("-", "_") if name is None else app
    if not protocol.is_valid_name(app):
        raise BadRequestError(
            f"app name {app!r} is not allowed: use letters, digits, _ and - (pass --name)"
        )
    return app


def build(path: Path) -> bundles.Bundle:
    if not path.exists():
        raise DeployError(f"{path} does not exist")
    if path.is_file():
        if path.suffix != ".py":
            raise DeployError(f"{path} is not a Python file or a folder")
        return bundles.from_files(path.parent, [path])
    return bundles.from_folder(path)


async def deploy(
    client: Client, path: Path, name: str | None = None, *, asgi: str | None = None
) -> Deployed:
    """Bundle, check, upload (only missing files), register, and move ``latest``.

    ``asgi`` (``MODULE:ATTR``) also serves that ASGI app over HTTP; it must import.
    """
    path = path.resolve()
    app = app_name_for(path, name)
    bundle = build(path)
    functions = discover(bundle)
    if asgi is not None:
        functions[protocol.HTTP_FUNCTION] = await _http_entry(bundle, asgi, functions, app)
    if not functions:
        raise DeployError(
            f"no @superpose.function found in {path}: decorate the top-level functions to expose "
            "(or serve an ASGI app with --asgi MODULE:ATTR)"
        )
    digest, uploaded = await store.upload(client.nc, bundle)
    version = Version(
        app=app,
        digest=digest,
        created=time.time(),
        size=bundle.size,
        files=bundle.listing,
        functions={name: spec.as_dict() for name, spec in functions.items()},
        kind="functions" if asgi is None else "asgi",
    )
    registry = await client.registry()
    await registry.register(version)
    await registry.set_alias(app, LATEST, digest)
    return Deployed(app, digest, sorted(functions), len(bundle.files), uploaded, bundle.size, asgi)


async def _http_entry(
    bundle: bundles.Bundle, asgi: str, functions: dict[str, FunctionSpec], app: str
) -> FunctionSpec:
    """The ASGI entry as the reserved HTTP function, once it is known to import."""
    if app in RESERVED_HTTP_APPS:
        raise BadRequestError(
            f"an HTTP app cannot be named {app!r}: the gateway serves its own API at /{app}/ "
            "(pass --name)"
        )
    taken = functions.get(protocol.HTTP_FUNCTION)
    if taken is not None:
        raise DeployError(
            f"{taken.file}:{taken.line}: a function named {protocol.HTTP_FUNCTION!r} collides "
            "with the name --asgi registers the app under; rename the function"
        )
    return await entry_spec(bundle, asgi)
