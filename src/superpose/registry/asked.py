"""Names resolved by a node agent for an executor, whose own NATS user may not read the
registry: the agent answers from its mirror (``Registry.resolve``, the same rules), and
the executor turns the answer back into a ``Target`` or the error the registry raised."""

from __future__ import annotations

from superpose import protocol
from superpose.errors import BadRequestError, LatticeError, NotFoundError, UserError
from superpose.registry.mirror import Registry, Target

_KINDS: dict[type[Exception], str] = {
    NotFoundError: "not_found",
    BadRequestError: "bad_request",
    UserError: "user",
}
_ERRORS: dict[str, type[Exception]] = {kind: cls for cls, kind in _KINDS.items()}


def answer(registry: Registry, request: protocol.ResolveRequest) -> protocol.Resolved:
    """What ``registry`` resolves the request to, or the error it raised (by kind)."""
    try:
        target = registry.resolve(
            request.app, request.fn, request.version, request.ctx, request.caller
        )
    except UserError as exc:
        kind = next(k for cls, k in _KINDS.items() if isinstance(exc, cls))
        return protocol.Resolved(error_kind=kind, error=exc.message)
    return protocol.Resolved(
        app=target.app,
        fn=target.fn,
        digest=target.digest,
        module=target.module,
        qualname=target.qualname,
        options=dict(target.options),
        signature=target.signature,
        env=target.env,
    )


def target_of(resolved: protocol.Resolved) -> Target:
    """The ``Target`` answered, or the registry's error raised again here."""
    if resolved.error_kind:
        error = _ERRORS.get(resolved.error_kind)
        if error is None:
            raise LatticeError(f"the node could not resolve the name: {resolved.error}")
        raise error(resolved.error)
    return Target(
        resolved.app,
        resolved.fn,
        resolved.digest,
        resolved.module,
        resolved.qualname,
        resolved.options,
        resolved.signature,
        resolved.env,
    )
