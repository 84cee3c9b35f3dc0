"""Prepared records: an image folder written once as the TFRecord shards of a TFDS dataset.

``keras-mixer prepare FOLDER OUT`` (:func:`prepare`) writes, for the training and
the test split of an image folder (as :func:`keras_mixer.data.load_splits` sees
them: the same files, labels, classes and order)::

    OUT/images-train.tfrecord-00000-of-00008 ...   tf.train.Example records:
    OUT/images-test.tfrecord-00000-of-00001        "image" (the file's bytes), "label"
    OUT/dataset_info.json, features.json, label.labels.txt   TFDS metadata
    OUT/keras-mixer-prepare.json                   what was written from where

The format is TFDS's own ("external TFRecord" datasets, written with
``tfds.features.FeaturesDict.serialize_example`` and
``tfds.folder_dataset.write_metadata``), so ``tfds.builder_from_directory(OUT)``
reads it, and ``keras-mixer train --data OUT`` reads it through
:func:`keras_mixer.data.tfds_source`: no folder scan, no per-file check at start
(every image was checked once while preparing), large sequential reads, and each
process of a multi-host job reads only its own part of the shards.

Each image keeps its encoded bytes (no re-encoding: the pixels are the folder's).
Shards are written through a temporary file and a rename into ``OUT.partial/``,
which becomes ``OUT`` by one rename once complete: a kill leaves ``OUT.partial/``,
and the same command goes on from the shards already written.
"""

import hashlib
import json
import os
import shutil
import time

import tensorflow as tf

from keras_mixer import data
from keras_mixer.files import atomic_output, remove_stale_temps, write_text

DATASET_NAME = "images"
PLAN_FILE = "keras-mixer-prepare.json"
PLAN_FORMAT = "keras-mixer prepare"
PLAN_VERSION = 1
SHARD_BYTES = 128 * 2**20  # about this much image data per shard (TFDS advises 100-200 MB)
SPLITS = ("train", "test")
PARTIAL_SUFFIX = ".partial"


def shard_name(split, index, count):
    """The file name of shard ``index`` of ``count`` of ``split`` (TFDS's default template)."""
    return f"{DATASET_NAME}-{split}.tfrecord-{index:05d}-of-{count:05d}"


