"""The first executor of a node is forked from the node itself, before its event loop.

A fresh interpreter pays about 0.15 s of CPU for its imports (nats, superpose);
a node forked before it starts any thread shares them, and its first executor
is ready sooner. Later executors are started as processes of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import socket
import sys

from superpose.config import ENV_CREDS
from superpose.node.executor_creds import identities_for
from superpose.security.executor_identity import ExecutorCreds

FORKED_POLL_S = 0.02
EXECUTOR_ENTRY = "superpose.cli.executor"
"""The executor process's entry module. Named, not imported: an executor hosts user
code, which calls other functions through the client, so the process is composed
above both the node and the client (which may not import each other). The agent
starts it by this name, spawned (``python -m``) or forked (run in the child)."""


class ForkedChild:
    """A child this process forked itself (see ``fork_executor``): the part of
    ``asyncio.subprocess.Process`` an executor uses. Waited for by pid, so nothing
    else in the process reaps it."""

    def __init__(
        self, pid: int, output: socket.socket | None, creds: ExecutorCreds | None = None
    ) -> None:
        self.pid = pid
        self.creds = creds
        """The child's own NATS user (``executor_creds.py``), minted before the fork."""
        self.output = output
        """Our end of the socket on the child's fds 1 and 2. A socket, not a pipe:
        uvloop's ``connect_read_pipe`` closes a pipe's fd twice (MagicStack/uvloop#763),
        and the second close can hit a descriptor the loop polls by then, which makes
        libuv abort the whole node."""
        self._code: int | None = None

    @property
    def returncode(self) -> int | None:
        if self._code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone all the same
                self._code = -signal.SIGKILL
            else:
                if pid == self.pid:
                    self._code = os.waitstatus_to_exitcode(status)
        return self._code

    def kill(self) -> None:
        if self.returncode is not None:  # reaped: its pid may belong to someone else now
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        while (code := self.returncode) is None:
            await asyncio.sleep(FORKED_POLL_S)
        return code


def fork_executor(lattice: str, node_id: str) -> tuple[ForkedChild, socket.socket]:
    """Fork a neutral executor from a node process that has not started its event loop
    or any thread yet: it inherits the imports already made (nats, superpose), which
    a fresh interpreter pays about 0.15 s of CPU for, twice per node at start-up."""
    creds = identities_for(lattice).mint()
    ours, theirs = socket.socketpair()
    output_read, output_write = socket.socketpair()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: it never returns from here
        code = 1
        try:
            ours.close()
            output_read.close()
            null_fd = os.open(os.devnull, os.O_RDONLY)
            for fd, target in (
                (null_fd, 0),
                (output_write.fileno(), 1),
                (output_write.fileno(), 2),
            ):
                os.dup2(fd, target)
            output_write.close()
            os.close(null_fd)
            if creds is not None:  # as a spawned executor's: what its own code sees
                os.environ[ENV_CREDS] = str(creds.path)
            entry = importlib.import_module(EXECUTOR_ENTRY)
            entry.serve(theirs.detach(), lattice, node_id, creds)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    output_write.close()
    return ForkedChild(pid, output_read, creds), ours
