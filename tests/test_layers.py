"""The layers of tunelab/ import one way, and no module reaches another module's private names.

The graph is built from the source with `ast`: every `import` and `from ... import` statement,
at the top of a module or inside a function, relative or absolute, and every
`importlib.import_module("tunelab....")` whose name starts with a literal. Each import is mapped
to the subpackage it lands in (`tunelab.training.run` -> `training`).

The layer order, lowest first. A module may import from its own layer and from those below it,
never from one above:

    common     workspace paths, RunError, the shared decoding defaults (FAIR_SAMPLING), small helpers
    data       reading files, the dataset formats, DataError
    modelio    models in: the bundled model, folders, hub ids, loading (4-bit too)
    export     models out: merged and adapter folders, GGUF, the Ollama Modelfile, the model card,
               the export fidelity check. Below training and arena, which both call it: a run
               comes in as an ExportSource, how the arena last used it as a plain dict
    methods    one module a method (full, lora, qlora, dpo, kto, orpo): how it loads its model
               and builds its trainer, with heads.py (the answer-only output head they share)
    training   config, run()/resume (which picks the method module), run folder, events,
               stopping, estimate, the runs registry
    arena      chat side by side, the label store, the leaderboard
    teach      the Inside tab's views, the labs and their checks
    service    the job queue, child processes, the standby, settings, hosting
    ui         gradio tabs and their logic
    tunelab    the package's front (`tunelab/__init__.py`: `from tunelab import run`) and the CLI
               (`tunelab/__main__.py`): the outermost consumers of everything
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tunelab"

LAYERS = ["common", "data", "modelio", "export", "methods", "training", "arena", "teach", "service", "ui",
          "tunelab"]


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path):
    return path.name == "__init__.py"


def _exists(dotted):
    """Whether `tunelab.a.b` names a module or package in the source tree."""
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _layer(dotted):
    """The layer a `tunelab...` module belongs to: its subpackage, or `tunelab` for the package's
    own `__init__.py` and `__main__.py`."""
    parts = dotted.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "tunelab"


def _resolve_from(path, node):
    """The absolute module a `from ... import` statement reads from."""
    if node.level == 0:
        return node.module or ""
    package = _module_name(path).split(".")
    if not _is_package(path):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _dynamic_import(node):
    """`importlib.import_module("tunelab.x")` or `import_module(f"tunelab.x.{name}")`: the literal start."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return arg.values[0].value.rstrip(".")
    return None


def _scan():
    """Every tunelab module's imports: (importer, imported module, line) and its private-name reaches."""
    imports, private = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        bound = {}  # local name -> tunelab module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "tunelab":
                        imports.append((me, alias.name, node.lineno))
                        if alias.asname:
                            bound[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = _resolve_from(path, node)
                if source.split(".")[0] != "tunelab":
                    continue
                for alias in node.names:
                    target = f"{source}.{alias.name}"
                    if _exists(target):  # `from tunelab.training import runs`: a module
                        imports.append((me, target, node.lineno))
                        bound[alias.asname or alias.name] = target
                    else:
                        imports.append((me, source, node.lineno))
                        if alias.name.startswith("_") and not alias.name.startswith("__") and source != me:
                            private.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                                           f"from {source} import {alias.name}")
            elif isinstance(node, ast.Call):
                target = _dynamic_import(node)
                if target and target.split(".")[0] == "tunelab":
                    imports.append((me, target, node.lineno))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and bound[node.value.id] != me):
                private.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                               f"{node.value.id}.{node.attr} ({bound[node.value.id]})")
    return imports, private


def _layer_edges():
    edges = defaultdict(list)
    for me, target, line in _scan()[0]:
        a, b = _layer(me), _layer(target)
        if a != b:
            edges[(a, b)].append(f"{me}:{line} -> {target}")
    return edges


def test_every_subpackage_has_a_place_in_the_layer_order():
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert found == set(LAYERS) - {"tunelab"}, "add the new subpackage to LAYERS (or drop a gone one)"


def test_the_scan_sees_imports_inside_functions_and_relative_ones():
    """The graph is only as good as the scan: check it on a source that hides its imports."""
    imports, _ = _scan()
    pairs = {(me, target) for me, target, _ in imports}
    # tunelab/__init__.py: a relative import at the top
    assert ("tunelab", "tunelab.training.config") in pairs
    # at least one import inside a function body somewhere in the package
    inner = 0
    for path in PACKAGE.rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner += any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(fn))
    assert inner > 0
    assert len(imports) > 200


def test_no_import_goes_from_a_lower_layer_to_a_higher_one():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [where for (a, b), wheres in sorted(_layer_edges().items()) if rank[a] < rank[b] for where in wheres]
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_no_import_cycle_between_subpackages():
    edges = _layer_edges()
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    cycles = []
    for start in sorted(graph):  # a depth-first search from each node; a path back to it is a cycle
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    cycles.append(trail + [start])
                elif nxt not in trail and nxt > start:  # report each cycle once, from its smallest node
                    stack.append((nxt, trail + [nxt]))
    detail = []
    for cycle in cycles:
        detail.append(" -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            detail.extend(f"    {w}" for w in edges[(a, b)])
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(detail)


def test_no_module_reaches_another_modules_private_names():
    private = _scan()[1]
    assert not private, "private names used outside their module:\n" + "\n".join(private)
