"""The agent's reading of an executor's own output: what is logged, what a crash report gets."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable

from superpose.node import output
from superpose.node.output import TAG, OutputTail


def _tagged(invocation_id: str, line: str) -> bytes:
    return TAG + f"{invocation_id} {line}\n".encode()


def test_untagged_output_is_logged_and_call_output_is_only_kept() -> None:
    log = io.BytesIO()
    tail = OutputTail(log)
    tail.feed(b"a warning\n" + _tagged("c1", "printed by c1") + b"par")
    tail.feed(b"tial line\n")
    assert log.getvalue() == b"a warning\npartial line\n"
    assert tail.last_output("c1", since=0) == "a warning\nprinted by c1\npartial line"


def test_a_report_holds_its_call_and_what_came_while_it_ran() -> None:
    tail = OutputTail(None)
    tail.feed(b"before\n" + _tagged("old", "an earlier call"))
    since = tail.seq  # the call starts here
    tail.feed(_tagged("other", "a neighbour") + _tagged("c2", "mine") + b"Fatal Python error\n")
    assert tail.last_output("c2", since) == "mine\nFatal Python error"
    assert tail.last_output("old", 0) == "before\nan earlier call\nFatal Python error"


def test_c_output_without_a_newline_before_a_tagged_line_is_split_from_it() -> None:
    log = io.BytesIO()
    tail = OutputTail(log)
    tail.feed(b"no newline" + _tagged("c3", "then a print"))
    assert log.getvalue() == b"no newline\n"
    assert tail.last_output("c3", 0) == "no newline\nthen a print"


def test_a_report_is_bounded_and_keeps_the_newest_lines() -> None:
    tail = OutputTail(None)
    for i in range(output.KEPT_LINES + 50):
        tail.feed(_tagged("c4", f"{i:04d} " + "x" * 100))
    report = tail.last_output("c4", 0)
    assert len(report) <= output.REPORT_BYTES
    assert report.endswith(f"{output.KEPT_LINES + 49:04d} " + "x" * 100)


def test_endless_output_without_a_newline_is_taken_as_a_line() -> None:
    log = io.BytesIO()
    tail = OutputTail(log)
    tail.feed(b"y" * output.PARTIAL_BYTES)
    assert log.getvalue() == b"y" * output.PARTIAL_BYTES + b"\n"


def test_the_pump_reads_to_the_end_and_ends_a_last_partial_line() -> None:
    async def pump() -> str:
        reader = asyncio.StreamReader()
        reader.feed_data(_tagged("c5", "one") + b"last words without newline")
        reader.feed_eof()
        tail = OutputTail(io.BytesIO())
        await tail.pump(reader)
        return tail.last_output("c5", 0)

    assert asyncio.run(pump()) == "one\nlast words without newline"


def _with_fd2(fd: int, body: Callable[[], None]) -> None:
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        body()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def test_a_copied_line_is_cut_and_a_gone_reader_is_no_error() -> None:
    read_end, write_end = os.pipe()
    _with_fd2(write_end, lambda: output.copy_line("c6", "z" * 5000))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        tail = OutputTail(None)
        tail.feed(pipe.read())
    assert tail.last_output("c6", 0) == "z" * output.LINE_BYTES + "…"

    read_end, write_end = os.pipe()
    os.close(read_end)  # the agent is gone
    _with_fd2(write_end, lambda: output.copy_line("c7", "nobody reads this"))
    os.close(write_end)
