"""Find an app's functions by reading its source, never by running it.

Deploy must not execute user code (it may need packages only nodes have, or
have side effects), so functions are found in the syntax tree: top-level
``def``/``async def`` decorated with ``function`` from superpose, in any of the
spellings people use (``@sp.function``, ``@superpose.function``,
``@function(...)``). Literal decorator options are read too; the node applies
the real ones when it loads the code. ``secrets=`` and ``env=`` must be literals: the
node sets them up before it imports anything. A ``schedule=`` is the one option that is a
call (``sp.Period(seconds=30)``, ``sp.Cron("0 * * * *")``): its literal arguments
are read and checked here, since the nodes act on it without importing anything.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

import msgspec

from superpose.code import schedules, settings, signatures
from superpose.code.bundle import Bundle, module_name
from superpose.errors import BadRequestError, DeployError
from superpose.protocol import Signature


@dataclass
class FunctionSpec:
    name: str
    module: str
    qualname: str
    file: str
    line: int
    is_async: bool
    options: dict[str, Any] = field(default_factory=dict)
    params: list[str] = field(default_factory=list)
    """Names of the parameters an argument can fill by position, in order: a canary
    key ``arg:NAME`` finds a positional argument by them."""
    signature: Signature = field(default_factory=Signature)
    """What arguments it takes: callers check a call against it before it leaves."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "qualname": self.qualname,
            "file": self.file,
            "line": self.line,
            "is_async": self.is_async,
            "options": self.options,
            "params": self.params,
            "signature": msgspec.to_builtins(self.signature),
        }


@dataclass
class Names:
    """What superpose's names are bound to in one module."""

    modules: set[str] = field(default_factory=lambda: {"superpose"})
    """Names of the superpose module itself (``import superpose as sp``)."""
    functions: set[str] = field(default_factory=set)
    """Names of its ``function`` (``from superpose import function``)."""
    schedules: dict[str, str] = field(default_factory=dict)
    """Local name → ``Period`` or ``Cron`` (``from superpose import Period``)."""


def _superpose_aliases(tree: ast.Module) -> Names:
    names = Names()
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "superpose":
                    names.modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module == "superpose":
            for alias in node.names:
                if alias.name == "function":
                    names.functions.add(alias.asname or alias.name)
                elif alias.name in _SCHEDULE_KINDS:
                    names.schedules[alias.asname or alias.name] = alias.name
    return names


_SCHEDULE_KINDS = {"Period": schedules.Period, "Cron": schedules.Cron}


def _is_ours(target: ast.expr, names: Names, attr: str) -> bool:
    """``sp.<attr>`` for a name bound to the superpose module."""
    return (
        isinstance(target, ast.Attribute)
        and target.attr == attr
        and isinstance(target.value, ast.Name)
        and target.value.id in names.modules
    )


