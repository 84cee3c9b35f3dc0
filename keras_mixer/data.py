"""Input pipelines: tf.data feeding Keras on JAX, TensorFlow and PyTorch.

Four sources, all yielding ``(uint8 image (H, W, 3), int label)`` (:class:`Source`):

- ``"digits"`` (the offline default): scikit-learn's bundled 8x8 handwritten
  digits (1,797 real images, no download), split 80/20 with a fixed seed;
- an image folder: ``root/class_name/*.jpg`` (or ``root/train/class_name/...``
  and ``root/test/class_name/...``), its files checked once for images the
  decoder cannot read (:mod:`keras_mixer.image_check`);
- a folder of TFRecord shards that ``keras-mixer prepare`` wrote from an image
  folder (a TFDS dataset: :mod:`keras_mixer.records`);
- any TFDS dataset by name (``cifar10``, ``imagenet2012``, ...) with ``data_dir``.

In a job of several processes each process reads and decodes only its own shard
of the data (``shard`` of :func:`load_source`; :mod:`keras_mixer.distribute`
says which shard is whose).

:func:`make_dataset` turns a source into batches of ``(float32 images in
[0, 255], one-hot float32 labels)``: the model rescales pixels itself. Training
batches get inception crop, flip, RandAugment (keras-cv) and MixUp/CutMix; eval
batches are resized (and optionally center-cropped). Randomness comes from
stateless ops keyed by seeds that a seeded stream gives each example and batch,
so a seed fixes every epoch's augmentations even with parallel maps, while each
epoch still differs from the last. A repeated training pipeline (what training
runs use) is a pure function of the seed and the batch index: each pass over
the data has a shuffle seed of its own and each example and batch an
augmentation seed made from its position, so a resumed run can start it at
the batch where it stopped and get what the uninterrupted run got.
"""

import dataclasses
import os
import socket
import threading

import numpy as np
import tensorflow as tf

from keras_mixer import compat, image_check, images
from keras_mixer.images import IMAGE_EXTENSIONS

AUTOTUNE = tf.data.AUTOTUNE
SPLIT_ALIASES = {"train": ("train",), "test": ("test", "val", "validation")}


BAD_IMAGES = ("skip", "fail")
# TFDS fetches prepared datasets from here first; unreachable, every download fails (after
# minutes of retries), so it is tried once, briefly, before any download.
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class DatasetUnavailableError(FileNotFoundError):
    """A TFDS dataset that is not prepared here and cannot be downloaded now."""


