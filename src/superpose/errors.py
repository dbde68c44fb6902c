"""One error root, two families.

``UserError`` covers what the user can fix (bad input, unknown function, no
node, deploy problems): the CLI prints the message and exits 1, the gateway
answers 4xx. ``RemoteError`` reports what happened to one invocation on a
node: the function raised, timed out, crashed or ran out of memory.
Everything else is a ``SuperposeError`` (internal, 5xx).
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

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


class NoNodesError(UserError):
    """No node is serving the lattice."""


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
        """A dead process leaves no traceback: its report carries its last output."""
        return "last output" if self.kind in ("crashed", "memory") else "remote traceback"

    def __str__(self) -> str:
        text = self.message
        if self.traceback:
            text += f"\n--- {self.traceback_label} ---\n" + self.traceback.rstrip()
        return text

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str, str, str]]:
        return (RemoteError, (self.kind, self.type, self.remote_message, self.traceback, self.node))


def as_superpose_error(exc: Exception) -> SuperposeError:
    """An unexpected exception as the error type callers handle, naming its type."""
    if isinstance(exc, SuperposeError):
        return exc
    return SuperposeError(f"{type(exc).__name__}: {exc}")
