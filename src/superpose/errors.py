"""One error root, two families.

``UserError`` covers what the user can fix (bad input, unknown function, no
node, deploy problems): the CLI prints the message and exits 1, the gateway
answers 4xx. ``RemoteError`` reports what happened to one invocation on a
node: the function raised, timed out, crashed or ran out of memory.
Everything else is a ``SuperposeError`` (internal, 5xx).
"""

from __future__ import annotations

import signal
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from superpose import protocol


def how_it_ended(returncode: int) -> str:
    """A finished process's exit status, for a message: "was killed by SIGKILL" (a
    negative code is the signal) or "exited with code 3"."""
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


class SuperposeError(Exception):
    """Root of every error superpose raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UserError(SuperposeError):
    """Something the caller can fix; the message says how."""


class NotFoundError(UserError):
    """An app, function, version or object that does not exist."""


class BadRequestError(UserError):
    """Input that cannot be accepted (malformed JSON, bad name, bad option)."""


class DeployError(UserError):
    """A bundle that cannot be deployed; names the file (and line) at fault."""


class SettingError(UserError, ValueError):
    """An environment variable superpose reads has a value it cannot take."""


class ArgumentError(BadRequestError, TypeError):
    """A call's arguments do not fit the function's signature: raised where the call is
    made, as Python raises ``TypeError``, naming the function and the parameter."""


class SerializationError(UserError):
    """A value that cannot travel: an argument, a result or a function that cannot be
    pickled (a lock, an open file, a socket); the message names it and its type."""


class NoNodesError(UserError):
    """No node is serving the lattice."""


class UntrustedError(UserError):
    """A version, alias, canary or bundle no trusted deployer key signed: not routed to,
    not run. The message names it and who signed it (or that nobody did)."""


class ObjectLostError(NotFoundError):
    """An object a Ref names can no longer be read: it was never put, its holder freed
    it (no live Ref and no pending call after the grace period) or stopped, or a durable
    object was removed. The message names the object and its holder when known."""


class LatticeError(SuperposeError):
    """The lattice (nats-server) cannot be started or reached."""


class CallTimeoutError(SuperposeError):
    """The caller gave up waiting: the deadline passed with no answer."""


class RemoteError(SuperposeError):
    """An invocation failed on a node.

    ``kind`` says how (``raised``, ``timeout``, ``crashed``, ``memory``,
    ``not_found``, ``bad_request``, ``internal``); ``type``, ``message`` and
    ``traceback`` describe the remote exception.
    """

    def __init__(
        self, kind: str, type_name: str, message: str, traceback: str = "", node: str = ""
    ) -> None:
        where = f" on node {node}" if node else ""
        super().__init__(f"{type_name}: {message}{where}")
        self.kind = kind
        self.type = type_name
        self.remote_message = message
        self.traceback = traceback
        self.node = node

    @classmethod
    def from_info(cls, info: protocol.ErrorInfo, node: str = "") -> RemoteError:
        return cls(info.kind, info.type, info.message, info.traceback, node)

    @property
    def traceback_label(self) -> str:
        """A dead process leaves no traceback: its report carries its last output (so does
        a failed environment build: the installer's)."""
        return (
            "last output" if self.kind in ("crashed", "memory", "prepare") else "remote traceback"
        )

    def __str__(self) -> str:
        text = self.message
        if self.traceback:
            text += f"\n--- {self.traceback_label} ---\n" + self.traceback.rstrip()
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteError, (self.kind, self.type, self.remote_message, self.traceback, self.node))


REMOTE_NOTE = "--- remote traceback"
"""How the note that carries a rebuilt exception's remote traceback begins."""
_AS_REMOTE: dict[type[Exception], type[RemoteError]] = {}