@dataclasses.dataclass
class Source:
    """A split of a dataset (this process's shard of it): unbatched examples plus metadata.

    ``dataset`` yields ``(element, label)``: the element is a uint8 image, or, where
    ``decode`` is given, what ``decode`` turns into one (an image file's path, a
    record's encoded bytes), so that a pipeline decodes only the examples it keeps
    (:func:`make_dataset` decodes after shuffling; :meth:`images` decodes at once).

    ``shard`` is ``(num_shards, index)`` of this process's part of the split and
    ``total_examples`` the examples of all shards (see :func:`load_source`).
    ``unreadable`` lists the ``(path, reason)`` of image files left out because
    the pipeline's decoder cannot read them (image folders, ``bad_images="skip"``).
    """

    dataset: tf.data.Dataset
    num_examples: int
    class_names: list
    unreadable: list = dataclasses.field(default_factory=list)
    decode: object = None
    shard: tuple = (1, 0)
    total_examples: int = None

    def __post_init__(self):
        if self.total_examples is None:
            self.total_examples = self.num_examples * self.shard[0]

    @property
    def num_classes(self):
        return len(self.class_names)

    def images(self, dataset=None):
        """``(uint8 image (H, W, 3), label)`` examples, decoded in parallel, in order.

        ``dataset``: examples of this source to decode (default: all of them, in order).
        """
        dataset = self.dataset if dataset is None else dataset
        if self.decode is None:
            return dataset
        decode = self.decode
        return dataset.map(lambda element, label: (decode(element), label),
                           num_parallel_calls=AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation (the paper's recipe has all of them; 0 turns one off)."""

    inception_crop: bool = True
    crop_min_area: float = 0.08
    flip: bool = True
    randaug_ops: int = 2
    randaug_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0


def load_source(name="digits", split="train", data_dir=None, shard=(1, 0), class_names=None,
                bad_images="skip", exact_shards=False, log=None):
    """Load one split of a dataset by name: ``"digits"``, an image folder, a folder written by
    ``keras-mixer prepare``, or a TFDS name.

    Args:
        name: ``"digits"``, a directory (image folder, or prepared records), or a
            TFDS dataset name (``"cifar10"``).
        split: ``"train"`` or ``"test"`` (TFDS: any split spec, ``"test"``
            falls back to ``"validation"`` when the dataset has no test split).
        data_dir: TFDS data directory.
        shard: ``(num_shards, index)``: this process's part of the split (one shard
            per process); it reads and decodes only that part. Image folders: every
            ``num_shards``-th file starting at ``index``, taken before the bad-image
            check, so that each process checks only its own files (unless
            ``exact_shards``); records and TFDS: the ``index``-th of ``num_shards``
            even parts (``tfds.even_splits``), of which each process reads only its own.
        class_names: the classes this split must have (those of the training
            split): a ``ValueError`` names the classes that differ.
        bad_images: image folders: ``"skip"`` files the decoder cannot read
            (listed in ``Source.unreadable``) or ``"fail"`` with a ``ValueError``
            listing all of them. Either way before any batch is made. Each file is
            decoded for this check once: the result is remembered
            (:mod:`keras_mixer.image_check`).
        exact_shards: image folders: check every file of the split, then shard, so
            that every process knows the exact number of examples of the split
            (evaluation); otherwise ``Source.total_examples`` counts the files found
            before the check.
        log: called with progress lines of a long check (``None``: quiet).
    """
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"bad_images must be one of {', '.join(BAD_IMAGES)}, got {bad_images!r}.")
    if name == "digits":
        source = digits_source(split, shard)
    elif os.path.isdir(name) and is_prepared(name):
        source = tfds_source(name, split, shard=shard)
    elif os.path.isdir(name):
        source = folder_source(name, split, shard, class_names, bad_images, exact_shards, log)
    elif os.path.exists(name):
        raise NotADirectoryError(f"--data {name!r} is a file: give an image folder "
                                 f"({name}/<class_name>/<image>), 'digits' or a TFDS name.")
    elif os.sep in name or name.startswith("."):
        raise FileNotFoundError(f"Image folder {name!r} does not exist.")
    else:
        source = tfds_source(name, split, data_dir, shard)
    if class_names is not None:
        check_same_classes(class_names, source.class_names, f"{name!r} split {split!r}")
    return source


def load_splits(name="digits", data_dir=None, shard=(1, 0), bad_images="skip", eval_shard=(1, 0),
                log=None):
    """``(train, test)`` sources for training: the classes come from the training split, the
    test split must have the same ones, and there must be at least two.

    ``shard`` is this process's part of the training split, ``eval_shard`` of the test
    split (exact: every process checks the whole test split of an image folder).
    """
    train = load_source(name, "train", data_dir, shard, bad_images=bad_images, log=log)
    if train.num_classes < 2:
        raise ValueError(
            f"Training data {name!r} has {train.num_classes} class ({', '.join(train.class_names)}): "
            f"a classifier needs at least 2 classes.")
    test = load_source(name, "test", data_dir, eval_shard, class_names=train.class_names,
                       bad_images=bad_images, exact_shards=True, log=log)
    return train, test


def class_differences(expected, found):
    """``(missing, extra)``: the classes of ``expected`` not in ``found``, and the other way round."""
    return [c for c in expected if c not in found], [c for c in found if c not in expected]


def check_same_classes(expected, found, where):
    """Raise a ``ValueError`` naming the classes of ``found`` that differ from ``expected``."""
    expected, found = list(expected), list(found)
    if found == expected:
        return
    missing, extra = class_differences(expected, found)
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"not in the training split: {', '.join(extra)}"] if extra else [])
    detail = "; ".join(parts) or "same classes in another order"
    raise ValueError(
        f"The classes of {where} differ from the training split's ({detail}). Every split "
        f"needs the training split's classes: {', '.join(expected)}."
    )


def _shard(dataset, shard):
    num_shards, index = shard
    return dataset.shard(num_shards, index) if num_shards > 1 else dataset


def _shard_count(count, shard):
    num_shards, index = shard
    return len(range(index, count, num_shards))


