"""Writing files atomically: readers never see a half-written checkpoint or image."""

import contextlib
import os
import tempfile

TEMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary file keeps the extension of ``path`` (some writers look at it)
    and is removed if writing fails.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    suffix = base[base.index("."):] if "." in base else ""
    handle, temp_path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=directory)
    os.close(handle)
    try:
        yield temp_path
        os.chmod(temp_path, 0o666 & ~_umask())  # mkstemp makes 0600; use normal permissions
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as temp, open(temp, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def write_lines(path, lines):
    """Write one line per item, atomically."""
    return write_text(path, "".join(f"{line}\n" for line in lines))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
