"""The command line: ``keras-mixer COMMAND ...`` (also ``python scripts/COMMAND.py ...``).

One module per command, each with a docstring (its ``--help`` text),
``add_arguments(parser)`` and ``run(args)`` (an exit code, or ``None`` for 0).
Every option common to all commands is added here: ``--backend`` and
``--verbose``. A user mistake (a missing file, a bad value, a server that
rejects the input) prints ``error: ...`` and exits with status 2; ``--verbose``
shows the traceback and TensorFlow's start-up logs (see :mod:`keras_mixer.startup`).
"""

import argparse
import logging
import sys
import warnings

from keras_mixer.backend import BackendCallError
from keras_mixer.checkpoints import CheckpointError, DownloadError
from keras_mixer.cli import (benchmark, convert, evaluate, export, predict, prepare, serve, train,
                             visualize)
from keras_mixer.deploy import ServingError
from keras_mixer.distribute import PeerLost
from keras_mixer.training import RunError

COMMANDS = {
    "train": train,
    "prepare": prepare,
    "evaluate": evaluate,
    "export": export,
    "serve": serve,
    "predict": predict,
    "convert": convert,
    "visualize": visualize,
    "benchmark": benchmark,
}
# Errors that say what the user should change; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, PermissionError, CheckpointError, ServingError,
               BackendCallError, DownloadError, ImportError, RunError, PeerLost)


def _summary(module):
    return (module.__doc__ or "").strip().splitlines()[0]


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


def command_parser(name, prog=None):
    """The parser of one command (``prog`` names it in usage lines, e.g. ``train.py``)."""
    module = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=prog or f"keras-mixer {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    add_common_arguments(parser)
    return parser


def build_parser():
    """``keras-mixer`` with one subcommand per module in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="keras-mixer", description="MLP-Mixer for Keras 3: train, evaluate, export, serve.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=_summary(module), description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        add_common_arguments(sub)
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
        args = build_parser().parse_args(argv)
    else:
        args = command_parser(command, prog).parse_args(argv)
        args.command = command
    _quiet(args.verbose)
    try:
        status = COMMANDS[args.command].run(args)
    except USER_ERRORS as error:
        if args.verbose:
            _print_problems(error)
            raise
        message = str(error).strip() or type(error).__name__
        print(f"error: {message}\n(run with --verbose for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
