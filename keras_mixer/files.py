"""Writing files atomically: readers never see a half-written checkpoint or image.

Everything is written under a temporary dot-name next to its target and renamed
into place when complete. A temporary name says who wrote it,
``.tmp-p<pid>h<host>-...`` (``<host>``: 6 hex digits of a hash of the host
name), so that what a killed writer left behind can be recognised and removed
later (:func:`remove_stale_temps`) without touching the work of a live one.

Also here: the one rule for names that become paths (:func:`check_name`), and
the one message for a full disk (:func:`disk_full_errors`).
"""

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile

TEMP_PREFIX = ".tmp-"
# Entries whose writer cannot be checked (another host, an older name) are stale after this long unchanged.
UNKNOWN_WRITER_MAX_AGE_S = 3600.0
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_WRITER = re.compile(r"\.tmp-p(\d+)h([0-9a-f]{6})-")
# Longest target name that goes whole into a temporary name (file names stop at 255 bytes).
_MAX_NAMED_TARGET = 200
# A model name (TF Serving's model_name, an export's file-name prefix): one path component of
# these characters, not starting with a dot (dot-names are temporary, "." and ".." are not names).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
NAME_RULE = ("one path component of at most 128 letters, digits, '_', '-' and '.', not starting "
             "with '.' or '-'")
# errno values of a write that found no room: the disk, the file size limit (ulimit -f), the quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class DiskFullError(OSError):
    """A write found no room (disk full, ``ulimit -f``, quota); the message says what to do."""


def check_name(name, what="model name"):
    """Return ``name`` when it is a safe model name, else raise a ``ValueError`` naming the rule.

    A model name becomes a path component (``EXPORT_DIR/NAME/VERSION``,
    ``EXPORT_DIR/NAME.MODE.tflite``) and a URL component (``/v1/models/NAME``), so
    it is one component of safe characters (:data:`NAME_RULE`), as TF Serving names
    models: ``../x``, ``a/b``, ``""``, ``.`` and absolute paths are refused.

    Args:
        name: the name to check.
        what: how the message calls it (``"--export-name"``, ...).

    Returns:
        ``name``.

    Example:
        >>> check_name("mixer_b16")
        'mixer_b16'
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"Invalid {what} {name!r}: a model name is {NAME_RULE}.")
    return name


@contextlib.contextmanager
def disk_full_errors(what, advice="free some space and run the same command again"):
    """Turn a write that found no room into one :class:`DiskFullError` saying what to do.

    Recognises ``OSError`` with ``ENOSPC``, ``EFBIG`` (the file size limit, ``ulimit
    -f``) or ``EDQUOT``, and errors of TensorFlow or h5py whose message carries one of
    those reasons; anything else passes unchanged.

    Args:
        what: what was being written, for the message (``"the export"``).
        advice: what was kept and what the user should do next.

    Example:
        >>> with disk_full_errors("the export"):
        ...     write_text("out.txt", "...")
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        reason = _disk_full_reason(error)
        if reason is None:
            raise
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        raise DiskFullError(f"No room to write {what}{where}: {reason}; {advice}.") from error


def _disk_full_reason(error):
    """The reason a write failed for lack of room, or ``None`` (``error`` and its causes)."""
    reasons = {code: os.strerror(code) for code in DISK_FULL_ERRNOS}
    explained = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file size limit "
                 "(ulimit -f) is reached", errno.EDQUOT: "the disk quota is reached"}
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in reasons:
            return explained[error.errno]
        text = str(error)
        for code, reason in reasons.items():
            if reason in text:
                return explained[code]
        error = error.__cause__ or error.__context__
    return None


def temp_prefix():
    """The prefix of this process's temporary names: ``.tmp-p<pid>h<host>-``."""
    return f"{TEMP_PREFIX}p{os.getpid()}h{_HOST}-"


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary name ends with the name of ``path`` (so it keeps its extension:
    some writers look at it) and is removed if writing fails. Temporary files for
    the same ``path`` left by writers that were killed are removed first.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    if len(base.encode()) <= _MAX_NAMED_TARGET:
        suffix = "-" + base
        remove_stale_temps(directory, suffix=suffix)
    else:
        suffix = base[base.index("."):] if "." in base else ""
    handle, temp_path = tempfile.mkstemp(prefix=temp_prefix(), suffix=suffix, dir=directory)
    os.close(handle)
    try:
        yield temp_path
        os.chmod(temp_path, 0o666 & ~_umask())  # mkstemp makes 0600; use normal permissions
        os.replace(temp_path, path)
    finally:
        if os.path.exists(temp_path):
            os.remove(temp_path)


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Yield a temporary folder next to ``path``; rename it to ``path`` when the block succeeds.

    A killed writer leaves only a temporary folder (removed by the next writer), never
    a half-written ``path``. An existing non-empty ``path`` is an error unless
    ``overwrite``: then it is moved aside, the new folder renamed in, the old removed.
    """
    path = os.path.abspath(os.fspath(path))
    parent, base = os.path.split(path)
    if os.path.exists(path) and not (os.path.isdir(path) and (overwrite or not os.listdir(path))):
        raise FileExistsError(f"{path} exists" + ("" if os.path.isdir(path) else " and is a file")
                              + "; choose a new folder" + (" or pass overwrite=True."
                                                           if os.path.isdir(path) else "."))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temps(parent, suffix="-" + base)
    temp = tempfile.mkdtemp(prefix=temp_prefix(), suffix="-" + base, dir=parent)
    try:
        yield temp
        os.chmod(temp, 0o777 & ~_umask())  # mkdtemp makes it private
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=temp_prefix(), suffix="-old-" + base, dir=parent)
            os.replace(path, old)  # onto the empty folder just made
            os.replace(temp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            shutil.rmtree(temp, ignore_errors=True)


def remove_stale_temps(directory, suffix="", max_age=UNKNOWN_WRITER_MAX_AGE_S):
    """Remove ``.tmp-*`` files and folders in ``directory`` that killed writers left behind.

    An entry is stale when the process named in it ran on this host and is gone;
    when its writer cannot be checked (written on another host sharing the
    folder, or by an older keras-mixer without the writer in the name), when
    nothing in it changed for ``max_age`` seconds. Entries of live processes are
    never touched. Only names ending with ``suffix`` are considered.

    Returns:
        The removed paths.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        if not (name.startswith(TEMP_PREFIX) and name.endswith(suffix)):
            continue
        path = os.path.join(directory, name)
        try:
            if not _is_stale(name, path, max_age):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except OSError:
            continue  # gone meanwhile, or not ours to remove: leave it
        removed.append(path)
    return removed


def _is_stale(name, path, max_age):
    match = _WRITER.match(name)
    if match and match.group(2) == _HOST and os.name == "posix":
        return not _process_alive(int(match.group(1)))
    return time.time() - _newest_mtime(path) > max_age


def _process_alive(pid):
    """Whether process ``pid`` exists on this host (POSIX: signal 0 checks without sending)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def _newest_mtime(path):
    newest = os.lstat(path).st_mtime
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for entry in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, entry)).st_mtime)
    return newest


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as temp, open(temp, "w", encoding="utf-8") as f:
        f.write(text)
    return path


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
