"""TuneLab extends the libraries it stands on through their front doors (subclass hooks,
registries, collators, samplers, callbacks), never by assigning into their objects.

The check walks the source of tunelab/ and app.py with `ast` and reports each assignment
(`x.attr = ...`, `x.attr += ...`, `setattr(x, "attr", ...)`, `del x.attr`) to:

- `forward` or `__class__` of anything: rebinding a library object's method or type;
- `_attn_implementation` of anything: switching a loaded model's attention behind its back
  (register one with `AttentionInterface.register` and name it at load time instead);
- an attribute of a module object: `builtins`, a module imported with `import x`, one
  looked up with `importlib.import_module`, or a parameter that a call in the same file
  fills with one of those (patching a library's module for everyone).

`PENDING` lists the sites that still do one of these, each by file, enclosing function and
what it assigns, so the check fails on any new one and on a listed one that was removed
without taking it off the list (the list only shrinks). The training side has none left
(#35); #36 removes the arena's.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_ATTRS = {"forward", "__class__", "_attn_implementation"}

# (file, enclosing function, assigned attribute): each still to go through a front door.
PENDING: set[tuple[str, str, str]] = set()


def _sources():
    yield ROOT / "app.py"
    yield from sorted((ROOT / "tunelab").rglob("*.py"))


class _Finder(ast.NodeVisitor):
    def __init__(self):
        self.scope: list[str] = []
        self.modules: set[str] = {"builtins"}   # names bound to module objects in this file
        self.found: list[tuple[str, str, int]] = []

    def _enter(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _enter

    def visit_Import(self, node):
        for alias in node.names:
            self.modules.add(alias.asname or alias.name.split(".")[0])

    def visit_Assign(self, node):
        if (isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "import_module"):
            self.modules.update(t.id for t in node.targets if isinstance(t, ast.Name))
        for target in node.targets:
            self._target(target, node.lineno)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._target(node.target, node.lineno)
        self.generic_visit(node)

    def visit_Delete(self, node):
        for target in node.targets:
            self._target(target, node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node):
        if (isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            self._check(node.args[0], node.args[1].value, node.lineno)
        self.generic_visit(node)

    def _target(self, target, line):
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._target(t, line)
        elif isinstance(target, ast.Attribute):
            self._check(target.value, target.attr, line)

    def _check(self, owner, attr, line):
        on_module = isinstance(owner, ast.Name) and owner.id in self.modules
        is_self = isinstance(owner, ast.Name) and owner.id == "self" and attr not in ("__class__",)
        if on_module or (attr in FORBIDDEN_ATTRS and not is_self):
            self.found.append((".".join(self.scope) or "<module>", attr, line))


def _module_parameters(tree, modules: set[str]) -> set[str]:
    """Parameters that a call in the same file fills with a module object (`f(mod)` where
    `mod` came from `import` or `importlib.import_module`): inside `f` they are modules too."""
    defs = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found = set()
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in defs):
            continue
        params = defs[call.func.id].args.args
        for i, arg in enumerate(call.args):
            if isinstance(arg, ast.Name) and arg.id in modules and i < len(params):
                found.add(params[i].arg)
    return found


def _find(tree) -> _Finder:
    first = _Finder()
    first.visit(tree)
    finder = _Finder()
    finder.modules |= first.modules | _module_parameters(tree, first.modules)
    finder.visit(tree)
    return finder


def _sites():
    sites = {}
    for path in _sources():
        finder = _find(ast.parse(path.read_text(), filename=str(path)))
        for scope, attr, line in finder.found:
            sites.setdefault((str(path.relative_to(ROOT)), scope, attr), []).append(line)
    return sites


def test_no_new_assignment_into_a_librarys_objects():
    new = {k: v for k, v in _sites().items() if k not in PENDING}
    assert not new, "assignments into a library's objects or modules (use its front door):\n" + "\n".join(
        f"  {f}:{lines} in {scope}: .{attr} = ..." for (f, scope, attr), lines in sorted(new.items()))


def test_the_pending_list_only_names_sites_that_still_exist():
    gone = PENDING - set(_sites())
    assert not gone, f"no longer in the source: take these off PENDING: {sorted(gone)}"


def test_the_check_sees_each_kind_of_assignment(tmp_path):
    src = '''
import builtins
import importlib
import transformers.utils as tu


def f(model, config, sampler, m):
    model.forward = None
    config._attn_implementation = "eager"
    sampler.__class__ = object
    builtins.print = None
    tu.logging = None
    setattr(model, "forward", None)
    mod = importlib.import_module("trl.trainer.dpo_trainer")
    mod.add_fused_lm_head = None
    g(mod)
    m.weight = None             # a plain attribute of an object: fine


def g(where):
    where.selective_log_softmax = None   # a module passed in


class Mine:
    def forward(self, x):       # defining a forward: fine
        return x

    def set(self):
        self.forward = None     # an object of our own: fine
'''
    finder = _find(ast.parse(src))
    assert [(s, a) for s, a, _ in finder.found] == [
        ("f", "forward"), ("f", "_attn_implementation"), ("f", "__class__"), ("f", "print"), ("f", "logging"),
        ("f", "forward"), ("f", "add_fused_lm_head"), ("g", "selective_log_softmax")]
