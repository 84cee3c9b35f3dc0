"""Process start-up settings of the command line, applied before Keras or TensorFlow load.

Keras fixes its backend, and TensorFlow its C++ logging, when they are first
imported, which ``keras_mixer/__init__`` does. So ``keras_mixer/__init__`` calls
:func:`apply` first: in a process started as a keras-mixer command (the
``keras-mixer`` console script, or a ``scripts/*.py`` shim, which sets
``KERAS_MIXER_COMMAND``) it applies ``--backend`` and ``--cpu-devices``, refuses
an unknown ``KERAS_BACKEND`` in one ``error:`` line (exit status 2), and
silences TensorFlow's and absl's start-up logs unless ``--verbose`` is given.
Imported as a library, keras-mixer changes nothing. Standard library only
(TensorFlow is imported here, muted, only in a command's process).
"""

import contextlib
import importlib
import importlib.util
import os
import sys

CONSOLE_SCRIPT = "keras-mixer"
COMMAND_VARIABLE = "KERAS_MIXER_COMMAND"
VERBOSE_VARIABLE = "KERAS_MIXER_VERBOSE"  # set by --verbose; read by this process and its children
BACKENDS = ("jax", "tensorflow", "torch")


def is_command(argv0=None):
    """Whether this process was started as a keras-mixer command.

    ``argv[0]`` is ``"-m"`` only while Python imports the parent packages of a
    ``python -m`` target, i.e. for ``python -m keras_mixer.cli``.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    return (bool(os.environ.get(COMMAND_VARIABLE))
            or os.path.basename(argv0) == CONSOLE_SCRIPT or argv0 == "-m")


def _option(argv, name):
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv`` (last one wins), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def apply(argv=None):
    """Apply the command line's start-up settings (see the module docstring); idempotent."""
    if not is_command():
        return
    argv = sys.argv[1:] if argv is None else argv
    command = os.environ.get(COMMAND_VARIABLE) or (argv[0] if argv else "")
    backend = _option(argv, "--backend")
    if backend in BACKENDS:
        os.environ["KERAS_BACKEND"] = backend
    elif os.environ.get("KERAS_BACKEND") and os.environ["KERAS_BACKEND"] not in BACKENDS:
        # Keras would fail at import with a traceback: a command says it in one line.
        print(f"error: KERAS_BACKEND={os.environ['KERAS_BACKEND']!r} is not a backend keras-mixer "
              f"runs on: set it to {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}, or pass "
              "--backend.", file=sys.stderr)
        raise SystemExit(2)
    elif command == "export":  # exports are built by TensorFlow: no subprocess needed then
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    devices = _option(argv, "--cpu-devices")
    if devices and devices.isdigit() and int(devices) > 1:
        flag = f"--xla_force_host_platform_device_count={devices}"
        if flag not in os.environ.get("XLA_FLAGS", ""):  # JAX fixes its device count at import
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    if "--verbose" in argv:
        os.environ[VERBOSE_VARIABLE] = "1"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ INFO/WARNING/ERROR lines
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def quiet_start():
    """Import TensorFlow (where installed) with its C++ start-up lines muted.

    The command line calls this before it imports a command's module (anything after
    would print them); ``keras-mixer --help`` imports no command and so no TensorFlow.
    """
    _import_muted("tensorflow")


def _import_muted(module):
    """Import ``module`` with file descriptor 2 on /dev/null, then restore it.

    TensorFlow 2.21 writes its C++ start-up lines (absl's InitializeLog warning,
    oneDNN, CUDA, cpu_feature_guard) while it is imported, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says. An import error still shows: Python reports
    it after stderr is back.
    """
    if module in sys.modules or importlib.util.find_spec(module) is None:
        return
    with muted_stderr():
        importlib.import_module(module)


def verbose():
    """Whether the command line asked for ``--verbose`` (in this process or its parent)."""
    return os.environ.get(VERBOSE_VARIABLE) == "1"


@contextlib.contextmanager
def muted_stderr():
    """File descriptor 2 on /dev/null inside the block (what C++ libraries print there too).

    Python's own errors still show: an exception raised inside reaches the caller,
    and is printed after stderr is back.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def native_logs_muted():
    """:func:`muted_stderr`, unless ``--verbose``: for converters and interpreters that print
    their progress from C++ (the TFLite converter's ``fully_quantize: ...`` lines, LiteRT's
    ``Created TensorFlow Lite XNNPACK delegate``)."""
    return contextlib.nullcontext() if verbose() else muted_stderr()
