"""The package's shape: imports run one way (README "Repository layout"), with no cycles
and no function-local imports of our own modules; workers and scripts stay thin."""

import ast
import json
import os
import subprocess
import sys

import pytest
from helpers.processes import ROOT

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

PACKAGE = "keras_mixer"
PACKAGE_DIR = os.path.join(ROOT, PACKAGE)
# The import order, bottom first: a module may import modules of lower layers, and
# modules of its own package (keras_mixer.checkpoints.*, ...), never a higher layer.
LAYERS = [
    ("config", "files", "startup", "backend", "resources", "compat"),
    ("fast",),
    ("layers", "inductor"),
    ("checkpoints",),
    ("models",),
    ("sharing",),
    ("images", "imagenet"),
    ("hub",),
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


HEAVY = ("tensorflow", "matplotlib", "grpc", "tensorflow_datasets", "ai_edge_litert", "keras_cv",
         "tensorflow_serving", "keras_hub", "torch", "jax")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_keras_mixer_adds_nothing_heavy_and_prints_nothing(backend):
    # What `import keras_mixer` loads beyond `import keras` itself (Keras imports matplotlib and
    # scikit-learn on its own where they are installed), in a fresh process.
    code = ("import json, sys; import keras; before = set(sys.modules); import keras_mixer; "
            "keras_mixer.MixerS32; print(json.dumps(sorted(set(sys.modules) - before)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, KERAS_BACKEND=backend,
                                     PYTHONPATH=ROOT), timeout=300)
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = sorted({name.split(".")[0] for name in added} & set(HEAVY) - {backend})
    assert not heavy, f"import keras_mixer under {backend} loads {heavy}"
    assert not result.stderr.strip(), result.stderr


def test_top_level_help_loads_no_command_and_lists_every_command():
    # `keras-mixer --help` imports no command module (and so neither Keras nor TensorFlow);
    # its one-line summaries are the command modules' own first docstring lines.
    code = ("import sys; from keras_mixer.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, KERAS_MIXER_COMMAND="1"),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    from keras_mixer import cli

    for name, summary in cli.COMMANDS.items():
        source = open(os.path.join(PACKAGE_DIR, "cli", f"{name}.py"), encoding="utf-8").read()
        assert ast.get_docstring(ast.parse(source)).splitlines()[0] == summary, name
        assert summary in result.stdout.replace("\n", " ").replace("  ", " ") or name in result.stdout


def test_private_apis_of_other_libraries_only_in_compat():
    """``keras.src`` (Keras' private modules) is imported by keras_mixer.compat alone, where
    each use has a version guard and a test (tests/test_compat.py)."""
    offenders = []
    for module, path in MODULES.items():
        if module == f"{PACKAGE}.compat":
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{module}:{node.lineno} {name}" for name in names
                          if name == "keras.src" or name.startswith("keras.src.")]
    assert not offenders, offenders
