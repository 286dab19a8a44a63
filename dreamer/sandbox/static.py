"""Static vetting of untrusted sim source: an `ast` allowlist checked before any of it runs.

The rules (each breach is one `Violation`):

* module level holds only a docstring, imports, assignments to plain names and function defs;
* imports only `math` and `torch` (and torch submodules that pass the module rule), no `*`;
* no name or attribute starting with `_` (dunder and private access); the bare throwaway `_` is fine;
* no reflective or I/O builtins (`eval`, `open`, `getattr`, `type`, ...);
* no `global`/`nonlocal`, `class`, `async`/`await`, `with`;
* no attribute that reaches files, processes, the network, serialization, JIT/native code or global
  torch state (`load`, `save`, `hub`, `jit`, `cuda`, `set_*`, `manual_seed`, `tofile`, `format`...),
  nor frames, code or tracebacks (`gi_frame`, `f_back`, `f_globals`, `tb_frame`, `co_code`, ...: a
  generator's frame walks up to the worker's globals and its `os`);
* a chain rooted at an imported module (`torch.os`, `torch.nn.functional.torch.utils`) may reach
  only `math` and allowed `torch` modules, and a module may only be named through such a chain
  or bound to a plain name (`F = torch.nn.functional`): never passed, returned or stored.

The check is one layer: `FuncSim.from_source` also runs the source with safe builtins only, and
`dreamer.sandbox.validate` runs it in a resource-limited subprocess first.
"""

from __future__ import annotations

import ast
import math
import sys
import threading
from dataclasses import dataclass
from types import ModuleType

import torch

ALLOWED_MODULES = {"math": math, "torch": torch}

FORBIDDEN_NAMES = frozenset(
    "eval exec compile open input globals locals vars getattr setattr delattr breakpoint help dir "
    "memoryview type object super classmethod staticmethod property __import__".split()
)

# Attributes (on any object) and imported names that reach outside the sim's pure tensor math.
FORBIDDEN_ATTRIBUTES = frozenset(
    "load loads save dump dumps tofile fromfile from_file numpy ctypes storage untyped_storage "
    "share_memory_ format format_map hub ops jit compile classes utils multiprocessing distributed "
    "cuda library backends serialization package onnx export fx profiler testing random "
    "manual_seed seed initial_seed get_rng_state set_rng_state fork_rng use_deterministic_algorithms".split()
)
# set_*: global torch state; the rest: generator/coroutine/frame/traceback/code introspection.
FORBIDDEN_ATTRIBUTE_PREFIXES = ("set_", "gi_", "cr_", "ag_", "f_", "tb_", "co_")

FORBIDDEN_STATEMENTS = {
    ast.Global: "`global`", ast.Nonlocal: "`nonlocal`", ast.ClassDef: "`class`",
    ast.AsyncFunctionDef: "`async def`", ast.Await: "`await`", ast.AsyncFor: "`async for`",
    ast.AsyncWith: "`async with`", ast.With: "`with`",
}
MAX_ALIAS_PASSES = 5

# Torch modules a chain may not pass through (checked on the module's real name).
FORBIDDEN_TORCH_MODULES = (
    "torch.hub", "torch.jit", "torch.utils", "torch.multiprocessing", "torch.distributed",
    "torch.cuda", "torch.library", "torch.backends", "torch.serialization", "torch.package",
    "torch.onnx", "torch.export", "torch.fx", "torch.profiler", "torch.testing", "torch.random",
    "torch.storage", "torch.overrides", "torch.compiler", "torch.mps", "torch.xpu", "torch.mtia",
    "torch.accelerator", "torch.cpu", "torch.futures", "torch.monitor",
)


@dataclass(frozen=True)
class Violation:
    """One breach of the allowlist at `line`:`col` (1-based line, 0-based column)."""

    line: int
    col: int
    message: str


class UnsafeSourceError(ValueError):
    """Sim source that failed `check_source`; the message lists every violation."""

    def __init__(self, filename: str, violations: list[Violation]):
        self.filename = filename
        self.violations = violations
        lines = [f"{filename}:{v.line}:{v.col}: {v.message}" for v in violations]
        super().__init__(f"unsafe sim source ({len(violations)} violations):\n" + "\n".join(lines))


