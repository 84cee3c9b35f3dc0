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

Each writer keeps its own file, ``KEY.json`` (``train-all``, ``train-0-of-2``: the
split and the shard of the files it checked), written through a temporary file and a
rename, so that concurrent writers never interleave and a reader never sees half a file. A
reader merges every file it finds; an entry counts only while the file's size and
modification time are still the same; a file that does not parse (torn by a full
disk, truncated by a copy) or that another version wrote is ignored, and its
files are checked again.
"""

import hashlib
import json
import operator
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
PROGRESS_EVERY = 20_000  # files decoded between progress lines
BATCH = 1024


def find_unreadable(paths, log=None):
    """``[(path, reason)]`` of the files that :func:`keras_mixer.images.decode` cannot read.

    Every file is read and decoded in parallel with the pipeline's own decoder, so
    a file that passes never stops an epoch (a valid header with a corrupt body does
    not pass).

    Args:
        paths: image file paths.
        log: called with a progress line every :data:`PROGRESS_EVERY` files (``None``: quiet).

    Returns:
        The unreadable files with the decoder's reason, in the order of ``paths``.
    """
    paths = list(paths)
    readable = np.zeros(len(paths), dtype=bool)
    for done in decode_all(paths, readable):
        if log is not None and done % PROGRESS_EVERY < BATCH and done < len(paths):
            log(f"  checked {done:,} of {len(paths):,} images")
    return [(paths[i], _reason(paths[i])) for i in np.flatnonzero(~readable)]


def decode_all(paths, readable):
    """Decode every file in one parallel pass, setting ``readable[i]`` for each that decodes.

    A generator: after each batch it yields how many files are decided (every file
    before that index is: readable, or not if ``readable`` says not).
    """
    @tf.autograph.experimental.do_not_convert  # plain TensorFlow ops: 0.4 s less per start
    def check(index, path):
        return index, tf.shape(images.decode(tf.io.read_file(path)))  # uses the image: decodes

    if not paths:
        return
    indices = tf.range(len(paths), dtype=tf.int64)
    checked = tf.data.Dataset.from_tensor_slices((indices, tf.constant(paths, tf.string)))
    # Batched: the Python loop runs once per batch, not once per file (5x faster); in order
    # (deterministic), so that the last index of a batch decides every file before it.
    checked = checked.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for index, _ in checked.ignore_errors().batch(BATCH).as_numpy_iterator():
        readable[index] = True
        yield int(index[-1]) + 1
    yield len(paths)


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


def _cache_files(folder):
    """Every cache file of ``folder`` (both places)."""
    found = []
    for cache in cache_folders(folder):
        try:
            names = os.listdir(cache)
        except OSError:
            continue
        found += [os.path.join(cache, n) for n in sorted(names)
                  if n.endswith(".json") and not n.startswith(".")]
    return found


def read_cache(folder):
    """``{relative path: (size, mtime_ns, reason or None)}`` from every readable cache file of ``folder``."""
    known = {}
    for path in _cache_files(folder):
        columns = _read_cache_file(path)
        if columns is not None:
            names, sizes, mtimes, unreadable = columns
            known.update({name: (size, mtime, unreadable.get(name))
                          for name, size, mtime in zip(names, sizes, mtimes)})
    return known


def _read_cache_file(path):
    """``(paths, sizes, mtimes, {path: reason})`` of one cache file; ``None`` for a file that is
    torn, foreign or of another version."""
    try:
        with open(path, "rb") as f:
            content = json.loads(f.read())
        if (content.get("format"), content.get("version"), content.get("decoder")) != (
                FORMAT, VERSION, DECODER):
            return None
        columns = content["paths"], content["sizes"], content["mtimes"], content["unreadable"]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    names, sizes, mtimes, unreadable = columns
    if not (isinstance(names, list) and isinstance(sizes, list) and isinstance(mtimes, list)
            and isinstance(unreadable, dict) and len(names) == len(sizes) == len(mtimes)):
        return None
    return columns


class _Results:
    """What is known of each of ``names`` (relative paths) as they are now (``sizes``, ``mtimes``):
    ``known[i]``, and the reason of each unreadable one (``bad``: index -> reason)."""

    def __init__(self, names, sizes, mtimes):
        self.names, self.sizes, self.mtimes = names, sizes, mtimes
        self.size_array = np.asarray(sizes, np.int64)
        self.mtime_array = np.asarray(mtimes, np.int64)
        self.known = np.zeros(len(names), dtype=bool)
        self.bad = {}
        self._index = None

    def index(self, name):
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self.names)}
        return self._index.get(name)

    def take(self, columns):
        """Take the results of a cache file's ``columns`` for the files it holds unchanged."""
        cached_names, cached_sizes, cached_mtimes, unreadable = columns
        if cached_names == self.names:  # the usual case: the same files as last time, at once
            same = ((np.asarray(cached_sizes, np.int64) == self.size_array)
                    & (np.asarray(cached_mtimes, np.int64) == self.mtime_array))
        else:
            same = np.zeros(len(self.names), dtype=bool)
            for j, name in enumerate(cached_names):
                i = self.index(name)
                if (i is not None and cached_sizes[j] == self.sizes[i]
                        and cached_mtimes[j] == self.mtimes[i]):
                    same[i] = True
        new = same & ~self.known & (self.size_array >= 0)
        self.known |= new
        for name, reason in unreadable.items():
            i = self.index(name)
            if i is not None and new[i]:
                self.bad[i] = reason

    def write(self, path):
        """Write the known results (of files with a stat) to ``path`` atomically."""
        kept = self.known & (self.size_array >= 0)
        if kept.all():
            names, sizes, mtimes = self.names, self.sizes, self.mtimes
        else:
            where = np.flatnonzero(kept)
            names = [self.names[i] for i in where]
            sizes, mtimes = self.size_array[where].tolist(), self.mtime_array[where].tolist()
        content = {"format": FORMAT, "version": VERSION, "decoder": DECODER,
                   "paths": names, "sizes": sizes, "mtimes": mtimes,
                   "unreadable": {self.names[i]: reason for i, reason in self.bad.items()
                                  if kept[i]}}
        try:
            write_text(path, json.dumps(content, separators=(",", ":")))
        except OSError:
            pass  # a cache that cannot be written costs a check next time, nothing else


