"""The package's layering, checked on the source: which package may import which, no cycles, no flags in the library.

Layers, lowest first (a package imports only its own layer and the ones below):
config -> boxes -> models -> data -> evaluation, export -> training, detector -> ablation, landscape -> cli.
``run_dir``, ``visualize`` and ``plots`` are leaf helpers any layer above ``data`` may use.
"""

import ast
import os

import pytest
from conftest import ROOT

PACKAGE = os.path.join(ROOT, "scratchdet_tf")

# What each part of the package may import from scratchdet_tf (besides itself and the package root).
ALLOWED = {
    "config": set(),
    "boxes": {"config"},
    "models": {"config", "boxes"},
    "data": {"config", "boxes"},
    "visualize": set(),
    "plots": set(),
    "run_dir": {"config", "models"},
    "evaluation": {"config", "boxes", "models", "data", "run_dir", "visualize", "plots"},
    "export": {"config", "boxes", "models", "data"},
    "training": {"config", "boxes", "models", "data", "run_dir", "evaluation", "plots"},
    "detector": {"config", "boxes", "models", "data", "run_dir", "evaluation", "export", "visualize"},
    "ablation": {"config", "run_dir", "training", "evaluation"},
    "landscape": {"plots", "run_dir"},
}


def _modules():
    """{dotted module name: [dotted scratchdet_tf modules it imports, anywhere in the file]}."""
    found = {}
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
            module = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            imports = []
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imports += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    imports.append(node.module)
                    imports += [f"{node.module}.{a.name}" for a in node.names]
            found[module] = imports
    return found


MODULES = _modules()


def _part(module: str) -> str:
    """The layer a dotted ``scratchdet_tf.x.y`` module belongs to (``x``)."""
    return module.split(".")[1] if module.count(".") else ""


def _internal(imports):
    return {m for m in imports if m.startswith("scratchdet_tf.") and m.split(".")[1] not in ("__version__",)}


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(part):
    bad = []
    for module, imports in MODULES.items():
        if _part(module) != part:
            continue
        for target in _internal(imports):
            target_part = target.split(".")[1]
            if target_part not in ALLOWED[part] | {part} and target_part in ALLOWED | {"cli"}:
                bad.append(f"{module} imports {target}")
    assert not bad, bad


def test_only_the_command_line_layer_imports_absl_flags():
    users = sorted(m for m, imports in MODULES.items() if "absl.flags" in imports and _part(m) != "cli")
    assert users == []


def test_nothing_outside_the_command_line_layer_imports_it():
    users = sorted(m for m, imports in MODULES.items()
                   if _part(m) != "cli" and any(t.startswith("scratchdet_tf.cli") for t in _internal(imports)))
    assert users == []


def test_no_module_imports_a_module_that_imports_it_back():
    graph = {m: {t for t in _internal(imports) if t in MODULES and t != m} for m, imports in MODULES.items()}
    cycles = []

    def visit(node, path):
        for nxt in graph[node]:
            if nxt == path[0]:
                cycles.append(" -> ".join(path + [nxt]))
            elif nxt not in path and len(path) < 8:
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
    assert not cycles, cycles[:5]


def test_no_source_file_changes_sys_path():
    root = os.path.dirname(PACKAGE)
    offenders = []
    for folder in ("scratchdet_tf", "tools", "tests"):
        for dirpath, _, names in os.walk(os.path.join(root, folder)):
            for name in names:
                path = os.path.join(dirpath, name)
                if name.endswith(".py") and path != os.path.abspath(__file__):
                    with open(path) as f:
                        if "sys.path" in f.read():
                            offenders.append(os.path.relpath(path, root))
    assert offenders == []
