"""Starting test workers (``tests/workers``) under another backend or as parallel processes."""

import os
import signal
import subprocess
import sys

from keras_mixer import backend

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)


def run_worker(backend_name, function, *args, **kwargs):
    """``function`` (``"workers.module:name"``) called under ``backend_name`` in a subprocess."""
    return backend.run_under(backend_name, function, *args, pythonpath=[TESTS], **kwargs)


def worker_env(backend_name, **extra):
    """The environment of a worker process: backend, imports of keras_mixer and ``tests/``."""
    return backend.environment(backend_name, pythonpath=[TESTS], extra=extra)


def start_module(module, args, env, **popen_kwargs):
    """``python -m module args`` (a worker, or a keras-mixer module) as a ``Popen``."""
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], env=env, cwd=ROOT,
                            **popen_kwargs)


def run_script(name, args, backend_name=None, env=None, **kwargs):
    """``python scripts/NAME ARGS`` as a user runs it; returns the ``CompletedProcess``.

    Runs under ``backend_name`` (default: this process's backend), importing this
    checkout's ``keras_mixer``.
    """
    import keras

    env = env or worker_env(backend_name or keras.backend.backend())
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *map(str, args)],
                          env=env, capture_output=True, text=True, cwd=ROOT, **kwargs)


def descendants(pid):
    """The ids of ``pid``'s live child processes and theirs (from ``/proc``; Linux)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):  # not a process, or gone
            continue
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def kill_tree(process):
    """SIGKILL a ``Popen`` and every process under it (torchrun starts its workers in
    sessions of their own), then reap it."""
    for pid in [*descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # gone already
            pass
    process.wait()


# The child sets its own file size limit before anything starts (no preexec_fn: forking a
# process with JAX's threads can deadlock). Python ignores SIGXFSZ, so a write past the limit
# fails with EFBIG, as on a full disk.
_LIMITED = ("import resource, runpy, sys; limit = int(sys.argv.pop(1)); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
            "runpy.run_module('keras_mixer.cli', run_name='__main__', alter_sys=True)")


def run_cli_with_file_limit(args, max_file_bytes, backend_name, timeout=600):
    """``keras-mixer ARGS`` in a process whose files may not grow past ``max_file_bytes``
    (``ulimit -f``); returns the ``CompletedProcess``."""
    env = worker_env(backend_name, KERAS_MIXER_COMMAND=str(args[0]))
    return subprocess.run([sys.executable, "-c", _LIMITED, str(max_file_bytes), *map(str, args)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