def digits_source(split="train", shard=(1, 0), test_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 digits as uint8 RGB (0-16 scaled to 0-255), split 80/20."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    num_test = int(round(test_fraction * len(order)))
    if split not in SPLIT_ALIASES:
        raise ValueError(f"digits has splits 'train' and 'test', got {split!r}.")
    indices = order[num_test:] if split == "train" else order[:num_test]
    images = np.round(digits.images[indices] * (255.0 / 16.0)).astype("uint8")
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target[indices].astype("int64")
    dataset = _shard(tf.data.Dataset.from_tensor_slices((images, labels)), shard)
    return Source(dataset, _shard_count(len(labels), shard), [str(i) for i in range(10)],
                  shard=tuple(shard), total_examples=len(labels))


def split_root(root, split):
    """``(folder, held_out)``: the ``split`` folder of ``root`` (``test`` also as ``val``/``validation``),
    or ``(root, True)`` when the class folders lie directly under ``root``."""
    for alias in SPLIT_ALIASES.get(split, (split,)):
        if os.path.isdir(os.path.join(root, alias)):
            return os.path.join(root, alias), False
    if any(os.path.isdir(os.path.join(root, s)) for a in SPLIT_ALIASES.values() for s in a):
        raise ValueError(f"Image folder {root!r} has no {split!r} split folder.")
    return root, True  # class folders directly under root: hold out every 10th file.


HELD_OUT_EVERY = 10  # a folder without split folders: every 10th file is held out for testing


def split_files(root, split="train", class_names=None):
    """One split of an image folder, as training reads it.

    ``root/<split>/<class>/*`` when ``root`` has split folders (``test`` also as
    ``val`` / ``validation``); otherwise the class folders lie under ``root`` and
    every 10th file (in sorted order) is the ``"test"`` split, the others the
    ``"train"`` split. ``"all"`` is every file of such a folder.

    Returns:
        ``(folder, paths, labels, class_names, held_out)``: ``held_out`` is whether
        the split was drawn from one folder by the every-10th rule.
    """
    if split == "all":
        if any(os.path.isdir(os.path.join(root, s)) for a in SPLIT_ALIASES.values() for s in a):
            raise ValueError(f"Image folder {root!r} has split folders: name one split (train or "
                             f"test), not all.")
        paths, labels, class_names = _scan_once(root, class_names)
        return root, paths, labels, class_names, False
    folder, held_out = split_root(root, split)
    paths, labels, class_names = _scan_once(folder, class_names)
    if held_out and split == "train":
        del paths[HELD_OUT_EVERY - 1::HELD_OUT_EVERY], labels[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
    elif held_out:
        paths, labels = paths[HELD_OUT_EVERY - 1::HELD_OUT_EVERY], labels[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
    return folder, paths, labels, class_names, held_out


def scan_folder(root, class_names=None):
    """``(paths, labels, class_names)`` of ``root/class_name/*`` (image files by extension).

    ``class_names`` (the training split's) must be exactly the class folders found;
    a class folder without images is an error naming it.
    """
    found = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    _check_utf8(root, found)
    if class_names is not None:
        check_same_classes(class_names, found, f"image folder {root!r}")
    paths, labels, empty = [], [], []
    for label, class_name in enumerate(found):
        class_dir = os.path.join(root, class_name)
        files = [f for f in sorted(os.listdir(class_dir)) if f.lower().endswith(IMAGE_EXTENSIONS)]
        _check_utf8(class_dir, files)
        if not files:
            empty.append(class_dir)
        prefix = os.path.join(class_dir, "")
        paths.extend([prefix + f for f in files])
        labels.extend([label] * len(files))
    if not paths:
        raise ValueError(
            f"Image folder {root!r} has no images: expected {root}/<class_name>/<image> files "
            f"with extensions {', '.join(IMAGE_EXTENSIONS)}."
        )
    if empty:
        raise ValueError(
            f"Class folders without images ({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}. "
            f"Add images or remove the folders (every folder under {root!r} is a class)."
        )
    return paths, labels, found


def _check_utf8(folder, names):
    """Refuse names that are not UTF-8 (TensorFlow's strings are): a ``ValueError`` naming them."""
    try:
        "".join([folder, *names]).encode("utf-8")  # one call for a folder of a million names
        return
    except UnicodeEncodeError:
        pass
    bad = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # os.listdir keeps undecodable bytes as surrogates
            bad.append(repr(os.fsencode(path))[1:])
    if bad:
        raise ValueError(f"{len(bad)} path(s) are not valid UTF-8, which class names and image "
                         f"paths must be: {', '.join(bad[:5])}. Rename them.")


def describe_unreadable(unreadable, total, folder):
    """The message for ``unreadable`` ``[(path, reason)]`` images of ``total`` in ``folder``."""
    listing = "\n".join(f"  {path}: {reason}" for path, reason in unreadable)
    return f"{len(unreadable)} of {total} images in {folder!r} cannot be decoded:\n{listing}"


_LAST_SCAN = {}


def _scan_once(folder, class_names=None):
    """:func:`scan_folder`, reusing this process's last scan of ``folder`` while no file was
    added, removed or renamed in it (no folder's modification time changed): the training
    and the test split of a folder without split folders are the same folder."""
    try:
        key = (os.path.abspath(folder),) + tuple(
            (entry.name, entry.stat().st_mtime_ns) for entry in os.scandir(folder)
            if entry.is_dir()) + ((".", os.stat(folder).st_mtime_ns),)
    except OSError:
        key = None
    last = _LAST_SCAN.get("scan")
    if key is None or last is None or last[0] != key or (
            class_names is not None and list(class_names) != last[1][2]):
        _LAST_SCAN["scan"] = last = (key, scan_folder(folder, class_names))
    paths, labels, found = last[1]
    return list(paths), list(labels), list(found)


def folder_files(root, split="train", shard=(1, 0), class_names=None, bad_images="skip",
                 exact_shards=False, log=None):
    """The image files of one split of a folder, in the order a pipeline reads them.

    Returns ``(folder, paths, labels, class_names, unreadable, total)``: this shard's
    readable files and their labels, the ``(path, reason)`` of its unreadable ones, and
    the number of examples of all shards (see :func:`load_source`). The training split
    is mixed once (a fixed permutation of all files found), so that a shuffle buffer
    sees every class; then sharded and checked (or checked and sharded, ``exact_shards``).
    """
    folder, paths, labels, class_names, _ = split_files(root, split, class_names)
    if split == "train":  # class-sorted files: mix them once, so a shuffle buffer sees every class
        order = np.random.default_rng(0).permutation(len(paths)).tolist()
        paths, labels = [paths[i] for i in order], [labels[i] for i in order]
    num_shards, index = shard
    check_all = exact_shards or num_shards == 1
    found = len(paths)
    if not check_all:  # this process checks (and reads) only its own files
        paths, labels = paths[index::num_shards], labels[index::num_shards]
    key = f"{split}-all" if check_all else f"{split}-{index}-of-{num_shards}"
    unreadable = image_check.check_files(paths, folder, key, log=log)
    if unreadable and bad_images == "fail":
        raise ValueError(
            f"{describe_unreadable(unreadable, len(paths), folder)}\nRemove or replace them, or "
            f"skip them with bad_images='skip' (--bad-images skip).")
    if unreadable:
        bad = {path for path, _ in unreadable}
        had = set(labels)
        labels = [label for path, label in zip(paths, labels) if path not in bad]
        paths = [path for path in paths if path not in bad]
        if not paths:
            raise ValueError(f"No readable images in {folder!r}.")
        emptied = [os.path.join(folder, class_names[index]) for index in sorted(had - set(labels))]
        if emptied and check_all:  # a class without examples would be trained (or scored) as
            # never seen (a shard without a class's examples is fine: the other shards have them)
            raise ValueError(
                f"Every image of class folder(s) {', '.join(emptied)} is undecodable (skipped), "
                f"so the class would have no examples:\n"
                f"{describe_unreadable(unreadable, len(bad) + len(paths), folder)}\n"
                "Replace the images, or remove the folder(s).")
    if check_all:
        found = len(paths)
        paths, labels = paths[index::num_shards], labels[index::num_shards]
    return folder, paths, labels, class_names, unreadable, found


def folder_source(root, split="train", shard=(1, 0), class_names=None, bad_images="skip",
                  exact_shards=False, log=None):
    """Images in ``root/[split/]class_name/*``, decoded in parallel (RGB, uint8).

    Every file of the shard is checked with the pipeline's decoder first
    (:func:`keras_mixer.image_check.check_files`: decoded once, the result
    remembered): ``bad_images="skip"`` leaves unreadable files out
    (``Source.unreadable``), ``"fail"`` raises a ``ValueError`` listing all of them.
    """
    _, paths, labels, class_names, unreadable, total = folder_files(
        root, split, shard, class_names, bad_images, exact_shards, log)
    source = files_source(paths, labels, class_names, unreadable=unreadable)
    source.shard, source.total_examples = tuple(shard), total
    return source


def read_image(path):
    """The uint8 ``(H, W, 3)`` image of a file path (a string tensor), by the image policy."""
    return images.decode(tf.io.read_file(path))


def files_source(paths, labels, class_names, shard=(1, 0), unreadable=()):
    """Image files with their labels (indices into ``class_names``), in order; decoded by
    the pipeline (:attr:`Source.decode`).

    ``unreadable``: ``(path, reason)`` of the files left out, reported by training.
    """
    # tf.constant: a list of a million paths converts in 0.3 s (from_tensor_slices: 10 s).
    paths = tf.constant(list(paths), dtype=tf.string)
    files = _shard(tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int64))), shard)
    count = int(paths.shape[0])
    return Source(files, _shard_count(count, shard), list(class_names), list(unreadable),
                  decode=read_image, shard=tuple(shard), total_examples=count)


