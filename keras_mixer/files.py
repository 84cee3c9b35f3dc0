"""Writing files atomically: readers never see a half-written checkpoint or image."""

import contextlib
import os
import tempfile
import zipfile

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


# ----------------------------------------------------------------------------- unreadable files


def format_bytes(size):
    """``4 TiB``, ``1.5 MiB``, ``512 bytes``: a size for messages."""
    size = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.3g} {unit}"
        size /= 1024
    return None  # not reached


_MAGIC = (
    (b"\x89HDF\r\n\x1a\n", "is an HDF5 file"),
    (b"\x93NUMPY", "is a single NumPy array (.npy)"),
    (b"\x1f\x8b", "is gzip-compressed"),
)


def describe_contents(path):
    """What the file at ``path`` holds, judged by its first bytes: a phrase for error messages.

    ``"is empty (0 bytes)"``, ``"is a text file (it starts with 'hello')"``,
    ``"is a truncated or corrupt zip archive (...)"``, ``"is a zip archive"``, ...
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        if zipfile.is_zipfile(path):
            return f"is a zip archive ({format_bytes(size)})"
        return (f"is a truncated or corrupt zip archive ({format_bytes(size)}; the end of "
                "the archive, its table of contents, is missing)")
    for magic, description in _MAGIC:
        if head.startswith(magic):
            return description
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "is a Python pickle"
    text = _as_text(head)
    if text is not None:
        start = " ".join(text.split())[:60]
        if start.lower().startswith(("<!doctype html", "<html", "<?xml")):
            return (f"is an HTML/XML page, not a weights file (an error page saved by a "
                    f"failed download?; it starts with {start!r})")
        return f"is a text file (it starts with {start!r})"
    return f"is not a known format (it starts with bytes {head[:8].hex(' ')})"


def _as_text(head):
    """``head`` decoded when it looks like text (UTF-8, printable), else ``None``."""
    if b"\x00" in head:
        return None
    for cut in range(4):  # a multi-byte character may be cut at the end
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return text if text and printable >= 0.95 * len(text) else None
