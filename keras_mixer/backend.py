"""Run a function under another Keras backend, in a subprocess.

Keras fixes its backend when it is imported, so work that needs another one
(exporting from a JAX or PyTorch session, benchmarking every backend, tests that
compare backends) calls ``run_under(backend, "module:function", *args)``.
Arguments and the result travel as JSON; NumPy arrays travel as ``.npy`` files.
With ``raise_errors=True`` an exception of the function travels back too: the
same type is raised here (builtin and keras-mixer types), so a user error in the
subprocess is reported like one in this process.
"""

import builtins
import importlib
import json
import os
import subprocess
import sys
import tempfile
import traceback

import numpy as np

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The subprocess's entry point. Not `python -m keras_mixer.backend`: the package imports this
# module before runpy runs it again as __main__, and runpy warns about that on stderr.
_ENTRY = "import sys; from keras_mixer.backend import _serve_request; _serve_request(sys.argv[1])"


class BackendCallError(RuntimeError):
    """The subprocess failed; ``returncode`` and ``output`` (its last lines, when captured) say how."""

    def __init__(self, message, returncode, output=""):
        super().__init__(message)
        self.returncode = returncode
        self.output = output


def _encode(value, work):
    if isinstance(value, np.ndarray):
        path = os.path.join(work, f"array_{len(os.listdir(work))}.npy")
        np.save(path, value, allow_pickle=False)
        return {"__ndarray__": path}
    if isinstance(value, (list, tuple)):
        return [_encode(v, work) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v, work) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return np.load(value["__ndarray__"], allow_pickle=False)
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def environment(backend, pythonpath=(), extra=None):
    """``os.environ`` with ``KERAS_BACKEND`` set, this package importable, TF's C++ logs quiet."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_ROOT, *map(os.fspath, pythonpath)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.update(extra or {})
    return env


def _child_error(info, backend):
    """The exception the subprocess raised (``info``: its type and message), rebuilt here, with
    the subprocess's traceback as its cause; ``None`` when its type is not ours or a builtin."""
    module, name = info.get("module", ""), info.get("name", "")
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif module == "keras_mixer" or module.startswith("keras_mixer."):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    else:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return None
    try:
        error = cls(info.get("message", ""))
    except Exception:  # a constructor that takes other arguments
        return None
    error.__cause__ = BackendCallError(
        f"raised under KERAS_BACKEND={backend}:\n{info.get('traceback', '')}", 1)
    return error


def run_under(backend, function, *args, capture=True, pythonpath=(), env=None, timeout=None,
              raise_errors=False, **kwargs):
    """Call ``function`` (``"package.module:name"``) with ``args``/``kwargs`` under ``backend``.

    Args:
        capture: keep the subprocess's output (shown in the error if it fails);
            ``False`` lets it print to this process's terminal.
        pythonpath: extra import paths for the subprocess.
        env: extra environment variables.
        timeout: seconds before the subprocess is killed.
        raise_errors: when the function raises an exception of a builtin or
            keras-mixer type, raise that type here with its message (else every
            failure is a :class:`BackendCallError`).

    Returns:
        The function's return value (JSON types and NumPy arrays).
    """
    with tempfile.TemporaryDirectory(prefix="keras_mixer_backend_") as work:
        request = os.path.join(work, "request.json")
        result = os.path.join(work, "result.json")
        with open(request, "w") as f:
            json.dump({"function": function, "args": _encode(list(args), work),
                       "kwargs": _encode(kwargs, work), "result": result}, f)
        proc = subprocess.run(
            [sys.executable, "-c", _ENTRY, request],
            env=environment(backend, pythonpath, env), timeout=timeout, text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
        )
        output = proc.stdout or ""
        failure = None
        if proc.returncode != 0 and os.path.exists(result):
            with open(result) as f:
                failure = json.load(f).get("__error__")
        if raise_errors and failure:
            error = _child_error(failure, backend)
            if error is not None:
                raise error
        if proc.returncode != 0 or not os.path.exists(result):
            raise BackendCallError(
                f"{function} under KERAS_BACKEND={backend} failed with exit code "
                f"{proc.returncode}" + (f":\n{output[-4000:]}" if output else "."),
                proc.returncode, output)
        with open(result) as f:
            return _decode(json.load(f))


def _serve_request(request_path):
    with open(request_path) as f:
        request = json.load(f)
    module_name, _, name = request["function"].partition(":")
    function = getattr(importlib.import_module(module_name), name)
    try:
        value = function(*_decode(request["args"]), **_decode(request["kwargs"]))
    except Exception as error:  # its type and message go back (run_under's raise_errors)
        _write_result(request["result"], {"__error__": {
            "module": type(error).__module__, "name": type(error).__qualname__,
            "message": str(error), "traceback": traceback.format_exc()}})
        raise
    _write_result(request["result"], _encode(value, os.path.dirname(request["result"])))


def _write_result(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    _serve_request(sys.argv[1])