def _stats(paths):
    """``(sizes, mtimes)``; -1 where a file cannot be stat'ed (gone: its check says why)."""
    try:
        stats = list(map(os.stat, paths))  # a loop in C: a million files, 4 s less than in Python
    except OSError:
        return _stats_one_by_one(paths)
    return [s.st_size for s in stats], [s.st_mtime_ns for s in stats]


def _stats_one_by_one(paths):
    sizes, mtimes = [], []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
            continue
        sizes.append(stat.st_size)
        mtimes.append(stat.st_mtime_ns)
    return sizes, mtimes


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
    if all(map(operator.methodcaller("startswith", prefix), paths)):  # C loops: 1M paths in 0.2 s
        names = list(map(operator.itemgetter(slice(len(prefix), None)), paths))
    else:
        names = [os.path.relpath(p, folder) for p in paths]
    results = _Results(names, *_stats(paths))
    target = os.path.join(_writable_cache_folder(folder), f"{key}.json")
    # This writer's own file first (usually it holds everything), then the others'.
    for path in sorted(_cache_files(folder), key=lambda p: os.path.basename(p) != f"{key}.json"):
        if results.known.all():
            break
        columns = _read_cache_file(path)
        if columns is not None:
            results.take(columns)
    todo = np.flatnonzero(~results.known)
    if len(todo):
        if log is not None:
            log(f"checking {len(todo):,} of {len(paths):,} images in {folder} with the pipeline's "
                f"decoder (once: results are kept in {os.path.dirname(target)})")
        readable, saved, logged = np.zeros(len(todo), dtype=bool), time.monotonic(), 0
        for done in decode_all([paths[i] for i in todo], readable):
            if log is not None and done - logged >= PROGRESS_EVERY and done < len(todo):
                log(f"  checked {done:,} of {len(todo):,} images")
                logged = done
            if time.monotonic() - saved > SAVE_EVERY_S and done < len(todo):
                results.known[todo[:done][readable[:done]]] = True  # the bad ones: at the end
                results.write(target)
                saved = time.monotonic()
        for i in todo[~readable]:
            results.bad[i] = _reason(paths[i])
        results.known[todo] = True
        results.write(target)
    return [(paths[i], results.bad[i]) for i in sorted(results.bad)]