def prepare_command(name, data_dir="DIR"):
    """A shell command that downloads and prepares TFDS dataset ``name`` into ``data_dir``.

    Plain ``tensorflow_datasets`` (no ``tfds build``, whose command line needs apache-beam).
    """
    code = (f"import tensorflow_datasets as tfds; "
            f"tfds.builder({name!r}, data_dir={data_dir!r}).download_and_prepare()")
    return f'python -c "{code}"'


def network_problem(host=DOWNLOAD_HOST, timeout=5.0):
    """Why ``host`` (TFDS's download server) cannot be reached, or ``None`` when it can.

    One connection, given ``timeout`` seconds in all (name lookup included); with a
    proxy configured the network is not judged (``None``).
    """
    if any(os.environ.get(variable) for variable in PROXY_VARIABLES):
        return None
    outcome = []

    def connect():
        try:
            socket.create_connection(host, timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"cannot reach {host[0]}: {error.strerror or error}")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"cannot reach {host[0]} within {timeout:g} s"


def _unprepared(name, builder, reason):
    return (f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}, and {reason}. Prepare "
            f"it on a machine with internet access and keras-mixer installed: "
            f"{prepare_command(name)} (datasets with manual downloads such as imagenet2012 also "
            f"need download_config=tfds.download.DownloadConfig(manual_dir=...)); copy DIR here "
            f"and pass --data-dir DIR. Or use an image folder or the offline 'digits' data.")