# CPython 3.11's AST constructor keeps its recursion depth per interpreter, not per thread: two threads parsing
# at once (`validate_many` checks candidates in parallel) can fail with "SystemError: AST constructor recursion
# depth mismatch" (python/cpython#106905). One parse at a time.
PARSE_LOCK = threading.Lock()


def parse(source: str, filename: str) -> ast.Module:
    """`ast.parse`, one thread at a time (`PARSE_LOCK`)."""
    with PARSE_LOCK:
        return ast.parse(source, filename=filename)


def check_source(source: str, filename: str) -> list[Violation]:
    """Every allowlist breach in `source` (empty list: the source may be executed)."""
    try:
        tree = parse(source, filename)
    except SyntaxError as error:
        return [Violation(error.lineno or 0, (error.offset or 1) - 1, f"syntax error: {error.msg}")]
    except (RecursionError, MemoryError):
        return [Violation(0, 0, "the source nests too deeply to parse (an expression of thousands of terms?)")]
    checker = _Checker(tree)
    # Module aliases may be bound after their use (`F = torch.nn.functional` below a def): repeat
    # until the alias table is stable, so every chain is checked against all bindings.
    try:
        for _ in range(MAX_ALIAS_PASSES):
            known = dict(checker.aliases)
            checker.check_module(tree)
            if checker.aliases == known:
                break
    except RecursionError:  # unchecked code is never run
        return [Violation(0, 0, f"the source nests too deeply to check (an expression deeper than Python's "
                                f"recursion limit of {sys.getrecursionlimit()}): split it into statements")]
    return sorted(set(checker.violations), key=lambda v: (v.line, v.col, v.message))


def _module_allowed(module: ModuleType) -> bool:
    name = module.__name__
    if name == "math":
        return True
    if name != "torch" and not name.startswith("torch."):
        return False
    return not any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_TORCH_MODULES)


def _attribute_forbidden(name: str) -> bool:
    return name in FORBIDDEN_ATTRIBUTES or name.startswith(FORBIDDEN_ATTRIBUTE_PREFIXES)


