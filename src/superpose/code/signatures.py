"""A function's ``Signature``: from its source at deploy, from the function itself in
script mode. Both describe the same thing, so a call is checked the same way whether
the caller holds the function or only its name."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

from superpose.protocol import Signature


def from_source(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Signature:
    """What ``def`` in the syntax tree takes (deploy reads code, it never runs it)."""
    args = node.args
    positional = args.posonlyargs + args.args
    return Signature(
        positional=[a.arg for a in positional],
        positional_only=len(args.posonlyargs),
        required=len(positional) - len(args.defaults),
        varargs=args.vararg is not None,
        keyword_only=[a.arg for a in args.kwonlyargs],
        keyword_required=[
            a.arg
            for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
            if default is None
        ],
        varkw=args.kwarg is not None,
    )


def from_function(fn: Callable[..., Any]) -> Signature | None:
    """What a live function takes; None when Python cannot say (some builtins)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    kind = inspect.Parameter
    positional = [p for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    keyword_only = [p for p in params if p.kind is kind.KEYWORD_ONLY]
    required = 0
    for p in positional:
        if p.default is not kind.empty:
            break
        required += 1
    return Signature(
        positional=[p.name for p in positional],
        positional_only=sum(p.kind is kind.POSITIONAL_ONLY for p in positional),
        required=required,
        varargs=any(p.kind is kind.VAR_POSITIONAL for p in params),
        keyword_only=[p.name for p in keyword_only],
        keyword_required=[p.name for p in keyword_only if p.default is kind.empty],
        varkw=any(p.kind is kind.VAR_KEYWORD for p in params),
    )