def _decorator_options(decorator: ast.expr, names: Names, where: str) -> dict[str, Any] | None:
    """The decorator's literal keyword options if it is superpose's ``function``."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    is_ours = (isinstance(target, ast.Name) and target.id in names.functions) or _is_ours(
        target, names, "function"
    )
    if not is_ours:
        return None
    options: dict[str, Any] = {}
    if isinstance(decorator, ast.Call):
        for keyword in decorator.keywords:
            if keyword.arg == "schedule":
                schedule = _schedule(keyword.value, names, where)
                if schedule is not None:
                    options["schedule"] = schedule.as_record()
                continue
            if keyword.arg is None:
                continue
            try:
                options[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                if keyword.arg in _SETTINGS:
                    raise DeployError(
                        f"{where}: {keyword.arg}= must be written out as a literal: deploy reads "
                        "the source, it does not run it"
                    ) from None
                continue
        _check_settings(options, where)
    return options


_SETTINGS = ("secrets", "env")
"""Options a node acts on before importing anything: they must be literal, and valid."""


def _check_settings(options: dict[str, Any], where: str) -> None:
    try:
        checked = settings.settings_of(options.get("secrets"), options.get("env"))
    except BadRequestError as exc:
        raise DeployError(f"{where}: {exc.message}") from None
    for name in _SETTINGS:
        options.pop(name, None)
    if checked is not None and checked.secrets:
        options["secrets"] = checked.secrets
    if checked is not None and checked.env:
        options["env"] = checked.env


def _schedule(value: ast.expr, names: Names, where: str) -> schedules.Schedule | None:
    """``schedule=sp.Period(...)`` / ``sp.Cron("...")`` read from the source, and checked."""
    if isinstance(value, ast.Constant) and value.value is None:
        return None
    kind = _schedule_kind(value, names)
    spread = isinstance(value, ast.Call) and any(k.arg is None for k in value.keywords)
    if kind is None or not isinstance(value, ast.Call) or spread:
        raise DeployError(
            f"{where}: schedule= must be written out as sp.Period(...) or sp.Cron('...') "
            "with literal arguments: deploy reads the source, it does not run it"
        )
    try:
        args = [ast.literal_eval(a) for a in value.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in value.keywords if k.arg}
    except ValueError:
        raise DeployError(
            f"{where}: the arguments of {kind}(...) in schedule= must be literals "
            "(numbers, or a string for Cron): deploy reads the source, it does not run it"
        ) from None
    try:
        return _SCHEDULE_KINDS[kind](*args, **kwargs)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise DeployError(f"{where}: {kind}(...) in schedule=: {exc}") from None
    except BadRequestError as exc:
        raise DeployError(f"{where}: {exc.message}") from None


def _schedule_kind(value: ast.expr, names: Names) -> str | None:
    target = value.func if isinstance(value, ast.Call) else value
    if isinstance(target, ast.Name):
        return names.schedules.get(target.id)
    for kind in _SCHEDULE_KINDS:
        if _is_ours(target, names, kind):
            return kind
    return None


def _required_params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Parameters a call with no arguments would leave unfilled."""
    positional = node.args.posonlyargs + node.args.args
    without_default = positional[: len(positional) - len(node.args.defaults)]
    keyword_only = [
        a for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True) if d is None
    ]
    return [a.arg for a in without_default + keyword_only]


def parse_module(path: str, source: bytes) -> ast.Module:
    try:
        return ast.parse(source, filename=path)
    except SyntaxError as exc:
        line = exc.lineno or 0
        raise DeployError(f"{path}:{line}: syntax error: {exc.msg}") from exc
    except ValueError as exc:  # e.g. null bytes
        raise DeployError(f"{path}: cannot be parsed as Python: {exc}") from exc


def functions_in_module(path: str, source: bytes) -> list[FunctionSpec]:
    tree = parse_module(path, source)
    names = _superpose_aliases(tree)
    found = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            options = _decorator_options(decorator, names, f"{path}:{decorator.lineno}")
            if options is not None:
                found.append(_spec(path, node, options))
                break
    return found


def _spec(
    path: str, node: ast.FunctionDef | ast.AsyncFunctionDef, options: dict[str, Any]
) -> FunctionSpec:
    if "schedule" in options:
        reason = schedules.unscheduled_reason(node.name, _required_params(node))
        if reason is not None:
            raise DeployError(f"{path}:{node.lineno}: {reason}")
    return FunctionSpec(
        name=node.name,
        module=module_name(path),
        qualname=node.name,
        file=path,
        line=node.lineno,
        is_async=isinstance(node, ast.AsyncFunctionDef),
        options=options,
        params=[a.arg for a in node.args.posonlyargs + node.args.args],
        signature=signatures.from_source(node),
    )


def discover(bundle: Bundle) -> dict[str, FunctionSpec]:
    """Every function of the app by name; two functions with one name is an error."""
    by_name: dict[str, FunctionSpec] = {}
    for path in sorted(bundle.files):
        if not path.endswith(".py"):
            continue
        for spec in functions_in_module(path, bundle.files[path]):
            other = by_name.get(spec.name)
            if other is not None:
                raise DeployError(
                    f"two functions are named {spec.name!r}: {other.file}:{other.line} and "
                    f"{spec.file}:{spec.line}; rename one (an app's function names are unique)"
                )
            by_name[spec.name] = spec
    return by_name