class _Checker(ast.NodeVisitor):
    """Collects violations; `aliases` maps names bound to modules (`torch`, `F`, ...) to them."""

    def __init__(self, tree: ast.Module):
        self.violations: list[Violation] = []
        self.aliases: dict[str, ModuleType] = {}
        self.parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}

    def report(self, node: ast.AST, message: str) -> None:
        self.violations.append(Violation(getattr(node, "lineno", 0), getattr(node, "col_offset", 0), message))

    def check_module(self, tree: ast.Module) -> None:
        self.violations = []
        for index, statement in enumerate(tree.body):
            is_docstring = (
                index == 0 and isinstance(statement, ast.Expr)
                and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str)
            )
            allowed = (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.FunctionDef)
            if not (is_docstring or isinstance(statement, allowed)):
                self.report(statement, f"module level allows only a docstring, imports, constants and "
                                       f"function defs, not {type(statement).__name__}")
        self.visit(tree)

    def visit(self, node: ast.AST) -> None:
        if type(node) in FORBIDDEN_STATEMENTS:
            self.report(node, f"{FORBIDDEN_STATEMENTS[type(node)]} is not allowed")
        super().visit(node)

    # --- imports -------------------------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = self.resolve_import(node, alias.name)
            if module is None:
                continue
            self.check_name(node, alias.asname or alias.name.split(".")[0])
            if alias.asname:
                self.aliases[alias.asname] = module
            else:
                root = alias.name.split(".")[0]
                self.aliases[root] = ALLOWED_MODULES[root]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.report(node, "relative imports are not allowed")
            return
        module = self.resolve_import(node, node.module or "")
        if module is None:
            return
        for alias in node.names:
            if alias.name == "*":
                self.report(node, f"`from {node.module} import *` is not allowed")
                continue
            self.check_name(node, alias.name)
            if alias.asname:
                self.check_name(node, alias.asname)
            if _attribute_forbidden(alias.name):
                self.report(node, f"`{node.module}.{alias.name}` is forbidden")
                continue
            value = getattr(module, alias.name, None)
            if isinstance(value, ModuleType):
                if _module_allowed(value):
                    self.aliases[alias.asname or alias.name] = value
                else:
                    self.report(node, f"`{node.module}.{alias.name}` reaches forbidden module `{value.__name__}`")

    def resolve_import(self, node: ast.AST, dotted: str) -> ModuleType | None:
        parts = dotted.split(".")
        if parts[0] not in ALLOWED_MODULES:
            self.report(node, f"import of `{dotted}`: a sim may import only {sorted(ALLOWED_MODULES)}")
            return None
        module = ALLOWED_MODULES[parts[0]]
        for part in parts[1:]:
            module = None if _attribute_forbidden(part) or part.startswith("_") else getattr(module, part, None)
            if not isinstance(module, ModuleType) or not _module_allowed(module):
                self.report(node, f"import of `{dotted}` is not allowed")
                return None
        return module

    # --- names and attributes ------------------------------------------------------------------

    def check_name(self, node: ast.AST, name: str) -> None:
        if name.startswith("_") and name != "_":
            self.report(node, f"name `{name}` starts with `_` (private/dunder access is forbidden)")
        if name in FORBIDDEN_NAMES:
            self.report(node, f"name `{name}` is forbidden")

    def visit_Name(self, node: ast.Name) -> None:
        self.check_name(node, node.id)
        if node.id in self.aliases:
            self.check_module_use(node, node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            self.report(node, f"attribute `.{node.attr}` starts with `_` (private/dunder access is forbidden)")
        elif _attribute_forbidden(node.attr):
            self.report(node, f"attribute `.{node.attr}` is forbidden (files, processes, serialization, "
                              f"native code, global torch state or frame introspection)")
        else:
            self.check_module_chain(node)
        self.generic_visit(node)

    def check_module_chain(self, node: ast.Attribute) -> None:
        """Resolve `alias.a.b` on the real modules; it must not leave `math`/allowed `torch`."""
        path: list[str] = []
        base: ast.AST = node
        while isinstance(base, ast.Attribute):
            path.append(base.attr)
            base = base.value
        if not (isinstance(base, ast.Name) and base.id in self.aliases):
            return
        value: object = self.aliases[base.id]
        for attr in reversed(path):
            value = getattr(value, attr, None)
        if isinstance(value, ModuleType):
            dotted = ".".join([base.id, *reversed(path)])
            if not _module_allowed(value):
                self.report(node, f"`{dotted}` reaches forbidden module `{value.__name__}`")
            else:
                self.check_module_use(node, dotted)

    def check_module_use(self, node: ast.AST, dotted: str) -> None:
        """A module may be the base of an attribute or bound to a plain name, nothing else."""
        parent = self.parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            return
        if isinstance(parent, ast.Assign) and parent.value is node and len(parent.targets) == 1:
            target = parent.targets[0]
            if isinstance(target, ast.Name):
                self.aliases[target.id] = self.resolve_chain(dotted)
                return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            return
        self.report(node, f"module `{dotted}` may only be used as `{dotted}.<attribute>`")

    def resolve_chain(self, dotted: str) -> ModuleType:
        root, *rest = dotted.split(".")
        value = self.aliases[root]
        for attr in rest:
            value = getattr(value, attr)
        return value

    # --- statements ----------------------------------------------------------------------------

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.check_name(node, node.name)
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.check_name(node, node.arg)
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg is not None:
            self.check_name(node, node.arg)
        self.generic_visit(node)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.check_name(node, node.name)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        if isinstance(self.parents.get(node), ast.Module):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                if not all(isinstance(name, ast.Name) for name in names):
                    self.report(node, "module-level assignments may bind only plain names")
        self.generic_visit(node)

    visit_AnnAssign = visit_Assign
