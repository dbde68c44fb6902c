"""``superpose deploy``: a folder or file becomes a registered, content-addressed version.

A version is its code and its environment: the packages the folder declares
(``code/requirements.py``) are resolved for the lattice's Python and platform before
anything is uploaded or registered, so a requirement that cannot be met leaves the
registry as it was. The environment record is written before the version naming it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from superpose import protocol
from superpose.client.client import Client
from superpose.client.resolving import Progress, lattice_platform, resolve_and_record
from superpose.code import bundle as bundles
from superpose.code import requirements, store
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
    code: str = ""
    """The code digest (``version`` is it with the environment, ``protocol.version_id``)."""
    env: protocol.Environment | None = None
    """The resolved environment, when the app declares packages."""


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
    client: Client,
    path: Path,
    name: str | None = None,
    *,
    asgi: str | None = None,
    progress: Progress | None = None,
) -> Deployed:
    """Bundle, check, resolve the packages, upload (only missing files), register, and
    move ``latest``: the manifest, the version and the move signed with the client's
    deployer key, which the lattice must trust.

    ``asgi`` (``MODULE:ATTR``) also serves that ASGI app over HTTP; it must import.
    ``progress`` is told each step of resolving (which file declared the packages, what
    they resolved to).
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
    signer = await client.trusted_signer()  # an untrusted key is refused before any upload
    declaration = declaration_of(path, functions)
    env = await _environment(client, declaration, progress) if declaration else None
    digest, uploaded = await store.upload(client.nc, bundle, signer=signer)
    version = Version(
        app=app,
        digest=digest,
        created=time.time(),
        size=bundle.size,
        files=bundle.listing,
        functions={name: spec.as_dict() for name, spec in functions.items()},
        kind="functions" if asgi is None else "asgi",
        env=env.digest if env else "",
    )
    registry = await client.registry()
    await registry.register(version)
    await registry.set_alias(app, LATEST, version.id)
    return Deployed(
        app,
        version.id,
        sorted(functions),
        len(bundle.files),
        uploaded,
        bundle.size,
        asgi,
        code=digest,
        env=env,
    )


def declaration_of(
    path: Path, functions: dict[str, FunctionSpec]
) -> requirements.Declaration | None:
    """What the app declares: its folder's file (a single deployed file has none), plus
    the ``pip=`` its functions name, so a script's ``pip=`` holds when it is deployed."""
    found = requirements.declared_in(path) if path.is_dir() else None
    pip: dict[str, None] = {}
    for spec in functions.values():
        pip.update(dict.fromkeys(_pip_of(spec)))
    if not pip:
        return found
    if found is None:
        return requirements.Declaration(requirements.PIP, tuple(pip))
    merged = tuple(dict.fromkeys([*found.requirements, *pip]))
    source = f"{found.source} and {requirements.PIP}"
    return requirements.Declaration(source, merged, found.requires_python, found.unused)


def _pip_of(spec: FunctionSpec) -> tuple[str, ...]:
    try:
        return requirements.check_pip(spec.options.get("pip"))
    except BadRequestError as exc:
        raise BadRequestError(f"{spec.file}:{spec.line}: {exc.message}") from None


async def _environment(
    client: Client, declaration: requirements.Declaration, progress: Progress | None
) -> protocol.Environment | None:
    """Check the declaration against the lattice, then resolve and record it."""
    say = progress or (lambda _: None)
    target = lattice_platform((await client.nodes()).live())
    requirements.check_python(declaration, target.python)
    unused = (
        f" ({', '.join(declaration.unused)} also there, not read)" if declaration.unused else ""
    )
    if not declaration.requirements:
        say(f"packages: none declared in {declaration.source}{unused}")
        return None
    say(f"packages: from {declaration.source}{unused}")
    registry = await client.registry()
    return await resolve_and_record(registry, target, declaration.requirements, progress)


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
