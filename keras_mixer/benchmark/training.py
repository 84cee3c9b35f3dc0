"""The training benchmark: training img/s per backend, tf.data input-pipeline img/s, and
CIFAR-10 top-1 after a fixed number of steps (a report, not a test).

Each backend runs :func:`worker` in its own process (``keras_mixer.benchmark.run``);
ratios are against the first backend listed, measured in the same run. The input
pipelines run once, under TensorFlow (:func:`pipelines`): the digits data with and
without augmentation, and RandAugment from keras-cv vs Keras core. CIFAR-10 comes
from the ``cifar10-jpg`` tarball (``../shared/data/cifar10-jpg/`` beside the
checkout) or an image folder with ``train/`` and ``test/``.
"""

import dataclasses
import functools
import os
import tempfile
import time

import keras

from keras_mixer import data, training
from keras_mixer.backend import PACKAGE_ROOT
from keras_mixer.benchmark.device import device_name, versions
from keras_mixer.config import VARIANTS, canonical_variant, token_grid

DEFAULT_CIFAR = os.path.normpath(os.path.join(
    PACKAGE_ROOT, "..", "shared", "data", "cifar10-jpg", "cifar10-jpg.tar.gz"))
DEFAULT_CIFAR_DIR = os.path.join(tempfile.gettempdir(), "cifar10-jpg")
NUM_CLASSES = 10  # the timed model has CIFAR-10's head


@dataclasses.dataclass
class TrainingSpec:
    """What one training benchmark measures (the same on every backend).

    ``variant`` is a paper variant or ``"custom"``: ``patch_size``, ``num_blocks``
    and ``hidden_dim`` with the paper's proportions (``D_S = C/2``, ``D_C = 4C``).
    """

    variant: str = "custom"
    image_size: int = 32
    patch_size: int = 4
    hidden_dim: int = 64
    num_blocks: int = 4
    batch_size: int = 64
    steps: int = 10
    pipeline_batches: int = 20
    cifar_steps: int = 0
    cifar_data: str = DEFAULT_CIFAR
    cifar_dir: str = DEFAULT_CIFAR_DIR

    suite = "training"

    def __post_init__(self):
        if self.variant != "custom":
            self.variant = canonical_variant(self.variant)
        for name in ("image_size", "patch_size", "hidden_dim", "num_blocks", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("pipeline_batches", "cifar_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        patch = self.patch_size if self.variant == "custom" else VARIANTS[self.variant].patch_size
        token_grid((self.image_size, self.image_size, 3), patch)  # validates the image size

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data):
        return cls(**data)

    def train_config(self, **overrides):
        """The :class:`keras_mixer.training.TrainConfig` of the timed model (plus ``overrides``)."""
        return training.TrainConfig(
            variant=self.variant, image_size=self.image_size, patch_size=self.patch_size,
            num_blocks=self.num_blocks, hidden_dim=self.hidden_dim,
            tokens_mlp_dim=self.hidden_dim // 2, channels_mlp_dim=4 * self.hidden_dim,
            batch_size=self.batch_size, export=False, **overrides)


def has_cifar(spec):
    """Whether :func:`find_cifar` will find the data (nothing is extracted here)."""
    return (os.path.exists(spec.cifar_data)
            or os.path.exists(os.path.join(spec.cifar_dir, ".extracted")))


def find_cifar(spec, log=print):
    """``(CIFAR-10 image folder, None)``, or ``(None, why not)`` when the data is absent.

    ``spec.cifar_data`` is the ``cifar10-jpg`` tarball (extracted once into
    ``spec.cifar_dir``) or an image folder with ``train/`` and ``test/``.
    """
    if os.path.isdir(spec.cifar_data):
        return spec.cifar_data, None
    if os.path.isfile(spec.cifar_data):
        log(f"CIFAR-10: extracting {spec.cifar_data} into {spec.cifar_dir} (once)")
        return data.extract_image_tar(spec.cifar_data, spec.cifar_dir), None
    if os.path.exists(os.path.join(spec.cifar_dir, ".extracted")):
        return spec.cifar_dir, None
    return None, (
        f"CIFAR-10 accuracy NOT measured (--cifar-steps {spec.cifar_steps}): no data at "
        f"{spec.cifar_data}. Give the cifar10-jpg tarball or an image folder with train/ and "
        f"test/ as --cifar-data, or extract the tarball into --cifar-dir ({spec.cifar_dir}).")


def worker(spec_json, cifar_root=None):
    """The subprocess side of :func:`keras_mixer.benchmark.run`: JSON in, JSON out."""
    return run_backend(TrainingSpec.from_json(spec_json), cifar_root,
                       log=functools.partial(print, flush=True))


def run_backend(spec, cifar_root=None, log=print):
    """Training img/s on the current backend, and CIFAR-10 top-1 when ``cifar_root`` is given."""
    backend = keras.backend.backend()
    config = spec.train_config()
    model = training.build_model(config, NUM_CLASSES)
    training.compile_model(model, config, total_steps=1000, warmup_steps=10)
    log(f"[{backend}] training {spec.steps} steps of batch {spec.batch_size}")
    rate = training_throughput(model, spec.batch_size, spec.steps)
    log(f"[{backend}] {rate:.1f} img/s")
    result = dict(backend=backend, device=device_name(), params=model.count_params(),
                  train_img_per_s=rate)
    if cifar_root and spec.cifar_steps:
        log(f"[{backend}] CIFAR-10: {spec.cifar_steps} training steps from {cifar_root}")
        with tempfile.TemporaryDirectory(prefix="bench-cifar-") as run_dir:
            run = training.train(spec.train_config(
                data=cifar_root, epochs=1, steps_per_epoch=spec.cifar_steps, flip=True,
                crop_min_area=0.3, warmup_epochs=0.1, progress="0", run_dir=run_dir))
        result.update(cifar_steps=spec.cifar_steps, cifar_top1=run["top1"],
                      cifar_seconds=run["seconds"])
    return dict(backend=backend, device=result["device"], versions=versions(), notes=[],
                results=[result])


def pipelines(spec_json):
    """Input-pipeline img/s: digits with and without augmentation; keras-cv vs Keras RandAugment.

    Returns ``{pipeline name: img/s}``, the plain eval resize first.
    """
    spec = TrainingSpec.from_json(spec_json)
    source = data.load_source("digits", "train")
    size, batch = spec.image_size, spec.batch_size
    rows = {}
    for name, augment in (("eval resize", None),
                          ("train crop+flip", data.Augmentation()),
                          ("train crop+flip+mixup", data.Augmentation(mixup_alpha=0.2)),
                          ("train + RandAugment(2, 10) keras-cv",
                           data.Augmentation(randaug_magnitude=10))):
        dataset = data.make_dataset(source, batch, size, augment is not None,
                                    augment or data.Augmentation(), repeat=True)
        rows[name] = data.pipeline_throughput(dataset, spec.pipeline_batches)
    core = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=1.0, seed=0)
    dataset = data.make_dataset(source, batch, size, True, repeat=True)
    dataset = dataset.map(lambda x, y: (core(x), y))
    rows["train + RandAugment(2, 10) Keras core"] = data.pipeline_throughput(
        dataset, spec.pipeline_batches)
    return rows


def training_throughput(model, batch_size, steps=10, warmup=2):
    """Training images per second of a compiled ``model`` on fixed in-memory batches."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    size = model.input_shape[1:]
    classes = model.output_shape[-1]
    images = rng.uniform(0, 255, (batch_size, *size)).astype("float32")
    labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch_size)]
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps * batch_size / (time.perf_counter() - start)
