"""How a failed call is reported: its error kind, type, message and the user's part of
its traceback; and where a call that timed out was."""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path
from typing import Any

from superpose import protocol
from superpose.errors import RemoteError
from superpose.lattice import payload
from superpose.lattice.offers import OfferGoneError

INHERITED_KINDS = (protocol.ERR_CRASHED, protocol.ERR_INTERNAL)
"""Failure kinds a function's error takes from the nested call that caused it."""
_RUNTIME_DIRS = (
    str(Path(__file__).resolve().parents[2]),  # the superpose package
    str(Path(asyncio.__file__).resolve().parents[1]),
)


def error_info(exc: BaseException, kind: str = protocol.ERR_RAISED) -> protocol.ErrorInfo:
    if isinstance(exc, RemoteError) and exc.kind in INHERITED_KINDS:
        # A nested call died with its node: the caller failed for the same reason, so
        # a retry at any level of the call tree applies (it reruns the whole subtree).
        kind = exc.kind
    elif isinstance(exc, OfferGoneError):  # a payload could not be pulled: not the user's
        kind = protocol.ERR_INTERNAL
    return protocol.ErrorInfo(
        kind=kind,
        type=_type_name(type(exc)),
        message=str(exc),
        traceback=_user_traceback(exc),
        types=[_type_name(c) for c in type(exc).__mro__ if c not in (object, BaseException)],
        exception=payload.encode_exception(exc) if kind == protocol.ERR_RAISED else b"",
    )


def _type_name(cls: type) -> str:
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame of user code on: superpose's own frames are noise."""
    tb = exc.__traceback__
    while tb is not None and _is_runtime_frame(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def _is_runtime_frame(filename: str) -> bool:
    return filename.startswith(_RUNTIME_DIRS) or "<frozen " in filename


def awaiting_frames(coro: Any) -> list[traceback.FrameSummary]:
    """A suspended coroutine's frames, down the chain of what each one awaits
    (``Task.get_stack`` gives only the outermost)."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return list(traceback.StackSummary.extract(iter(frames)))


def user_frames(frames: list[traceback.FrameSummary], file: str, entry: str) -> str:
    """``frames`` after the last one of ``entry`` in ``file`` (where the executor calls
    the user's function), formatted as a traceback."""
    ours = [i for i, f in enumerate(frames) if f.filename == file and f.name == entry]
    if ours:
        frames = frames[ours[-1] + 1 :]
    return "".join(traceback.format_list(frames))
