"""The bad-image check, paid once per file: which image files the pipeline's decoder cannot read.

:func:`find_unreadable` decodes files with the pipeline's own decoder
(:func:`keras_mixer.images.decode`), so a file that passes never stops an epoch.
:func:`check_files` remembers each file's result, keyed by its path (relative to
the image folder), size and modification time, so that a restart, a resumed run or
another run on the same folder decodes only the files it has not seen before or
that changed since.

Where the results are kept: beside the data, in ``FOLDER/.keras-mixer-checked/``
(a hidden folder, which the folder scan passes over). The result belongs to the
files, not to a run: every run on the folder (a resumed one, one with other
settings in another run directory, another host of a multi-host job that shares
the folder) finds it there. When the folder is not writable, the results go to the
keras-mixer cache (``$KERAS_HOME/keras_mixer/checked/``, one folder per image
folder), which serves the runs of this user on this machine.

Each writer keeps its own file, ``KEY.json`` (``train-0-of-1``: the split and the
shard of the files it checked), written through a temporary file and a rename, so
that concurrent writers never interleave and a reader never sees half a file. A
reader merges every file it finds; an entry counts only while the file's size and
modification time are still the same; a file that does not parse (torn by a full
disk, truncated by a copy) or that another version wrote is ignored, and its
files are checked again.
"""

import hashlib
import json
import os
import time

import numpy as np
import tensorflow as tf

from keras_mixer import images
from keras_mixer.checkpoints.presets import cache_directory
from keras_mixer.files import write_text

CACHE_FOLDER = ".keras-mixer-checked"
FORMAT = "keras-mixer image check"
VERSION = 1
# The decoder whose verdicts the cache holds: results of another decoder are not reused.
DECODER = "tf.io.decode_image(channels=3, expand_animations=False)"
SAVE_EVERY_S = 60.0  # a long check saves what it found so far this often (a kill loses less)
CHUNK = 20_000  # files decoded between progress lines and saves


def find_unreadable(paths, log=None):
    """``[(path, reason)]`` of the files that :func:`keras_mixer.images.decode` cannot read.

    Every file is read and decoded in parallel with the pipeline's own decoder, so
    a file that passes never stops an epoch (a valid header with a corrupt body does
    not pass).

    Args:
        paths: image file paths.
        log: called with a progress line every :data:`CHUNK` files (``None``: quiet).

    Returns:
        The unreadable files with the decoder's reason, in the order of ``paths``.
    """
    paths = list(paths)
    readable = np.zeros(len(paths), dtype=bool)
    for start in range(0, len(paths), CHUNK):
        _decode_chunk(paths, start, min(start + CHUNK, len(paths)), readable)
        if log is not None and start + CHUNK < len(paths):
            log(f"  checked {start + CHUNK:,} of {len(paths):,} images")
    return [(paths[i], _reason(paths[i])) for i in np.flatnonzero(~readable)]


def _decode_chunk(paths, start, stop, readable):
    def check(index, path):
        return index, tf.shape(images.decode(tf.io.read_file(path)))  # uses the image: decodes

    indices = tf.range(start, stop, dtype=tf.int64)
    checked = tf.data.Dataset.from_tensor_slices((indices, paths[start:stop]))
    # Batched: the Python loop runs once per 1,024 files, not once per file (5x faster).
    checked = checked.map(check, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors().batch(1024)
    for index, _ in checked.as_numpy_iterator():
        readable[index] = True


def _reason(path):
    """The decoder's one-line reason why ``path`` does not decode."""
    try:
        images.decode(tf.io.read_file(path))
        return "unreadable"
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error))
        return message.split("}}")[-1].strip().splitlines()[0] if message else "unreadable"


def cache_folders(folder):
    """``(beside the data, in the user's keras-mixer cache)``: where results for ``folder`` live."""
    real = os.path.realpath(folder)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return (os.path.join(folder, CACHE_FOLDER),
            os.path.join(cache_directory(), "checked", f"{os.path.basename(real)}-{digest}"))


def _writable_cache_folder(folder):
    beside, user = cache_folders(folder)
    if os.path.isdir(beside) and os.access(beside, os.W_OK):
        return beside
    if os.access(folder, os.W_OK):
        try:
            os.makedirs(beside, exist_ok=True)
            return beside
        except OSError:
            pass
    return user


