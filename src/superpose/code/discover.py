"""Find an app's functions by reading its source, never by running it.

Deploy must not execute user code (it may need packages only nodes have, or
have side effects), so functions are found in the syntax tree: top-level
``def``/``async def`` decorated with ``function`` from superpose, in any of the
spellings people use (``@sp.function``, ``@superpose.function``,
``@function(...)``). Literal decorator options are read too; the node applies
the real ones when it loads the code.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from superpose.code.bundle import Bundle, module_name
from superpose.errors import DeployError


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
        }


def _superpose_aliases(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names bound to the superpose module, and names bound to its ``function``."""
    modules, functions = {"superpose"}, set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "superpose":
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module == "superpose":
            for alias in node.names:
                if alias.name == "function":
                    functions.add(alias.asname or alias.name)
    return modules, functions


def _decorator_options(
    decorator: ast.expr, modules: set[str], functions: set[str]
) -> dict[str, Any] | None:
    """The decorator's literal keyword options if it is superpose's ``function``."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    is_ours = (isinstance(target, ast.Name) and target.id in functions) or (
        isinstance(target, ast.Attribute)
        and target.attr == "function"
        and isinstance(target.value, ast.Name)
        and target.value.id in modules
    )
    if not is_ours:
        return None
    options: dict[str, Any] = {}
    if isinstance(decorator, ast.Call):
        for keyword in decorator.keywords:
            if keyword.arg is None:
                continue
            try:
                options[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                continue
    return options


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
    modules, functions = _superpose_aliases(tree)
    found = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            options = _decorator_options(decorator, modules, functions)
            if options is not None:
                found.append(
                    FunctionSpec(
                        name=node.name,
                        module=module_name(path),
                        qualname=node.name,
                        file=path,
                        line=node.lineno,
                        is_async=isinstance(node, ast.AsyncFunctionDef),
                        options=options,
                        params=[a.arg for a in node.args.posonlyargs + node.args.args],
                    )
                )
                break
    return found


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
