"""The settings of a training run: :class:`TrainConfig`, checked before anything runs.

``keras-mixer train`` has one flag per field.
"""

import dataclasses
import math
import os
import re

from keras_mixer import config as mixer_config
from keras_mixer import data, distribute
from keras_mixer.files import check_name

RECIPES = ("pretrain", "finetune")

DECAYS = (None, "linear", "cosine")

PROGRESS = ("auto", "0", "1", "2")

MAX_LEARNING_RATE = 10.0  # above this a Mixer only diverges: a typo (1e30, 3e3) is refused

# Settings that may differ between the commands of one run directory: where and how the
# run goes, not what it trains. Any other difference is refused (see check_settings).
FREE_SETTINGS = ("data_dir", "bad_images", "strategy", "cpu_devices", "model_parallel", "run_dir",
                 "progress", "export", "export_dir", "export_name", "re_export", "allow_new_task")

MAIN_RUN_DIR = "runs/main"
MAIN_EXPORT_NAME = "mixer"  # what serving/models.config, `keras-mixer serve` and `predict` use

# The default --image-size: the digits are 8x8 pictures (16 px is plenty); photos need more
# pixels than that to be recognisable, and a paper variant was trained at 224.
DIGITS_IMAGE_SIZE = 16
FOLDER_IMAGE_SIZE = 64
VARIANT_IMAGE_SIZE = 224


def _field(default, help):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass


class TrainConfig:
    """Every setting of a training run (``scripts/train.py`` has one flag per field).

    The defaults are the main job: a small Mixer on the offline digits data. Each
    argument is also a ``keras-mixer train`` flag (``batch_size``:
    ``--batch-size``), whose ``--help`` gives the defaults. The settings are
    checked when the object is made (and again by :func:`keras_mixer.train`).

    Args:
        data: ``"digits"`` (offline), an image folder (``root/<class>/<image>``,
            or with ``train``/``test`` split folders) or a TFDS name.
        data_dir: TFDS data directory.
        image_size: input side in pixels, a multiple of the patch size; default
            16 for the digits, 64 for other data, 224 with a paper ``variant``.
        crop_fraction: evaluation center crop of the shorter side, in ``(0, 1]``
            (1: resize only); kept in the model's config for its exports.
        variant: a paper variant (``"S/32"``, ``"B/16"``, ...) or ``"custom"``
            (the five sizes below).
        patch_size: custom Mixer: patch side ``P``.
        num_blocks: custom Mixer: number of blocks.
        hidden_dim: custom Mixer: token width ``C``.
        tokens_mlp_dim: custom Mixer: ``D_S``.
        channels_mlp_dim: custom Mixer: ``D_C``.
        drop_path_rate: stochastic depth of the last block (paper: 0.1).
        dropout: dropout before the head (0: off; the paper has none).
        init: start from a ``.keras`` model, a weights file, or a preset name,
            folder or ``hf://`` / ``kaggle://`` handle (the layers that match).
        recipe: ``"pretrain"`` (AdamW, linear warmup and decay) or
            ``"finetune"`` (SGD with momentum, cosine decay).
        epochs: training epochs.
        batch_size: global batch size (all devices together).
        learning_rate: peak learning rate, after the warmup (at most 10).
        weight_decay: AdamW's decoupled weight decay (pretrain only; never on
            LayerNorm or biases).
        warmup_epochs: linear warmup length in epochs (may be fractional).
        decay: ``"linear"`` or ``"cosine"``; default: linear (pretrain),
            cosine (finetune).
        clipnorm: global-norm gradient clipping (0: off).
        momentum: SGD momentum (finetune).
        label_smoothing: label smoothing of the loss, in ``[0, 1)``.
        grad_accum_steps: each optimizer step accumulates this many batches (1: off).
        mixed_precision: train under ``mixed_bfloat16``.
        ema: EMA momentum of the weights (0: off), e.g. 0.999.
        inception_crop: random-area crop while training (else a plain resize).
        crop_min_area: inception crop's smallest area fraction (paper: 0.08).
        flip: random horizontal flips (off: digits are not mirror-symmetric).
        randaug_ops: RandAugment operations per image.
        randaug_magnitude: RandAugment magnitude (0: off; paper 10-20).
        mixup_alpha: MixUp's ``Beta(a, a)`` (0: off).
        cutmix_alpha: CutMix's ``Beta(a, a)`` (0: off).
        mix_prob: probability that a batch is mixed.
        strategy: the distribution: ``"auto"``; ``"default"``, ``"mirrored"``,
            ``"multi_worker"``, ``"tpu"`` (TensorFlow); ``"data_parallel"``,
            ``"model_parallel"`` (JAX); ``"torch_ddp"`` (PyTorch, under torchrun).
        cpu_devices: split the CPU into this many devices (TensorFlow, JAX; 0: don't).
        model_parallel: JAX: size of the model axis of the device mesh.
        run_dir: the run directory; running the same settings again resumes it.
        seed: seed of the initialisation, shuffling and augmentation.
        steps_per_epoch: optimizer steps per epoch; default: training examples
            // ``batch_size``.
        progress: Keras' progress display: ``"auto"``, ``"0"`` (none), ``"1"``
            (a bar), ``"2"`` (a line per epoch).
        export: export the final model as a TF Serving SavedModel.
        export_dir: the export's base directory.
        export_name: the served model's name (``export_dir/NAME/VERSION``);
            default ``"mixer"`` for the main job's ``runs/main``, else the run
            directory's name.
        allow_new_task: let the export publish a model with other classes, image
            size or architecture as a new version of a served name.
        re_export: export a finished run again, as a new version.
        bad_images: image folders: ``"skip"`` undecodable images (listed in the
            log and ``results.json``) or ``"fail"``, listing them.

    Raises:
        ValueError: the first setting that cannot work (named with its flag).

    Examples:
        >>> config = keras_mixer.TrainConfig(run_dir=os.path.join(tempfile.mkdtemp(), "digits"),
        ...                                  epochs=2, batch_size=32)
        >>> config.data, config.image_size, config.export_name
        ('digits', 16, 'digits')
        >>> keras_mixer.TrainConfig(image_size=30)
        Traceback (most recent call last):
            ...
        ValueError: image_size (--image-size) must be a multiple of the patch size 4, got 30.
    """

    # data
    data: str = _field("digits", "\"digits\", an image folder, or a TFDS name")
    data_dir: str = _field(None, "TFDS data directory")
    image_size: int = _field(None, f"input side in pixels (multiple of the patch size); default "
                                   f"{DIGITS_IMAGE_SIZE} for digits, {FOLDER_IMAGE_SIZE} for other "
                                   f"data, {VARIANT_IMAGE_SIZE} with a paper --variant")
    crop_fraction: float = _field(1.0, "eval center crop (1.0: resize only)")
    # model: a paper variant ("B/16") or "custom" with the sizes below
    variant: str = _field("custom", "paper variant (S/32, B/16, ...) or \"custom\" (the sizes below)")
    patch_size: int = _field(4, "custom Mixer: patch side P")
    num_blocks: int = _field(4, "custom Mixer: number of blocks")
    hidden_dim: int = _field(64, "custom Mixer: token width C")
    tokens_mlp_dim: int = _field(32, "custom Mixer: D_S")
    channels_mlp_dim: int = _field(256, "custom Mixer: D_C")
    drop_path_rate: float = _field(0.0, "stochastic depth of the last block (paper: 0.1)")
    dropout: float = _field(0.0, "dropout before the head (0: off; the paper has none)")
    init: str = _field(None, "start from a .keras model, a weights file, or a preset name / folder / "
                             "hf:// / kaggle:// handle (matching layers)")
    # recipe
    recipe: str = _field("pretrain", "pretrain: AdamW + linear warmup/decay; finetune: SGD + cosine")
    epochs: int = _field(25, "training epochs")
    batch_size: int = _field(64, "global batch size")
    learning_rate: float = _field(3e-3, "peak learning rate (after warmup)")
    weight_decay: float = _field(0.05, "pretrain only (AdamW); never on LayerNorm or biases")
    warmup_epochs: float = _field(1.0, "linear warmup length in epochs")
    decay: str = _field(None, "\"linear\" or \"cosine\"; default: linear (pretrain), cosine (finetune)")
    clipnorm: float = _field(1.0, "global-norm gradient clipping (0: off)")
    momentum: float = _field(0.9, "finetune (SGD)")
    label_smoothing: float = _field(0.0, "label smoothing of the loss")
    grad_accum_steps: int = _field(1, "optimizer steps accumulate this many batches (1: off)")
    mixed_precision: bool = _field(False, "mixed_bfloat16")
    ema: float = _field(0.0, "EMA momentum of the weights (0: off), e.g. 0.999")
    # augmentation (training)
    inception_crop: bool = _field(True, "random-area crop (else plain resize)")
    crop_min_area: float = _field(0.5, "inception crop: smallest area fraction (paper: 0.08)")
    flip: bool = _field(False, "digits are not mirror-symmetric; turn on for natural images")
    randaug_ops: int = _field(2, "RandAugment: ops per image")
    randaug_magnitude: float = _field(0.0, "0: off; paper 10-20 (keras-cv saturates at 10)")
    mixup_alpha: float = _field(0.0, "MixUp Beta(a, a) (0: off; paper pretrain mixup p 0.5)")
    cutmix_alpha: float = _field(0.0, "CutMix Beta(a, a) (0: off)")
    mix_prob: float = _field(1.0, "probability that a batch is mixed")
    # distribution
    strategy: str = _field("auto", "auto, default, mirrored, multi_worker, tpu (tensorflow); data_parallel, model_parallel (jax); torch_ddp (torch, under torchrun)")
    cpu_devices: int = _field(0, "split the CPU into N devices (tensorflow, jax)")
    model_parallel: int = _field(0, "jax: size of the model mesh axis")
    # run
    run_dir: str = _field(MAIN_RUN_DIR, "run directory (re-running the same command resumes it)")
    seed: int = _field(0, "seed of init, shuffling and augmentation")
    steps_per_epoch: int = _field(None, "default: training examples // batch size")
    progress: str = _field("auto", "Keras progress display: auto, 0 (none), 1 (bar), 2 (a line per epoch)")
    export: bool = _field(True, "export the final model to saved_models/")
    export_dir: str = _field("saved_models", "export directory")
    export_name: str = _field(None, f"served model name: saved_models/NAME/VERSION; default "
                                    f"'{MAIN_EXPORT_NAME}' for the main job (--run-dir {MAIN_RUN_DIR}: "
                                    f"TF Serving, serving/models.config and keras-mixer predict use it), "
                                    f"else the run directory's name")
    allow_new_task: bool = _field(False, "let the export publish a model with other classes, image "
                                         "size or architecture as a new version of a served name")
    re_export: bool = _field(False, "export a finished run again (as a new version)")
    bad_images: str = _field("skip", "image folders: skip undecodable images (listed in the log and "
                                     "results.json) or fail listing them")

    def __post_init__(self):
        self.image_size_defaulted = self.image_size is None
        if self.image_size is None:
            self.image_size = default_image_size(self.data, self.variant)
        if self.export_name is None:
            self.export_name = default_export_name(self.run_dir)
        self.validate()

    def validate(self):
        """Raise a ``ValueError`` naming the first setting that cannot work."""

        def fail(field, rule):
            flag = "--" + field.replace("_", "-")
            raise ValueError(f"{field} ({flag}) {rule}, got {getattr(self, field)!r}.")

        def integer(field, minimum, optional=False):
            value = getattr(self, field)
            if optional and value is None:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                fail(field, f"must be an integer >= {minimum}")

        def number(field, low, high=math.inf, low_open=False, high_open=False):
            value = getattr(self, field)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and (value > low if low_open else value >= low) \
                and (value < high if high_open else value <= high)
            if not ok:
                interval = (("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]"))
                fail(field, f"must be a finite number in {interval}" if high != math.inf else
                     f"must be a finite number {'>' if low_open else '>='} {low}")

        def choice(field, choices):
            if getattr(self, field) not in choices:
                fail(field, f"must be one of {', '.join(map(str, choices))}")

        if not isinstance(self.data, str) or not self.data:
            fail("data", "must name a dataset (digits, an image folder or a TFDS name)")
        for field in ("epochs", "batch_size", "image_size", "grad_accum_steps"):
            integer(field, 1)
        integer("steps_per_epoch", 1, optional=True)
        for field in ("randaug_ops", "cpu_devices", "model_parallel"):
            integer(field, 0)
        integer("seed", 0)
        number("learning_rate", 0.0, MAX_LEARNING_RATE, low_open=True)
        for field in ("weight_decay", "warmup_epochs", "clipnorm", "randaug_magnitude",
                      "mixup_alpha", "cutmix_alpha"):
            number(field, 0.0)
        for field in ("momentum", "label_smoothing", "ema", "drop_path_rate", "dropout"):
            number(field, 0.0, 1.0, high_open=True)
        for field in ("crop_fraction", "crop_min_area"):
            number(field, 0.0, 1.0, low_open=True)
        number("mix_prob", 0.0, 1.0)
        choice("recipe", RECIPES)
        choice("decay", DECAYS)
        choice("strategy", distribute.STRATEGIES)
        choice("bad_images", data.BAD_IMAGES)
        if str(self.progress) not in PROGRESS:
            fail("progress", f"must be one of {', '.join(PROGRESS)}")
        check_name(self.export_name, "export_name (--export-name)")
        for field in ("run_dir", "export_dir"):
            path = getattr(self, field)
            if not isinstance(path, str) or not path:
                fail(field, "must name a folder")
            if os.path.exists(path) and not os.path.isdir(path):
                fail(field, "is a file, not a folder: pass a folder (it is created if missing)")
        if self.re_export and not self.export:
            raise ValueError("re_export (--re-export) exports the run again, which --no-export "
                             "turns off: give one of them.")
        if self.variant == "custom":
            for field in mixer_config.ARCHITECTURE_FIELDS:
                integer(field, 1)
            patch = self.patch_size
        else:
            try:
                patch = mixer_config.VARIANTS[mixer_config.canonical_variant(self.variant)].patch_size
            except ValueError as error:
                raise ValueError(f"variant (--variant): {error}") from None
        if self.image_size % patch:
            fail("image_size", f"must be a multiple of the patch size {patch}")

    def image_size_notice(self):
        """A line saying that the images are resized to a default size, when no size was asked
        for and the data is not the digits (else ``""``)."""
        if not self.image_size_defaulted or self.data == "digits":
            return ""
        why = "a paper variant" if self.variant != "custom" else "data other than the digits"
        return (f"note: every image is resized to {self.image_size}x{self.image_size} px, the "
                f"default for {why}; choose another size with --image-size (a multiple of the "
                f"patch size)")

    def architecture_description(self):
        """``"Mixer-B/16 (patch 16, ...)"`` or the custom sizes, for the run's first line."""
        if self.variant == "custom":
            return "a Mixer (" + mixer_config.MixerConfig(
                self.patch_size, self.num_blocks, self.hidden_dim, self.tokens_mlp_dim,
                self.channels_mlp_dim).describe() + ")"
        return mixer_config.VARIANTS[mixer_config.canonical_variant(self.variant)].describe()

    def augmentation(self):
        """The :class:`keras_mixer.data.Augmentation` of these settings."""
        return data.Augmentation(
            inception_crop=self.inception_crop, crop_min_area=self.crop_min_area,
            flip=self.flip, randaug_ops=self.randaug_ops,
            randaug_magnitude=self.randaug_magnitude, mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha, mix_prob=self.mix_prob,
        )


def default_image_size(data, variant="custom"):
    """The ``image_size`` a run gets when none is given (see :data:`FOLDER_IMAGE_SIZE`)."""
    if variant != "custom":
        return VARIANT_IMAGE_SIZE
    return DIGITS_IMAGE_SIZE if data == "digits" else FOLDER_IMAGE_SIZE


def default_export_name(run_dir):
    """``"mixer"`` for the main job's run directory, else the run directory's name.

    A run on other data must not become a new version of the served main job, so
    every other run exports under a name of its own (``runs/photos`` -> ``photos``);
    characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``.
    """
    if run_dir is None:
        return MAIN_EXPORT_NAME
    if os.path.normpath(run_dir) == os.path.normpath(MAIN_RUN_DIR):
        return MAIN_EXPORT_NAME
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(os.path.abspath(run_dir)))
    return name.lstrip(".") or MAIN_EXPORT_NAME
