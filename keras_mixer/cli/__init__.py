"""The command line: ``keras-mixer COMMAND ...`` (also ``python scripts/COMMAND.py ...``).

One module per command, each with a docstring (its ``--help`` text),
``add_arguments(parser)`` and ``run(args)`` (an exit code, or ``None`` for 0). A
command's module is imported only when that command runs (:func:`command_module`),
so ``keras-mixer --help`` loads neither Keras nor TensorFlow. Every option common to
all commands is added here: ``--backend`` and ``--verbose``. A user mistake (a
missing file, a bad value, a server that rejects the input) prints ``error: ...``
and exits with status 2; ``--verbose`` shows the traceback and TensorFlow's start-up
logs (see :mod:`keras_mixer.startup`).
"""

import argparse
import importlib
import logging
import sys
import warnings

from keras_mixer import startup

# name -> the first line of the command module's docstring (tests/test_cli.py keeps them equal).
COMMANDS = {
    "train": "Train an MLP-Mixer with model.fit on JAX, TensorFlow or PyTorch (one flag per setting).",
    "prepare": "Write an image folder once as TFRecord shards (a TFDS dataset) for fast training starts.",
    "evaluate": "Evaluate a .keras model, a SavedModel or a .tflite file on a labelled image folder.",
    "export": "Export a Mixer to a TF Serving SavedModel, TFLite files or ONNX (built under TensorFlow).",
    "serve": "Serve exported SavedModels locally over TF Serving's gRPC and REST APIs (development only).",
    "predict": "Classify images with a Mixer served by TF Serving, or by `keras-mixer serve` (gRPC or REST).",
    "convert": "Convert MLP-Mixer weights between formats, and save or fetch presets.",
    "visualize": "Pictures of a trained MLP-Mixer.",
    "benchmark": "Benchmark a Mixer on JAX, TensorFlow and PyTorch (each backend in its own subprocess).",
}
# Errors that say what the user should change; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, PermissionError, ImportError)
# keras-mixer's own, by the module that defines them: an error can only have been raised if its
# module was imported, so they are looked up in sys.modules rather than imported here.
OWN_USER_ERRORS = {
    "keras_mixer.backend": ("BackendCallError",),
    "keras_mixer.checkpoints.formats": ("CheckpointError",),
    "keras_mixer.checkpoints.presets": ("DownloadError",),
    "keras_mixer.deploy.client": ("ServingError",),
    "keras_mixer.distribute": ("PeerLost",),
    "keras_mixer.files": ("DiskFullError",),
    "keras_mixer.training.rundir": ("RunError",),
}
# What each command needs beyond the base install and a backend (setup.cfg's extras), and the
# extra that provides a module some commands import (a missing one is named in the error).
COMMAND_EXTRAS = {"train": "data", "prepare": "data", "evaluate": "data", "export": "export",
                  "serve": "serving", "predict": "serving", "convert": None, "visualize": "plots",
                  "benchmark": "data"}