PREPARED_FILES = ("dataset_info.json", "features.json")


def is_prepared(folder):
    """Whether ``folder`` holds a TFDS dataset (``keras-mixer prepare`` writes one): its metadata."""
    return all(os.path.isfile(os.path.join(folder, name)) for name in PREPARED_FILES)


def _tfds_builder(name, data_dir=None):
    """The TFDS builder of a dataset name (prepared when it is not there yet), or of a prepared folder."""
    import tensorflow_datasets as tfds

    if os.path.isdir(name):
        try:
            return tfds.builder_from_directory(name)
        except Exception as error:  # TFDS raises many kinds for unreadable metadata
            raise ValueError(
                f"{name!r} holds TFDS metadata (dataset_info.json) that cannot be read "
                f"({type(error).__name__}: {error}). If keras-mixer prepare wrote it, run it "
                f"again into a new folder.") from error
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"Unknown dataset {name!r}: not 'digits', not an existing image folder, and not a "
            f"TFDS dataset name (e.g. cifar10, cifar100, imagenette, imagenet2012, "
            f"oxford_flowers102)."
        ) from error
    if not builder.is_prepared():
        offline = network_problem()
        if offline:
            raise DatasetUnavailableError(_unprepared(name, builder, f"this machine is offline "
                                                                     f"({offline})"))
        try:
            builder.download_and_prepare()
        except Exception as error:
            raise DatasetUnavailableError(_unprepared(
                name, builder, f"could not be downloaded ({type(error).__name__}: {error})")) from error
    return builder


def tfds_source(name, split="train", data_dir=None, shard=(1, 0)):
    """A TFDS dataset by name (prepared when it is not there yet, with a clear error if it
    can't), or a folder that ``keras-mixer prepare`` wrote.

    Each process reads only its part of the split (``tfds.even_splits``), and images stay
    encoded until the pipeline decodes them (:attr:`Source.decode`). A prepared folder is
    read in the order it was written: the order of the image folder it came from.
    """
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    splits = builder.info.splits
    if split == "test" and splits and "test" not in splits:
        split = "validation"
    if os.path.isdir(name) and split not in splits:
        raise ValueError(f"Prepared data {name!r} has no {split!r} split (it has "
                         f"{', '.join(splits) or 'none'}); run keras-mixer prepare again.")
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    num_shards, index = shard
    part = tfds.even_splits(split, num_shards)[index] if num_shards > 1 else split
    image_feature = builder.info.features[image_key]
    encoded = isinstance(image_feature, tfds.features.Image) and image_feature.dtype == tf.uint8
    read_config = (tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False)
                   if os.path.isdir(name) else None)  # prepared: the order it was written in
    dataset = builder.as_dataset(
        split=part, as_supervised=True, shuffle_files=False, read_config=read_config,
        decoders={image_key: tfds.decode.SkipDecoding()} if encoded else None)
    try:
        num_examples, total = splits[part].num_examples, splits[split].num_examples
    except KeyError:  # no split metadata (e.g. mocked data): count
        num_examples = int(dataset.reduce(0, lambda count, _: count + 1))
        total = num_examples * num_shards
    if not encoded and image_feature.shape[-1] == 1:
        dataset = dataset.map(lambda x, y: (tf.image.grayscale_to_rgb(x), y))
    class_names = list(builder.info.features[label_key].names)
    return Source(dataset, num_examples, class_names, decode=images.decode if encoded else None,
                  shard=tuple(shard), total_examples=total)


