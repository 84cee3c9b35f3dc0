"""Every public class and function has a Keras-style docstring, and its Example runs.

The public API: every name of ``keras_mixer.__all__`` (but the ``VARIANTS`` dict,
which has no docstring of its own), ``MlpMixer``'s methods and properties, the
layers, :mod:`keras_mixer.fast`, the keras-hub classes, and the public functions
of the modules users call directly (``PUBLIC`` below). Each docstring has a
one-line summary and the Keras sections:

- ``Args:`` naming every parameter, unless it takes none;
- ``Returns:`` for functions, methods and properties (but those in
  ``RETURNS_NOTHING``); ``Call arguments:`` and ``Returns:`` for layers, models
  and learning-rate schedules (objects that are called); none for other classes
  (their ``Args:`` are the constructor's);
- ``Examples:`` with doctest examples (``>>>``), which run here, one test per object,
  with ``np``, ``keras``, ``keras_mixer``, ``tempfile`` and ``os`` imported, in a
  temporary working directory (and ``tempfile``'s folder inside it), with
  ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``. (Keras writes ``Example:`` or
  ``Examples:``; the docs site's parser, griffe, renders only the plural as code.)
"""

import doctest
import importlib
import inspect
import io
import os
import re
import tempfile

import keras
import numpy as np
import pytest

import keras_mixer

# The examples behave the same under every backend (shapes as tuples, values rounded).
BACKEND_INDEPENDENT = True

NOT_DOCUMENTED = ("VARIANTS",)  # a dict: documented with keras_mixer.config
MIXER_MEMBERS = ("config", "stem", "blocks", "pre_head_norm", "head", "enable_lora", "quantize",
                 "layer_at", "layer_paths", "get_config", "from_config")
# Modules whose public functions (defined there, not starting with "_") are all public API.
WHOLE_MODULES = ("keras_mixer.fast", "keras_mixer.imagenet", "keras_mixer.visualize")
OTHERS = ("keras_mixer.layers.LayerNorm", "keras_mixer.checkpoints.get_params",
          "keras_mixer.evaluate.evaluate")
HUB = ("keras_mixer.hub.MixerBackbone", "keras_mixer.hub.MixerImageClassifier",
       "keras_mixer.hub.MixerImageClassifierPreprocessor", "keras_mixer.hub.MixerImageConverter",
       "keras_mixer.hub.MixerBackbone.from_mixer", "keras_mixer.hub.MixerImageClassifier.from_mixer",
       "keras_mixer.hub.MixerImageClassifier.to_mixer")
# Functions that change something in place and return None.
RETURNS_NOTHING = ("keras_mixer.MlpMixer.enable_lora", "keras_mixer.MlpMixer.quantize",
                   "keras_mixer.fast.set_enabled")

SECTION = re.compile(r"^\s*([A-Z][A-Za-z ]*):\s*$", re.MULTILINE)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# The exporters print a line per file where they run in this process (the TensorFlow backend)
# and nothing where they run in a TensorFlow subprocess (JAX, PyTorch); the examples show the
# latter, so these lines are not compared.
EXPORT_LINES = re.compile(r"^(Exported SavedModel |Exported ONNX |TFLite ).*\n", re.MULTILINE)


class OutputChecker(doctest.OutputChecker):
    def check_output(self, want, got, optionflags):
        return super().check_output(want, EXPORT_LINES.sub("", got), optionflags)


def _module_functions(module_name):
    module = importlib.import_module(module_name)
    return [f"{module_name}.{name}" for name, value in vars(module).items()
            if not name.startswith("_") and callable(value) and not inspect.isclass(value)
            and getattr(value, "__module__", None) == module_name]


PUBLIC = ([f"keras_mixer.{name}" for name in keras_mixer.__all__ if name not in NOT_DOCUMENTED]
          + [f"keras_mixer.MlpMixer.{name}" for name in MIXER_MEMBERS]
          + [name for module in WHOLE_MODULES for name in _module_functions(module)]
          + list(OTHERS))


