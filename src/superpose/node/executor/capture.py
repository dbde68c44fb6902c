"""What user code prints, and logs, while a call runs: each line becomes a log record.

``sys.stdout`` and ``sys.stderr`` are replaced by ``Output``s that cut what a
call writes into lines and hand each to ``emit`` (which publishes it for the
caller and the app's log stream); the root logger gets a handler that does the
same for log records. Outside any call, writes go to the real streams, which
the node's agent reads into ``executors.log``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from superpose import runtime

Emit = Callable[[str, str], None]
"""(stream name, line): "stdout", "stderr" or "log"."""


class Output:
    """Stands in for sys.stdout/sys.stderr: lines written during a call become log records."""

    def __init__(self, stream_name: str, real: TextIO, emit: Emit) -> None:
        self.stream_name = stream_name
        self.real = real
        self.emit = emit
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        invocation = runtime.current_invocation.get()
        if invocation is None:
            return self.real.write(text)
        with self._lock:
            buffered = self._partial.pop(invocation.id, "") + text
            *lines, rest = buffered.split("\n")
            if rest:
                self._partial[invocation.id] = rest
        for line in lines:
            self.emit(self.stream_name, line)
        return len(text)

    def flush_invocation(self, invocation_id: str) -> None:
        """The call ended: what it wrote without a final newline is a line too."""
        with self._lock:
            rest = self._partial.pop(invocation_id, "")
        if rest:
            self.emit(self.stream_name, rest)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


class _LogHandler(logging.Handler):
    def __init__(self, emit: Emit) -> None:
        super().__init__()
        self.emit_line = emit
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if runtime.current_invocation.get() is None:
            return
        self.emit_line("log", self.format(record))


def capture(emit: Emit) -> list[Output]:
    """Capture this process's output from now on; returns the two ``Output``s, whose
    ``flush_invocation`` each call's end must call."""
    outputs = [Output("stdout", sys.stdout, emit), Output("stderr", sys.stderr, emit)]
    sys.stdout, sys.stderr = outputs
    root = logging.getLogger()
    root.addHandler(_LogHandler(emit))
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return outputs
