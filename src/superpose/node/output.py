"""An executor's own output (its fds 1 and 2), read by its agent through a pipe.

What a function prints reaches its caller over NATS, from the executor's nats-py
buffer: the lines printed just before the process dies (``os._exit``, a segfault,
the memory limit) die with that buffer, and they are the ones a crash report needs.
So the executor also writes each captured line, tagged with its call, to fd 2
(one small ``write``, which outlives the process in the pipe), and the agent keeps
the last of them. Untagged output (C extensions, ``faulthandler``'s stack of a
fatal signal, warnings) goes on to the node's ``executors.log`` as before, and is
kept too: a crash report carries what its call printed and what the process wrote
while the call ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from typing import IO

TAG = b"\x1e"
"""Starts a line the executor copies from a call's captured output (ASCII record
separator: it does not occur in text a program means to print)."""
KEPT_LINES = 256
"""Lines an agent keeps per executor, across its calls."""
REPORT_BYTES = 8192
"""At most this much of the last output goes with a crash report."""
LINE_BYTES = 1024
"""A copied line is cut to this (it is a crash report's tail, not the log)."""
PARTIAL_BYTES = 65536
"""Output without a newline is taken as a line once it is this long."""


def copy_line(invocation_id: str, line: str) -> None:
    """In the executor: keep ``line`` of a call's output where its agent will see it,
    even if this process dies right after."""
    text = line if len(line) <= LINE_BYTES else line[:LINE_BYTES] + "…"
    with contextlib.suppress(OSError):  # the agent is gone: nobody is left to report to
        os.write(2, TAG + f"{invocation_id} {text}\n".encode(errors="replace"))


class OutputTail:
    """The agent's side: reads one executor's output, logs the untagged part, and
    keeps the last lines of both kinds for crash reports."""

    def __init__(self, log: IO[bytes] | None) -> None:
        self.log = log
        self.seq = 0
        """Lines seen so far: a call notes it when it starts, to know which untagged
        lines came during its run."""
        self._lines: deque[tuple[int, str | None, str]] = deque(maxlen=KEPT_LINES)
        self._partial = b""

    async def pump(self, reader: asyncio.StreamReader) -> None:
        """Until the executor and every process it started have closed the pipe."""
        while chunk := await reader.read(PARTIAL_BYTES):
            self.feed(chunk)
        if self._partial:
            self.feed(b"\n")

    def feed(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) >= PARTIAL_BYTES:
            lines.append(self._partial)
            self._partial = b""
        logged = bytearray()
        for line in lines:
            before, tagged, after = line.partition(TAG)
            if before or not tagged:
                logged += before + b"\n"
                self._keep(None, before)
            if tagged:
                invocation_id, _, text = after.partition(b" ")
                self._keep(invocation_id.decode(errors="replace"), text)
        if logged and self.log is not None:
            self.log.write(logged)
            self.log.flush()

    def _keep(self, invocation_id: str | None, line: bytes) -> None:
        self.seq += 1
        self._lines.append((self.seq, invocation_id, line.decode(errors="replace")))

    def last_output(self, invocation_id: str, since: int) -> str:
        """What the call printed, and what the process wrote after line ``since``
        (while the call ran), newest last, at most REPORT_BYTES."""
        picked: list[str] = []
        size = 0
        for seq, owner, line in reversed(self._lines):
            if owner == invocation_id or (owner is None and seq > since):
                size += len(line) + 1
                if size > REPORT_BYTES:
                    break
                picked.append(line)
        return "\n".join(reversed(picked))