# --- augmentation ---------------------------------------------------------------------------


# The random streams of a training pipeline (see _seed_stream).
EXAMPLES, BATCHES, PASSES = 0, 1, 2


def _seeds(seed, rerandomize=True):
    """A deterministic stream of stateless seeds ``(2,)``, different each epoch."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize).batch(2)


def _stream_seed(seed, stream, index):
    """The stateless seed ``(2,)`` of element ``index`` of random stream ``stream``: a pure
    function of the three."""
    return tf.random.experimental.stateless_fold_in(
        tf.constant([seed, stream], tf.int64), tf.cast(index, tf.int64))


def _seed_stream(seed, stream, start):
    """Stateless seeds ``(2,)`` for elements ``start, start + 1, ...`` of ``stream``."""
    return tf.data.Dataset.range(start, np.iinfo(np.int64).max).map(
        lambda index: _stream_seed(seed, stream, index))


def shuffled_passes(dataset, num_examples, buffer_size, seed, start=0):
    """``dataset`` repeated forever, each pass in its own shuffled order, from element ``start``.

    Pass ``p`` is shuffled with a seed made from ``(seed, p)`` alone, so the stream
    is a pure function of ``seed`` wherever it starts: a pipeline started at
    element ``start`` yields what one started at 0 yields from its element
    ``start`` on (the passes before are not read; the elements of the first
    pass before ``start`` are read and dropped, without preprocessing).

    Args:
        dataset: one pass over the examples (``num_examples`` of them).
        num_examples: the number of elements of one pass.
        buffer_size: shuffle buffer size.
        seed: integer seed.
        start: the first element, counted over all passes.

    Returns:
        A ``tf.data.Dataset``.
    """
    first_pass, offset = divmod(int(start), max(int(num_examples), 1))

    def one_pass(index):
        # Traced as a graph: this sets the graph-level seed of this function only, so the
        # order depends on ``seed`` alone (and a global seed of 0 does not trip TensorFlow's
        # check of a tensor op seed, which fails with "symbolic Tensor as a Python bool").
        tf.random.set_seed(1)
        pass_seed = tf.random.stateless_uniform((), _stream_seed(seed, PASSES, index),
                                                minval=None, maxval=None, dtype=tf.int64)
        return dataset.shuffle(buffer_size, seed=pass_seed, reshuffle_each_iteration=False)

    passes = tf.data.Dataset.range(first_pass, np.iinfo(np.int64).max).flat_map(one_pass)
    return passes.skip(offset) if offset else passes


def _size_pair(size):
    """``(height, width)`` of a side ``size`` or of a pair."""
    return (size, size) if np.ndim(size) == 0 else tuple(size)


def inception_crop(image, size, seed, min_area=0.08):
    """Random crop of 8%-100% area and 3/4-4/3 aspect ratio, resized to ``size`` (Szegedy et al.)."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros((1, 0, 4)), seed=seed,
        area_range=(min_area, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0, max_attempts=10, use_image_if_no_bounding_boxes=True,
    )
    return images.resize(tf.slice(image, begin, crop_size), _size_pair(size))


def _beta(seed, alpha):
    """A Beta(alpha, alpha) sample from two stateless Gamma draws."""
    g = tf.random.stateless_gamma((2,), seed=seed, alpha=alpha)
    return g[0] / (g[0] + g[1])