MODULE_EXTRAS = {"tensorflow_datasets": "data", "keras_cv": "data", "sklearn": "data",
                 "tensorflow_serving": "serving", "grpc": "serving", "requests": "serving",
                 "ai_edge_litert": "mobile", "matplotlib": "plots", "keras_hub": "hub",
                 "huggingface_hub": "hub", "kagglehub": "hub", "onnx": "onnx", "tf2onnx": "onnx",
                 "onnxruntime": "onnx", "jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}


def missing_extra(command, error):
    """The install command that provides the module a :class:`ModuleNotFoundError` names, or ``None``."""
    missing = (error.name or "").split(".")[0]
    if missing not in MODULE_EXTRAS:
        return None
    extra = COMMAND_EXTRAS.get(command) if missing == "tensorflow" else MODULE_EXTRAS[missing]
    extra = extra or MODULE_EXTRAS[missing]
    return (f"`keras-mixer {command}` needs the {missing!r} package: "
            f"pip install 'keras-mixer[{extra}]'.")


def command_module(name):
    """The module of command ``name``, imported now (with TensorFlow's start-up lines muted)."""
    if not startup.verbose():
        startup.quiet_start()
    try:
        return importlib.import_module(f"keras_mixer.cli.{name}")
    except ModuleNotFoundError as error:
        message = missing_extra(name, error)
        if message is None:
            raise
        raise ImportError(message) from error


def user_errors():
    """The exception types that are the user's to fix (see :data:`OWN_USER_ERRORS`)."""
    own = tuple(getattr(sys.modules[module], name) for module, names in OWN_USER_ERRORS.items()
                if module in sys.modules for name in names)
    return USER_ERRORS + own


class _CommandParser(argparse.ArgumentParser):
    """A parser that refuses abbreviated flags and reports unknown arguments with its own usage.

    argparse accepts any unambiguous prefix of a flag by default (``--epoch`` for
    ``--epochs``), and a subcommand hands arguments it does not know back to the
    top-level parser, whose usage line then names no subcommand option.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def add_common_arguments(parser, default=None):
    """``--backend`` and ``--verbose``, also after a command's own subcommand (``visualize tokens``)."""
    parser.add_argument("--backend", choices=("jax", "tensorflow", "torch"), default=default,
                        help="Keras backend (default: $KERAS_BACKEND, else Keras' default)")
    parser.add_argument("--verbose", action="store_true", default=default or False,
                        help="show tracebacks and TensorFlow's start-up logs")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():  # SUPPRESS: keep a value given before it
                add_common_arguments(subparser, default=argparse.SUPPRESS)


def command_parser(name, prog=None, module=None):
    """The parser of one command (``prog`` names it in usage lines, e.g. ``train.py``)."""
    module = module or command_module(name)
    parser = _CommandParser(prog=prog or f"keras-mixer {name}", description=module.__doc__)
    module.add_arguments(parser)
    add_common_arguments(parser)
    return parser


def parse_args(argv):
    """A whole ``keras-mixer`` command line (``["train", "--epochs", "3"]``) parsed: the command's
    namespace with ``command`` set; argparse's usage error (``SystemExit``) otherwise."""
    argv = list(argv)
    if not argv or argv[0] not in COMMANDS:
        top_level_parser().parse_args(argv)
        raise SystemExit(2)
    args = command_parser(argv[0]).parse_args(argv[1:])
    args.command = argv[0]
    return args


def top_level_parser():
    """``keras-mixer``: the list of commands (built without importing any of them)."""
    parser = _CommandParser(
        prog="keras-mixer", description="MLP-Mixer for Keras 3: train, evaluate, export, serve.",
        epilog="`keras-mixer COMMAND --help` describes a command.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def _quiet(verbose):
    if verbose:
        return
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _print_problems(error):
    """All of a :class:`CheckpointError`'s problems (its message lists the first few)."""
    problems = getattr(error, "problems", None)
    if problems:
        print(f"All {len(problems)} problems:", *(f"  - {p}" for p in problems), sep="\n",
              file=sys.stderr)


def main(argv=None, command=None, prog=None):
    """Run a command; returns its exit status (the console script passes it to ``sys.exit``).

    ``command`` fixes the command (the ``scripts/*.py`` shims); otherwise it is ``argv[0]``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if command is None:
        if not argv or argv[0] not in COMMANDS:
            top_level_parser().parse_args(argv)  # --help, or an error naming the commands
            return 2
        command, argv = argv[0], argv[1:]
        prog = prog or f"keras-mixer {command}"
    verbose = "--verbose" in argv
    try:
        module = command_module(command)
        args = command_parser(command, prog, module).parse_args(argv)
        args.command = command
        _quiet(args.verbose)
        status = module.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if isinstance(error, ModuleNotFoundError) and missing_extra(command, error):
            error = ImportError(missing_extra(command, error))  # raised while the command ran
        if not isinstance(error, user_errors()) or verbose:
            if verbose:
                _print_problems(error)
            raise
        message = str(error).strip() or type(error).__name__
        print(f"error: {message}\n(run with --verbose for the traceback)", file=sys.stderr)
        return 2
    return 0 if status is None else int(status)