def resolve(path):
    """The object at a dotted ``path``: the longest importable module, then attributes."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        for index, name in enumerate(parts[end:]):
            owner = obj
            obj = getattr(obj, name)
            if index and inspect.isclass(owner):  # a property as itself, not its value
                obj = inspect.getattr_static(owner, name)
        return obj
    raise ImportError(path)


def _resolve(path):
    if path in HUB:
        pytest.importorskip("keras_hub")
    obj = resolve(path)
    return obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj


def sections(docstring):
    """``{section name: its text}`` of a Google-style docstring."""
    headers = list(SECTION.finditer(docstring))
    return {match.group(1): docstring[match.end():nxt.start() if nxt else None]
            for match, nxt in zip(headers, headers[1:] + [None])}


def _called(obj):
    """Whether instances are called (layers, models, learning-rate schedules)."""
    return inspect.isclass(obj) and issubclass(
        obj, (keras.layers.Layer, keras.optimizers.schedules.LearningRateSchedule))


def _parameters(obj):
    """The parameter names ``Args:`` must document (``*args``, ``**kwargs`` as written)."""
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return []  # the message, as for any exception
    if isinstance(obj, property):
        return []
    signature = inspect.signature(obj)
    names = []
    for name, parameter in signature.parameters.items():
        if name in ("self", "cls"):
            continue
        prefix = {inspect.Parameter.VAR_POSITIONAL: "*",
                  inspect.Parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "")
        names.append(prefix + name)
    return names


def _documented_arguments(args_text):
    return set(re.findall(r"^\s*(\**\w+)(?: \([^)]*\))?:", args_text, re.MULTILINE))


@pytest.mark.parametrize("path", PUBLIC + list(HUB))
def test_docstring_has_the_keras_sections(path):
    obj = _resolve(path)
    docstring = inspect.getdoc(obj) or ""
    assert docstring.strip(), f"{path} has no docstring"
    summary = docstring.strip().splitlines()[0]
    assert summary.strip() and not SECTION.match(summary), f"{path}: no one-line summary"
    found = sections(docstring)
    parameters = _parameters(obj)
    if parameters:
        assert "Args" in found, f"{path} takes {parameters} but has no Args: section"
        missing = [name for name in parameters if name not in _documented_arguments(found["Args"])]
        assert not missing, f"{path}: Args: does not document {missing}"
    if _called(obj):
        assert "Call arguments" in found, f"{path} is called but has no Call arguments: section"
        assert "Returns" in found, f"{path}: no Returns: section (what a call returns)"
    elif not inspect.isclass(obj) and path not in RETURNS_NOTHING:
        assert "Returns" in found, f"{path} has no Returns: section"
    assert "Examples" in found, (
        f"{path} has no Examples: section" + (" ('Example:' is not a section for the docs site's "
                                               "parser: it shows the >>> lines as quotes)"
                                               if "Example" in found else ""))


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """conftest's reset without its garbage collection, which takes about a second a test in a
    process that has imported every backend (the examples keep no memory between tests)."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session(free_memory=False)


@pytest.fixture
def in_temp_dir(tmp_path, monkeypatch):
    """Examples run in a temporary working directory; ``tempfile`` makes its folders in it too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    enabled = keras_mixer.fast.is_enabled()
    yield tmp_path
    keras_mixer.fast.set_enabled(enabled)


@pytest.mark.parametrize("path", PUBLIC + list(HUB))
def test_example_runs(path, in_temp_dir):
    obj = _resolve(path)
    target = obj.fget if isinstance(obj, property) else obj
    globs = dict(np=np, keras=keras, keras_mixer=keras_mixer, tempfile=tempfile, os=os)
    finder = doctest.DocTestFinder(recurse=False)
    tests = [test for test in finder.find(target, path, globs=globs) if test.examples]
    assert tests, f"{path} has no doctest example (>>>) in its docstring"
    runner = doctest.DocTestRunner(checker=OutputChecker(), optionflags=FLAGS)
    report = io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    assert not runner.failures, report.getvalue()