def mix_batch(images, labels, seed, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0):
    """MixUp or CutMix of a batch with its reverse; labels are mixed by the same weight.

    With both alphas set, each batch picks one of them at random. The mixed
    labels still sum to 1.

    Why not ``keras.layers.MixUp`` / ``CutMix``: they draw from a stateful
    ``SeedGenerator``, so inside a parallel ``tf.data`` map the draws depend on
    thread scheduling. Here every batch gets a stateless seed from the seeded
    stream, so a ``--seed`` fixes every epoch's mixing on every backend.
    """
    seeds = tf.random.experimental.stateless_split(seed, 5)
    apply = tf.random.stateless_uniform((), seeds[0]) < mix_prob
    use_cutmix = (
        tf.random.stateless_uniform((), seeds[1]) < 0.5 if mixup_alpha and cutmix_alpha
        else tf.constant(bool(cutmix_alpha))
    )
    other_images, other_labels = tf.reverse(images, [0]), tf.reverse(labels, [0])

    def mixup():
        lam = _beta(seeds[2], mixup_alpha or 1.0)
        return lam * images + (1 - lam) * other_images, lam

    def cutmix():
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        lam = _beta(seeds[3], cutmix_alpha or 1.0)
        cut = tf.sqrt(1.0 - lam)
        cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
        cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
        center = tf.random.stateless_uniform((2,), seeds[4])
        cy = tf.cast(center[0] * tf.cast(height, tf.float32), tf.int32)
        cx = tf.cast(center[1] * tf.cast(width, tf.float32), tf.int32)
        y0, y1 = tf.maximum(cy - cut_h // 2, 0), tf.minimum(cy + cut_h // 2, height)
        x0, x1 = tf.maximum(cx - cut_w // 2, 0), tf.minimum(cx + cut_w // 2, width)
        rows = tf.logical_and(tf.range(height) >= y0, tf.range(height) < y1)
        cols = tf.logical_and(tf.range(width) >= x0, tf.range(width) < x1)
        box = tf.logical_and(rows[:, None], cols[None, :])[None, :, :, None]
        area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(height * width, tf.float32)
        return tf.where(box, other_images, images), 1.0 - area

    mixed, lam = tf.cond(use_cutmix, cutmix, mixup)
    mixed, lam = tf.cond(apply, lambda: (mixed, lam), lambda: (images, tf.constant(1.0)))
    return mixed, lam * labels + (1 - lam) * other_labels


def rand_augment(ops=2, magnitude=10.0, seed=None):
    """keras-cv RandAugment on 0-255 images; ``magnitude`` on the paper's 0-10 scale (10 = max).

    keras-cv's magnitude lies in [0, 1] (1 = each op's full range, the
    AutoAugment level 10), so paper magnitudes above 10 (15, 20) saturate at 1.
    Kept over Keras core's ``RandAugment``: ~8x faster in tf.data under JAX, measured here
    (``keras-mixer benchmark training`` prints both pipelines' img/s).
    """
    import keras
    import keras_cv

    # Augmentation runs in float32 under any model policy: built under mixed_bfloat16, the
    # keras-cv layers would compute (and return) bfloat16 (and fail inside RandAugment).
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        return keras_cv.layers.RandAugment(
            value_range=(0, 255), augmentations_per_image=ops,
            magnitude=min(magnitude / 10.0, 1.0), magnitude_stddev=0.0, seed=seed,
        )
    finally:
        keras.config.set_dtype_policy(policy)


def make_dataset(source, batch_size, image_size, training, augment=Augmentation(), seed=0,
                 crop_fraction=1.0, shuffle_buffer=10_000, repeat=False, drop_remainder=None,
                 cache=None, pad_to_batch=False, interpolation="bilinear", start_batch=0):
    """Batches of ``(float32 images in [0, 255] (B, height, width, 3), one-hot labels (B, K))``.

    Args:
        source: a :class:`Source` (see :func:`load_source`); a shard of a split
            (one per process) makes this process's part of every global batch.
        batch_size: batch size of this pipeline (per process).
        image_size: output side in pixels, or ``(height, width)``.
        training: shuffle and augment (else resize / center-crop only).
        augment: an :class:`Augmentation`.
        seed: fixes shuffling and every augmentation (each shard of a sharded
            source draws from a seed of its own, derived from ``seed`` and its index).
        crop_fraction: eval center crop (1.0 = resize only).
        shuffle_buffer: shuffle buffer size (capped at the split size).
        repeat: repeat forever (for a fixed number of steps). Training: then the
            stream is a pure function of ``seed`` and the batch index: each pass
            over the data has its own shuffle seed and every example and batch
            its own augmentation seed (see :func:`shuffled_passes`), so that
            ``start_batch`` can begin it anywhere.
        drop_remainder: default: ``training`` or ``pad_to_batch``, so that the batch
            dimension is static (multi-process JAX: Keras' ``distribute_tf_dataset``
            reads the global batch size from the pipeline to split it over processes).
        cache: cache decoded images in memory; default when the split is small (< 60k).
        pad_to_batch: (eval) add a third element, sample weights, and pad the last batch
            to full size with weight-0 blanks, so that every batch splits evenly over
            data-parallel devices while the loss and the metrics average over the real
            examples only (real examples weigh ``padded / real``, see below). Every
            shard of a source pads to the same number of batches.
        interpolation: the eval resize filter (the model's ``config.interpolation``).
        start_batch: (training with ``repeat``) begin with this batch of the stream,
            exactly as if that many batches had been read (a resumed run).
    """
    num_classes = source.num_classes
    size = _size_pair(image_size)
    num_shards, shard_index = source.shard
    if num_shards > 1:  # each process's shard draws its own shuffle and augmentations
        seed = int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0] >> 1)
    dataset = source.dataset
    cache = cache if cache is not None else source.num_examples < 60_000
    if cache:  # decoded once, kept in memory
        dataset = source.images().cache()
    buffer = min(shuffle_buffer, max(source.num_examples, 1))
    indexed = training and repeat  # every random choice a pure function of seed and position
    if indexed:
        start = int(start_batch) * batch_size
        dataset = shuffled_passes(dataset, source.num_examples, buffer, seed, start)
        example_seeds, batch_seeds = (_seed_stream(seed, EXAMPLES, start),
                                      _seed_stream(seed, BATCHES, start_batch))
    else:
        if start_batch:
            raise ValueError("make_dataset: start_batch needs training=True and repeat=True.")
        if training:
            dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
        example_seeds, batch_seeds = _seeds(seed), _seeds(seed + 1)
    if not cache:  # decoded after the shuffle (same order): only what is read
        dataset = source.images(dataset)

    def preprocess(element, example_seed):
        image, label = element
        image = tf.cast(image, tf.float32)
        if training and augment.inception_crop:
            image = inception_crop(image, size, example_seed, augment.crop_min_area)
        elif training:
            image = images.resize(image, size)
        else:  # evaluation: exactly what the serving signatures do (keras_mixer.images)
            image = images.resize(image, size, crop_fraction, interpolation)
        if training and augment.flip:
            flip_seed = tf.random.experimental.stateless_fold_in(example_seed, 1)
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        image = tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), size + (3,))
        return image, tf.one_hot(label, num_classes, dtype=tf.float32)

    dataset = tf.data.Dataset.zip((dataset, example_seeds))
    dataset = dataset.map(preprocess, num_parallel_calls=AUTOTUNE)
    if pad_to_batch:
        # Keras' loss divides each batch's weighted sum by the batch size (blanks included)
        # and averages batches by their size, i.e. divides by the padded count: weighing
        # every real example padded / real makes it the mean over the real examples
        # (and weighted metrics, which divide by the weights' sum, are unchanged).
        # Sharded (one shard per process): every shard pads to the same number of batches,
        # those of the whole split at the global batch size (``batch_size * num_shards``).
        batches = -(-source.total_examples // (batch_size * num_shards))
        blanks = batches * batch_size - source.num_examples
        weight = batches * batch_size * num_shards / max(source.total_examples, 1)
        blank = (tf.zeros(size + (3,)), tf.one_hot(0, num_classes), 0.0)
        dataset = dataset.map(lambda x, y: (x, y, weight)).concatenate(
            tf.data.Dataset.from_tensors(blank).repeat(blanks))
    if drop_remainder is None:  # padded batches are all full: nothing is dropped
        drop_remainder = training or pad_to_batch
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    randaug = training and augment.randaug_magnitude > 0 and augment.randaug_ops > 0
    mix = training and (augment.mixup_alpha > 0 or augment.cutmix_alpha > 0)
    if randaug or mix:  # each batch gets a seed of its own: (batch, seed)
        dataset = tf.data.Dataset.zip((dataset, batch_seeds))
    if randaug:
        # keras-cv draws from stateful generators, reset from the batch's seed before each
        # batch (so a sequential map): a pure function of the batch and its seed.
        layer = rand_augment(augment.randaug_ops, augment.randaug_magnitude, seed)
        reseed = compat.keras_cv_reseeder(layer)

        def rand_augment_batch(batch, batch_seed):
            (x, y), layer_seed = batch, tf.random.experimental.stateless_fold_in(batch_seed, 1)
            reseed(layer_seed)
            return (tf.clip_by_value(tf.cast(layer(x), tf.float32), 0.0, 255.0), y), batch_seed

        dataset = dataset.map(rand_augment_batch)
    if mix:
        dataset = dataset.map(
            lambda batch, batch_seed: mix_batch(
                *batch, batch_seed, augment.mixup_alpha, augment.cutmix_alpha, augment.mix_prob),
            num_parallel_calls=AUTOTUNE,
        )
    elif randaug:
        dataset = dataset.map(lambda batch, batch_seed: batch)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(AUTOTUNE)


def pipeline_throughput(dataset, batches=20, warmup=2):
    """Images per second that a pipeline delivers (after ``warmup`` batches)."""
    import time

    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        count += int(next(iterator)[0].shape[0])
    return count / (time.perf_counter() - start)


def extract_image_tar(tar_path, directory):
    """Extract an image-folder tarball (e.g. ``cifar10-jpg.tar.gz``) once; returns ``directory``."""
    import tarfile

    marker = os.path.join(directory, ".extracted")
    if not os.path.exists(marker):
        with tarfile.open(tar_path) as tar:
            tar.extractall(directory, filter="data")
        open(marker, "w").close()
    return directory