def raised_remotely(
    cls: type[Exception], args: tuple[Any, ...], state: dict[str, Any], error: RemoteError
) -> RemoteError:
    """The exception a function raised, rebuilt at the caller: an instance of its own class
    (``except PaymentDeclined`` catches it, ``e.code`` is there) that is also a
    ``RemoteError`` (``except sp.RemoteError`` keeps working), as Ray does. ``str()`` is the
    original's; the remote traceback is a note, printed under the local one.

    A Python ``__init__`` is not called: its parameters need not be the exception's
    ``args``, and its ``super().__init__`` would reach RemoteError's; the attributes it
    set come with the state. A built-in one is (UnicodeError's fields live only there).
    """
    remote_cls = _as_remote(cls)
    rebuilt: RemoteError = remote_cls.__new__(remote_cls, *args)
    if not isinstance(cls.__init__, types.FunctionType):
        cls.__init__(rebuilt, *args)
    rebuilt.__dict__.update(vars(error))
    rebuilt.__dict__.update(state)
    rebuilt._sp_state = dict(state)  # type: ignore[attr-defined]
    if error.traceback:
        where = f" (node {error.node})" if error.node else ""
        rebuilt.add_note(f"{REMOTE_NOTE}{where} ---\n{error.traceback.rstrip()}")
    return rebuilt


def _as_remote(cls: type[Exception]) -> type[RemoteError]:
    """``cls`` that is also a RemoteError, under the original's name; made once per class."""
    found = _AS_REMOTE.get(cls)
    if found is None:
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__str__": cls.__str__,
            "__repr__": cls.__repr__,
            "__reduce__": _reduce_as_original,
            "_sp_origin": cls,
        }
        found = _AS_REMOTE[cls] = type(cls.__name__, (cls, RemoteError), namespace)
    return found


def _reduce_as_original(self: Exception) -> tuple[Any, ...]:
    """Pickled again (returned, or sent on), it is the user's class alone: the dynamic
    class cannot be pickled by reference."""
    return (type(self)._sp_origin, self.args, self._sp_state)  # type: ignore[attr-defined]


def exception_parts(
    exc: BaseException,
) -> tuple[type[BaseException], tuple[Any, ...], dict[str, Any]]:
    """What rebuilds an exception elsewhere: its class, ``args`` and attributes (without a
    rebuilt one's RemoteError attributes, or the note carrying an earlier remote traceback)."""
    origin = getattr(type(exc), "_sp_origin", None)
    if origin is not None:
        return origin, exc.args, dict(exc._sp_state)  # type: ignore[attr-defined]
    args, state = exc.args, dict(getattr(exc, "__dict__", {}))
    reduced = exc.__reduce__()  # its own idea of its args: OSError adds the filename
    if isinstance(reduced, tuple) and reduced[0] is type(exc) and isinstance(reduced[1], tuple):
        args = reduced[1]
    notes = [n for n in state.pop("__notes__", []) if not str(n).startswith(REMOTE_NOTE)]
    if notes:
        state["__notes__"] = notes
    return type(exc), args, state


def as_superpose_error(exc: Exception) -> SuperposeError:
    """An unexpected exception as the error type callers handle, naming its type."""
    if isinstance(exc, SuperposeError):
        return exc
    return SuperposeError(f"{type(exc).__name__}: {exc}")


class PermissionDeniedError(UserError):
    """The credentials in use may not do this (a role, or ``--app``, that leaves it out);
    raised before asking, since the server answers a refused request with silence. The
    message names what was refused and the user."""


class UpstreamError(SuperposeError):
    """A call whose input (a Future passed as an argument) failed, so it never ran.

    ``invocation_id`` names the invocation that failed first (an input's input, for a
    dependent of a dependent) and ``error`` is that invocation's own error."""

    def __init__(self, invocation_id: str, error: BaseException) -> None:
        name = invocation_id or "an input that was never submitted"
        super().__init__(f"input {name} failed: {type(error).__name__}: {error}")
        self.invocation_id = invocation_id
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.invocation_id, self.error))