def _shard_lengths(sizes, shard_bytes):
    """The lengths of shards holding about ``shard_bytes`` of files each (at least one shard)."""
    count = min(max(1, -(-sum(sizes) // max(shard_bytes, 1))), max(len(sizes), 1))
    return [len(range(i, len(sizes), count)) for i in range(count)]


def _files_digest(folder, paths, sizes):
    """A digest of the files' paths, sizes and modification times: which files a plan is of."""
    digest = hashlib.sha256()
    for path, size in zip(paths, sizes):
        mtime = os.stat(path).st_mtime_ns
        digest.update(f"{os.path.relpath(path, folder)}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def plan(folder, bad_images="skip", shard_bytes=SHARD_BYTES, log=None):
    """What :func:`prepare` writes for ``folder``: ``(plan dict, {split: (paths, labels)})``.

    Reads the folder as training does (the same files, in the same order), checking
    every image once with the pipeline's decoder (the check is remembered beside the
    data: :mod:`keras_mixer.image_check`).
    """
    folder = os.path.abspath(folder)
    for split in SPLITS:  # a missing split folder fails before any image is checked
        data.split_root(folder, split)
    splits, files, unreadable, class_names = {}, {}, [], None
    for split in SPLITS:
        split_folder, paths, labels, names, bad, _ = data.folder_files(
            folder, split, class_names=class_names, bad_images=bad_images, exact_shards=True,
            log=log)
        if class_names is None:
            if len(names) < 2:
                raise ValueError(f"Image folder {folder!r} has {len(names)} class: a classifier "
                                 "needs at least 2 classes.")
            class_names = names
        sizes = [os.path.getsize(p) for p in paths]
        lengths = _shard_lengths(sizes, shard_bytes)
        splits[split] = {"folder": split_folder, "examples": len(paths), "shard_lengths": lengths,
                         "bytes": sum(sizes), "files": _files_digest(split_folder, paths, sizes)}
        files[split] = (paths, labels)
        unreadable += [[split, path, reason] for path, reason in bad]
    content = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "source": folder,
               "class_names": class_names, "splits": splits, "unreadable": unreadable}
    return content, files


def read_plan(folder):
    """The plan a (partly) prepared folder was written by, or ``None``."""
    try:
        with open(os.path.join(folder, PLAN_FILE), encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(content, dict) and (content.get("format"), content.get("version")) == (
        PLAN_FORMAT, PLAN_VERSION)
    return content if ok else None


def _same_files(a, b):
    keys = ("class_names", "splits")
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in keys)


def prepare(folder, out, bad_images="skip", shard_bytes=SHARD_BYTES, log=print):
    """Write the image folder ``folder`` as TFRecord shards of a TFDS dataset in ``out``.

    Resumable: a killed run leaves ``OUT.partial/``, and running the same call again
    writes only the shards that are missing. ``out`` appears, whole, at the end.

    Args:
        folder: an image folder (``root/class/*`` or ``root/{train,test}/class/*``).
        out: the folder to create (it must not exist, or hold records of the same files).
        bad_images: ``"skip"`` images the decoder cannot read (listed in the result and
            in ``OUT/keras-mixer-prepare.json``) or ``"fail"`` with a ``ValueError``.
        shard_bytes: about this many bytes of image data per shard.
        log: called with progress lines (``None``: quiet).

    Returns:
        A dict: ``out``, ``examples`` per split, ``unreadable`` ``[[split, path, reason]]``,
        ``shards_written`` (this call), ``seconds``.

    Example:

    ```python
    records.prepare("photos", "photos-records")
    source = data.load_source("photos-records", "train")
    ```
    """
    start = time.monotonic()
    log = log or (lambda message: None)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder {folder!r} does not exist.")
    out = os.path.abspath(out)
    if os.path.abspath(folder) == out or out.startswith(os.path.join(os.path.abspath(folder), "")):
        raise ValueError(f"Write the records outside the image folder: {out!r} is inside {folder!r}.")
    wanted, files = plan(folder, bad_images, shard_bytes, log)
    if os.path.exists(out):
        if data.is_prepared(out) and _same_files(read_plan(out), wanted):
            log(f"{out} already holds these images as records: nothing to do")
            return _result(out, wanted, 0, start)
        if os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        else:
            raise FileExistsError(
                f"{out!r} exists and does not hold records of these images (the folder changed, "
                f"or it is something else): remove it or choose another output folder.")
    partial = out + PARTIAL_SUFFIX
    left = read_plan(partial)
    if left is not None and not _same_files(left, wanted):  # a killed run of other files left it
        shutil.rmtree(partial, ignore_errors=True)
    elif left is None and os.path.isdir(partial) and os.listdir(partial):
        raise FileExistsError(f"{partial!r} exists and was not left by keras-mixer prepare: "
                              f"remove it or choose another output folder.")
    os.makedirs(partial, exist_ok=True)
    remove_stale_temps(partial)
    write_text(os.path.join(partial, PLAN_FILE), json.dumps(wanted, indent=1))
    for split, path, reason in wanted["unreadable"]:
        log(f"skipped undecodable image ({split}): {path}: {reason}")

    written, features = 0, _features(wanted["class_names"])
    for split in SPLITS:
        written += _write_split(partial, split, wanted["splits"][split], *files[split], features,
                                log)
    _write_metadata(partial, wanted)
    try:
        os.rename(partial, out)
    except OSError:  # another run finished the same work first
        if not (data.is_prepared(out) and _same_files(read_plan(out), wanted)):
            raise
        shutil.rmtree(partial, ignore_errors=True)
    log(f"prepared {out}: " + ", ".join(
        f"{s['examples']:,} {split} images in {len(s['shard_lengths'])} shards"
        for split, s in wanted["splits"].items()) + f" ({time.monotonic() - start:.0f} s)")
    return _result(out, wanted, written, start)


def _result(out, wanted, written, start):
    return {"out": out, "examples": {s: v["examples"] for s, v in wanted["splits"].items()},
            "unreadable": wanted["unreadable"], "shards_written": written,
            "seconds": round(time.monotonic() - start, 1)}


def _features(class_names):
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=class_names),
    })


def _write_split(partial, split, spec, paths, labels, features, log):
    """Write the missing shards of one split (consecutive runs of its files, in order);
    returns how many were written."""
    lengths = spec["shard_lengths"]
    count, written, done, begin, offset = len(lengths), 0, 0, time.monotonic(), 0
    for index, length in enumerate(lengths):
        target = os.path.join(partial, shard_name(split, index, count))
        members = slice(offset, offset + length)
        offset += length
        if os.path.exists(target):
            continue
        _write_shard(target, paths[members], labels[members], features)
        written += 1
        done += length
        rate = done / max(time.monotonic() - begin, 1e-9)
        left = sum(lengths[index + 1:]) / rate
        log(f"{split}: shard {index + 1} of {count} written ({offset:,} of {sum(lengths):,} "
            f"images, {rate:,.0f} img/s, about {left:.0f} s left)")
    return written


def _write_shard(target, paths, labels, features):
    """One TFRecord shard, written atomically: the files' bytes and labels, in order."""
    read = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    labels = iter(labels)
    with atomic_output(target) as temp, tf.io.TFRecordWriter(temp) as writer:
        for batch in read.as_numpy_iterator():
            for encoded in batch:
                writer.write(features.serialize_example({"image": encoded, "label": next(labels)}))


def _write_metadata(partial, wanted):
    import tensorflow_datasets as tfds

    split_infos = [tfds.core.SplitInfo(name=split, shard_lengths=spec["shard_lengths"],
                                       num_bytes=spec["bytes"])
                   for split, spec in wanted["splits"].items()]
    tfds.folder_dataset.write_metadata(
        data_dir=partial, features=_features(wanted["class_names"]), split_infos=split_infos,
        supervised_keys=("image", "label"), check_data=False,
        description=f"Image folder {wanted['source']} prepared by keras-mixer.")
