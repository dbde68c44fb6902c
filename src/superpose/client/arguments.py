"""A call's arguments, checked before the call leaves: they fit the function's
signature, and they can be sent.

The messages are Python's own ("missing 1 required positional argument: 'amount'"),
prefixed with the function's lattice name, so a remote call fails like the local
call it stands for, but at once, here, instead of on a node.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from superpose.errors import ArgumentError
from superpose.lattice import payload
from superpose.protocol import Signature
from superpose.registry.mirror import Target


def encode_arguments(
    target: Target, args: Sequence[Any], kwargs: dict[str, Any], codec: str
) -> payload.Encoded:
    """The arguments of a call to ``target``, encoded, once they fit its signature
    (``ArgumentError``) and can be sent (``SerializationError`` naming the argument)."""
    check_call(target, len(args), kwargs)
    where = f"{target.app}.{target.fn}"
    try:
        return payload.encode_args(tuple(args), kwargs, codec)
    except Exception as exc:
        for name, value in argument_names(target.signature, args, kwargs):
            if payload.unsendable_part(value, codec) is not None:
                raise payload.cannot_send(f"argument {name} of {where}", value, codec, exc) from exc
        raise payload.cannot_send(f"the arguments of {where}", (args, kwargs), codec, exc) from exc


def check_call(target: Target, n_args: int, keywords: Collection[str]) -> None:
    """``ArgumentError`` unless a call with ``n_args`` positional arguments and these
    keywords fits what ``target`` takes (unchecked when its signature is unknown: a
    version deployed before signatures were recorded)."""
    if target.signature is not None:
        check_fits(f"{target.app}.{target.fn}", target.signature, n_args, keywords)


def check_fits(where: str, signature: Signature, n_args: int, keywords: Collection[str]) -> None:
    """Raise ``ArgumentError`` (a ``TypeError``) unless ``n_args`` positional arguments
    and ``keywords`` fit ``signature``; ``where`` names the function (``shop.pay``)."""
    positional = signature.positional
    if n_args > len(positional) and not signature.varargs:
        raise ArgumentError(f"{where}() {_too_many(signature, n_args, keywords)}")
    if keywords:
        _check_keywords(where, signature, n_args, keywords)
    missing = [name for name in positional[n_args : signature.required] if name not in keywords]
    if missing:
        raise ArgumentError(
            f"{where}() missing {_count(len(missing), 'required positional argument')}: "
            f"{_names(missing)}"
        )
    missing = [name for name in signature.keyword_required if name not in keywords]
    if missing:
        raise ArgumentError(
            f"{where}() missing {_count(len(missing), 'required keyword-only argument')}: "
            f"{_names(missing)}"
        )


def _check_keywords(
    where: str, signature: Signature, n_args: int, keywords: Collection[str]
) -> None:
    positional = signature.positional
    only = positional[: signature.positional_only]
    if not signature.varkw:
        wrong = [name for name in keywords if name in only]
        if wrong:
            raise ArgumentError(
                f"{where}() got some positional-only arguments passed as keyword "
                f"arguments: {_names(wrong, ', ')}"
            )
    for name in keywords:
        if name in positional[signature.positional_only : n_args]:
            raise ArgumentError(f"{where}() got multiple values for argument '{name}'")
        if name not in positional and name not in signature.keyword_only and not signature.varkw:
            raise ArgumentError(f"{where}() got an unexpected keyword argument '{name}'")


def argument_names(
    signature: Signature | None, args: Sequence[Any], kwargs: dict[str, Any]
) -> list[tuple[str, Any]]:
    """Each argument with what to call it in a message: its parameter's name when the
    signature says, else its position."""
    named = signature.positional if signature is not None else []
    found = [
        (f"'{named[i]}'" if i < len(named) else f"#{i + 1}", value) for i, value in enumerate(args)
    ]
    return found + [(f"'{name}'", value) for name, value in kwargs.items()]


def _too_many(signature: Signature, n_args: int, keywords: Collection[str]) -> str:
    """Python's words for too many positional arguments."""
    most, least = len(signature.positional), signature.required
    takes = f"from {least} to {most} positional arguments" if least < most else None
    takes = takes or _count(most, "positional argument")
    keyword_only = sum(name in signature.keyword_only for name in keywords)
    if keyword_only:
        given = (
            f"{_count(n_args, 'positional argument')} "
            f"(and {_count(keyword_only, 'keyword-only argument')}) were"
        )
    else:
        given = f"{n_args} {'was' if n_args == 1 else 'were'}"
    return f"takes {takes} but {given} given"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _names(names: Sequence[str], last: str = " and ") -> str:
    """As Python lists them: 'a' and 'b'; 'a', 'b', and 'c'."""
    quoted = [f"'{name}'" for name in names]
    if len(quoted) <= 1 or last == ", ":
        return ", ".join(quoted)
    if len(quoted) == 2:
        return quoted[0] + last + quoted[1]
    return ", ".join(quoted[:-1]) + "," + last + quoted[-1]