def read_cache(folder):
    """``{relative path: (size, mtime_ns, reason or None)}`` from every readable cache file of ``folder``."""
    known = {}
    for cache in cache_folders(folder):
        try:
            names = sorted(n for n in os.listdir(cache) if n.endswith(".json") and not n.startswith("."))
        except OSError:
            continue
        for name in names:
            known.update(_read_cache_file(os.path.join(cache, name)))
    return known


def _read_cache_file(path):
    """The entries of one cache file; ``{}`` for a file that is torn, foreign or of another version."""
    try:
        with open(path, "rb") as f:
            content = json.loads(f.read())
        if (content.get("format"), content.get("version"), content.get("decoder")) != (
                FORMAT, VERSION, DECODER):
            return {}
        names, sizes, mtimes = content["paths"], content["sizes"], content["mtimes"]
        unreadable = content["unreadable"]
        if not (len(names) == len(sizes) == len(mtimes)) or not isinstance(unreadable, dict):
            return {}
        return {name: (size, mtime, unreadable.get(name))
                for name, size, mtime in zip(names, sizes, mtimes)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_cache(path, names, stats, reasons):
    """Write the results of ``names`` (those with a stat) to ``path`` atomically."""
    kept = [i for i, stat in enumerate(stats) if stat is not None and i in reasons]
    content = {"format": FORMAT, "version": VERSION, "decoder": DECODER,
               "paths": [names[i] for i in kept],
               "sizes": [stats[i][0] for i in kept], "mtimes": [stats[i][1] for i in kept],
               "unreadable": {names[i]: reasons[i] for i in kept if reasons[i] is not None}}
    try:
        write_text(path, json.dumps(content, separators=(",", ":")))
    except OSError:
        pass  # a cache that cannot be written costs a check next time, nothing else


def _stat(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None  # gone or unreadable: the decoder says why, and nothing is remembered
    return stat.st_size, stat.st_mtime_ns


def check_files(paths, folder, key, log=None):
    """``[(path, reason)]`` of the unreadable files among ``paths``, decoding only what is new.

    A file whose path, size and modification time match a remembered result is not
    decoded again; every other file is decoded (:func:`find_unreadable`) and its result
    remembered, in ``FOLDER/.keras-mixer-checked/KEY.json`` (see the module docstring).

    Args:
        paths: image files inside ``folder``.
        folder: the image folder the results belong to (paths are kept relative to it).
        key: this writer's name: the split and shard it checks (``"train-0-of-2"``).
        log: called with progress lines when files must be decoded (``None``: quiet).

    Returns:
        The unreadable files with the decoder's reason, in the order of ``paths``.
    """
    paths = list(paths)
    prefix = os.path.join(folder, "")
    names = [p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, folder) for p in paths]
    stats = [_stat(p) for p in paths]
    known = read_cache(folder)
    reasons = {}
    todo = []
    for i, (name, stat) in enumerate(zip(names, stats)):
        entry = known.get(name)
        if stat is not None and entry is not None and (entry[0], entry[1]) == stat:
            reasons[i] = entry[2]
        else:
            todo.append(i)
    target = os.path.join(_writable_cache_folder(folder), f"{key}.json")
    if todo:
        if log is not None:
            log(f"checking {len(todo):,} of {len(paths):,} images in {folder} with the pipeline's "
                f"decoder (once: results are kept in {os.path.dirname(target)})")
        saved = time.monotonic()
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            bad = dict(find_unreadable([paths[i] for i in chunk]))
            for i in chunk:
                reasons[i] = bad.get(paths[i])
            done = start + len(chunk)
            if done < len(todo):
                if log is not None:
                    log(f"  checked {done:,} of {len(todo):,} images")
                if time.monotonic() - saved > SAVE_EVERY_S:
                    _write_cache(target, names, stats, reasons)
                    saved = time.monotonic()
    if todo:
        _write_cache(target, names, stats, reasons)
    return [(paths[i], reasons[i]) for i in range(len(paths)) if reasons[i] is not None]
