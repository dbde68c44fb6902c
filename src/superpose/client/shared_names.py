"""Whose a Dict or Queue is, and how its names and keys look on the wire.

A name belongs to an app unless ``shared=True``: inside a function, the app of the
call; in a script, the app its functions run as (the script file's name, as script
mode names it: ``pipeline.py`` → ``pipeline``), or ``app=`` to name another; in a
notebook or the REPL, ``main``, where their functions run. So a script and the
functions it calls see the same ``sp.Dict("counts")``.
"""

from __future__ import annotations

import functools
import string
import sys

from superpose import protocol, runtime
from superpose.code import by_value, script
from superpose.errors import BadRequestError

KEY_MAX_CHARS = 512
"""A key, escaped to one subject token (``encode_key``), at most this long."""
_PLAIN = frozenset(string.ascii_letters + string.digits + "_-")


def check_name(kind: str, name: object) -> str:
    """A Dict or Queue name becomes a subject token: an app name's rule."""
    if not isinstance(name, str) or not protocol.is_valid_name(name):
        raise BadRequestError(
            f"{kind} name {name!r} is not allowed: a name starts with a letter or _, "
            f"then letters, digits, _ or - (at most {protocol.NAME_MAX_CHARS} characters)"
        )
    return name


def scope_of(kind: str, name: str, *, shared: bool, app: str | None) -> str:
    """The scope a name lives in: lattice-wide, an app named here, or the running one."""
    if shared:
        if app is not None:
            raise BadRequestError(
                f"{kind} {name!r}: give shared=True or app=, not both (shared is lattice-wide)"
            )
        return protocol.SHARED_SCOPE
    if app is not None:
        if not protocol.is_valid_name(app):
            raise BadRequestError(f"{kind} {name!r}: app={app!r} is not a valid app name")
        return protocol.app_scope(app)
    return protocol.app_scope(current_app())


def current_app() -> str:
    """The app code runs as here: the call's, the hosted bundle's, or the script's."""
    invocation = runtime.current_invocation.get()
    if invocation is not None:
        return invocation.app
    hosted = runtime.current()
    if hosted is not None:
        return hosted.app
    return script_app()


def script_app() -> str:
    """The app a script's functions run as (``client/scripts.py`` names it alike)."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__file__", None) is None:
        return by_value.APP
    in_bundle = script.module_name_in_bundle(main, script.project_root(main))
    app = in_bundle.split(".")[0].replace("-", "_")
    return app if protocol.is_valid_name(app) else "script"


def label(kind: str, name: str, scope: str) -> str:
    """How messages name a Dict or Queue: ``Dict 'counts' (app shop)``."""
    where = "shared" if scope == protocol.SHARED_SCOPE else f"app {scope.split('.', 1)[1]}"
    return f"{kind} {name!r} ({where})"


def encode_key(key: object, where: str) -> str:
    """A key as one subject token (``escape``), checked: a string, not empty, not too
    long; the error names ``where``."""
    if not isinstance(key, str):
        raise BadRequestError(f"{where}: keys are strings, got a {type(key).__name__} ({key!r})")
    if not key:
        raise BadRequestError(f"{where}: a key may not be empty")
    token = escape(key) if len(key) <= KEY_MAX_CHARS else key  # escaping only lengthens
    if len(token) > KEY_MAX_CHARS:
        raise BadRequestError(
            f"{where}: key {key[:40]!r}… is too long (over {len(token)} characters escaped, "
            f"at most {KEY_MAX_CHARS}; letters, digits, _ and - count one, others 3 per byte)"
        )
    return token


@functools.lru_cache(maxsize=4096)
def escape(key: str) -> str:
    """Letters, digits, ``_`` and ``-`` as they are, any other character as ``=XX`` per
    UTF-8 byte (``=`` is allowed in keys; a ``.`` would split the token). Cached: hot
    keys are escaped once."""
    return "".join(c if c in _PLAIN else "".join(f"={b:02X}" for b in c.encode()) for c in key)


def decode_key(token: str) -> str:
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode()
