"""The package's shape: imports run one way (README "Repository layout"), with no cycles
and no function-local imports of our own modules; workers and scripts stay thin."""

import ast
import os

import pytest
from helpers.processes import ROOT

PACKAGE = "keras_mixer"
PACKAGE_DIR = os.path.join(ROOT, PACKAGE)
# The import order, bottom first: a module may import modules of lower layers, and
# modules of its own package (keras_mixer.checkpoints.*, ...), never a higher layer.
LAYERS = [
    ("config", "files", "startup", "backend", "resources"),
    ("layers", "inductor"),
    ("checkpoints",),
    ("models",),
    ("images", "imagenet"),
    ("image_check",),
    ("data", "distribute"),
    ("records",),
    ("deploy",),
    ("training",),
    ("evaluate",),
    ("visualize", "benchmark"),
    ("cli",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def package_modules():
    """``{dotted module name: path}`` of every module in the package."""
    modules = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


MODULES = package_modules()


def resolve(name):
    """The module a dotted name imports (``keras_mixer.deploy.SERVING_DEFAULT`` -> ``keras_mixer.deploy``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def own_imports(path):
    """``[(imported module, line, inside a function?)]`` of our own modules in one file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{alias.name}" for alias in child.names]
            else:
                names = []
            for name in names:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    found.append((resolve(name), child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def layer_of(module):
    """The layer name of a module: its first component below the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_has_a_layer():
    missing = sorted({layer_of(m) for m in MODULES if layer_of(m) and layer_of(m) not in RANK})
    assert not missing, f"add these modules to LAYERS (and to the README layout): {missing}"


def test_imports_run_one_way():
    wrong = []
    for module, path in MODULES.items():
        layer = layer_of(module)
        if layer is None:  # keras_mixer/__init__.py: the public API re-exports everything
            continue
        for imported, line, _ in own_imports(path):
            target = layer_of(imported)
            if target is None:
                if module != f"{PACKAGE}.{layer}" and imported == PACKAGE:
                    wrong.append(f"{module}:{line} imports the package {PACKAGE} itself")
                continue
            if target != layer and RANK[target] >= RANK[layer]:
                wrong.append(f"{module}:{line} imports {imported} (layer {target!r} is not below {layer!r})")
    assert not wrong, "\n".join(wrong)


def test_no_function_local_imports_of_our_modules():
    local = [f"{os.path.relpath(path, ROOT)}:{line} imports {imported}"
             for module, path in MODULES.items()
             for imported, line, in_function in own_imports(path) if in_function]
    assert not local, "\n".join(local)


def test_no_import_cycles():
    graph = {module: {imported for imported, _, _ in own_imports(path)
                      if imported != PACKAGE and imported != module}
             for module, path in MODULES.items() if module != PACKAGE}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            cycle = trail[trail.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            # A package's __init__ re-exporting its own submodules is not a cycle of concern.
            if module.startswith(imported + ".") and imported in graph:
                continue
            visit(imported, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_workers_do_not_import_conftest_and_scripts_stay_thin():
    tests = os.path.join(ROOT, "tests")
    for folder in ("workers", "helpers"):
        for name in os.listdir(os.path.join(tests, folder)):
            if name.endswith(".py"):
                source = open(os.path.join(tests, folder, name), encoding="utf-8").read()
                assert "conftest" not in source, f"tests/{folder}/{name} imports conftest"
    for name in os.listdir(os.path.join(ROOT, "scripts")):
        if name.endswith(".py"):
            source = open(os.path.join(ROOT, "scripts", name), encoding="utf-8").read()
            assert "sys.path.insert" not in source, f"scripts/{name} edits sys.path"
            assert "from keras_mixer.cli import main" in source, f"scripts/{name} is not a shim"
