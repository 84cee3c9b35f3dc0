"""Training with ``model.fit``: recipes, run directory, checkpoints, evaluation.

:func:`train` runs one :class:`TrainConfig` end to end on any backend and
distribution (see :mod:`keras_mixer.distribute`); ``scripts/train.py`` is its
command line. The run directory holds::

    config.json        the run's settings (a second copy in state.json)
    state.json         the run's stage: training, evaluated (results, class names), finished (export)
    backup/process_i/  epoch-NNNN.weights.h5: model + optimizer after the last two epochs
    last.keras         model after the latest epoch (written atomically)
    best.keras         model with the best validation accuracy so far (atomically)
    model.keras        the final model (after the last epoch; EMA weights if any)
    history.csv        per-epoch metrics          logs/   TensorBoard
    curves.png         loss / accuracy curves     results.json   final evaluation

Re-running a command goes on from where its run directory stands: a killed
run resumes after its last whole epoch (from the newest readable backup, else
``last.keras``, else the older backup), a run killed after training goes on at
the evaluation or the export without training again, and a finished run says so
and stops (``re_export`` exports it again). A run directory refuses settings
that differ from its own (other than :data:`FREE_SETTINGS`). Every file is
written through a temporary file and a rename, so a kill leaves the previous
version whole; a loss that stops being finite stops training before anything of
that epoch is saved (:class:`DivergenceGuard`), and nothing is exported.
"""

import csv
import dataclasses
import glob
import json
import math
import os
import signal
import sys
import time

import keras
import numpy as np
from keras import ops

from keras_mixer import checkpoints, config as mixer_config, data, deploy, distribute, models
from keras_mixer.files import TEMP_PREFIX, atomic_output
from keras_mixer.layers import PACKAGE

RECIPES = ("pretrain", "finetune")
DECAYS = (None, "linear", "cosine")
PROGRESS = ("auto", "0", "1", "2")
MAX_LEARNING_RATE = 10.0  # above this a Mixer only diverges: a typo (1e30, 3e3) is refused
# Variables without weight decay: LayerNorm scales/offsets and every bias.
NO_WEIGHT_DECAY = ["gamma", "beta", "bias"]
# Settings that may differ between the commands of one run directory: where and how the
# run goes, not what it trains. Any other difference is refused (see check_settings).
FREE_SETTINGS = ("data_dir", "bad_images", "strategy", "cpu_devices", "model_parallel", "run_dir",
                 "progress", "export", "export_dir", "export_name", "re_export")
STATE_FILE = "state.json"
BACKUP_NAME = "epoch-{:04d}.weights.h5"
# Test hook: SIGKILL the process at a named point of train() (see _test_kill_point).
KILL_AT_ENV = "KERAS_MIXER_TEST_KILL_AT"


class RunError(RuntimeError):
    """A run cannot go on as asked; the message says why and what to do."""


class TrainingDiverged(RunError):
    """The loss (or the model's weights) stopped being finite."""


def _field(default, help):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run (``scripts/train.py`` has one flag per field).

    The defaults are the main job: a small Mixer on the offline digits data.
    """

    # data
    data: str = _field("digits", "\"digits\", an image folder, or a TFDS name")
    data_dir: str = _field(None, "TFDS data directory")
    image_size: int = _field(16, "input side in pixels (multiple of the patch size)")
    crop_fraction: float = _field(1.0, "eval center crop (1.0: resize only)")
    # model: a paper variant ("B/16") or "custom" with the sizes below
    variant: str = _field("custom", "paper variant (S/32, B/16, ...) or \"custom\" (the sizes below)")
    patch_size: int = _field(4, "custom Mixer: patch side P")
    num_blocks: int = _field(4, "custom Mixer: number of blocks")
    hidden_dim: int = _field(64, "custom Mixer: token width C")
    tokens_mlp_dim: int = _field(32, "custom Mixer: D_S")
    channels_mlp_dim: int = _field(256, "custom Mixer: D_C")
    drop_path_rate: float = _field(0.0, "stochastic depth of the last block (paper: 0.1)")
    init: str = _field(None, "start from a .keras model or weights file (matching layers)")
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
    run_dir: str = _field("runs/main", "run directory (re-running the same command resumes it)")
    seed: int = _field(0, "seed of init, shuffling and augmentation")
    steps_per_epoch: int = _field(None, "default: training examples // batch size")
    progress: str = _field("auto", "Keras progress display: auto, 0 (none), 1 (bar), 2 (a line per epoch)")
    export: bool = _field(True, "export the final model to saved_models/")
    export_dir: str = _field("saved_models", "export directory")
    export_name: str = _field("mixer", "served model name: saved_models/NAME/VERSION (TF Serving, "
                                       "serving/models.config and keras-mixer predict use 'mixer')")
    re_export: bool = _field(False, "export a finished run again (as a new version)")
    bad_images: str = _field("skip", "image folders: skip undecodable images (listed in the log and "
                                     "results.json) or fail listing them")

    def __post_init__(self):
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
        for field in ("momentum", "label_smoothing", "ema", "drop_path_rate"):
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

    def augmentation(self):
        return data.Augmentation(
            inception_crop=self.inception_crop, crop_min_area=self.crop_min_area,
            flip=self.flip, randaug_ops=self.randaug_ops,
            randaug_magnitude=self.randaug_magnitude, mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha, mix_prob=self.mix_prob,
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then linear decay to ``end``."""

    def __init__(self, peak, warmup_steps, total_steps, end=0.0):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.end = float(end)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.peak * step / max(self.warmup_steps, 1)
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        decay = self.peak + (self.end - self.peak) * ops.clip(progress, 0.0, 1.0)
        return ops.where(step < self.warmup_steps, warmup, decay)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps,
                    total_steps=self.total_steps, end=self.end)


def learning_rate_schedule(config, total_steps, warmup_steps):
    """Linear warmup then linear (own schedule) or cosine (``keras`` ``CosineDecay``) decay."""
    decay = config.decay or ("linear" if config.recipe == "pretrain" else "cosine")
    if decay == "linear":
        return WarmupLinearDecay(config.learning_rate, warmup_steps, total_steps)
    if decay == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0, max(total_steps - warmup_steps, 1), warmup_target=config.learning_rate,
            warmup_steps=warmup_steps,
        )
    raise ValueError(f"Unknown decay {decay!r}: use 'linear' or 'cosine'.")


def build_optimizer(config, total_steps, warmup_steps):
    """The recipe's optimizer: AdamW (pretrain) or SGD momentum (finetune), with clipping etc."""
    if config.recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {config.recipe!r}; choose from {', '.join(RECIPES)}.")
    if config.grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {config.grad_accum_steps}.")
    common = dict(
        learning_rate=learning_rate_schedule(config, total_steps, warmup_steps),
        global_clipnorm=config.clipnorm or None,
        gradient_accumulation_steps=config.grad_accum_steps if config.grad_accum_steps > 1 else None,
        use_ema=config.ema > 0,
        ema_momentum=config.ema or 0.99,
    )
    if config.recipe == "finetune":
        return keras.optimizers.SGD(momentum=config.momentum, **common)
    optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **common)
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


def build_model(config, num_classes):
    """The Mixer of ``config`` (a paper variant or the custom sizes), optionally initialised.

    The run's eval ``crop_fraction`` goes into the model's config, so that its
    exports prepare images exactly as the run's evaluation did.
    """
    common = dict(input_shape=(config.image_size, config.image_size, 3), num_classes=num_classes,
                  drop_path_rate=config.drop_path_rate, crop_fraction=config.crop_fraction)
    if config.variant == "custom":
        model = models.MlpMixer(config.patch_size, config.num_blocks, config.hidden_dim,
                                config.tokens_mlp_dim, config.channels_mlp_dim, name="mixer",
                                **common)
    else:
        model = models.get_model(config.variant, **common)
    if config.init:
        initialize_from(model, config.init)
    return model


def initialize_from(model, path):
    """Copy weights of same-named, same-shaped layers from a ``.keras`` model (a new head is kept).

    Other files go to :func:`keras_mixer.load_weights`.
    """
    if not str(path).endswith(".keras"):
        return checkpoints.load_weights(model, path)
    source = models.load_keras_file(path, compile=False)
    skipped = []
    for layer in model.layers:
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            weights = None
        if weights is not None and [w.shape for w in weights] == [
            tuple(v.shape) for v in layer.weights
        ]:
            layer.set_weights(weights)
        elif layer.weights:
            skipped.append(layer.name)
    if skipped:
        print(f"init: kept fresh weights for {', '.join(skipped)} (not in {path} or other shape)")


def compile_model(model, config, total_steps, warmup_steps):
    top_k = min(5, model.output_shape[-1])
    model.compile(
        optimizer=build_optimizer(config, total_steps, warmup_steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        # Weighted: padded eval batches carry weight-0 blanks (see make_dataset).
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                          keras.metrics.TopKCategoricalAccuracy(k=top_k, name="top5")],
    )


def save_atomically(model, path):
    """Write ``model`` to ``path`` (.keras) via a temporary file and ``os.replace``."""
    with atomic_output(path) as temp:
        model.save(temp)


class AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ``ModelCheckpoint``, writing through a temporary file and ``os.replace``.

    A kill at any moment leaves the previous file whole. ``write=False`` (not the
    chief) saves into a scratch file that is removed: with TF multi-worker every
    worker must take part in saving.
    """

    def __init__(self, filepath, write=True, **kwargs):
        super().__init__(filepath, **kwargs)
        self.write = write

    def _save_model(self, epoch, batch, logs):
        final = self.filepath
        directory, base = os.path.split(final)
        self.filepath = os.path.join(directory, f".tmp-{os.getpid()}-{base}")
        try:
            super()._save_model(epoch, batch, logs)
            if os.path.exists(self.filepath):  # saved (save_best_only may decide not to)
                if self.write:
                    os.replace(self.filepath, final)
                else:
                    os.remove(self.filepath)
        finally:
            if os.path.exists(self.filepath):
                os.remove(self.filepath)
            self.filepath = final


def checkpoint_callbacks(run_dir, write=True, monitor="val_accuracy"):
    """``last.keras`` every epoch and ``best.keras`` on a new best ``monitor``; the best so far
    survives a resume (``best.json``)."""
    best_json = os.path.join(run_dir, "best.json")
    best = None
    if os.path.exists(best_json):
        with open(best_json) as f:
            best = json.load(f)["value"]

    class BestJson(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if write and best_checkpoint.best is not None and np.isfinite(best_checkpoint.best) \
                    and (logs or {}).get(monitor) == best_checkpoint.best:
                write_json(best_json, {"epoch": epoch, "monitor": monitor,
                                       "value": float(best_checkpoint.best)})

    best_checkpoint = AtomicCheckpoint(os.path.join(run_dir, "best.keras"), write=write,
                                       monitor=monitor, mode="max", save_best_only=True,
                                       initial_value_threshold=best)
    return [AtomicCheckpoint(os.path.join(run_dir, "last.keras"), write=write),
            best_checkpoint, BestJson()]


def write_json(path, obj):
    with atomic_output(path) as temp, open(temp, "w") as f:
        json.dump(obj, f, indent=2)


def read_history(csv_path):
    """Per-epoch rows of ``history.csv``; a resumed epoch's repeated row replaces the older one."""
    rows = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v not in ("", None)}
    return [rows[epoch] for epoch in sorted(rows)]


def plot_history(csv_path, png_path):
    """Loss and accuracy curves (train and validation) from ``history.csv``, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(csv_path)
    epochs = [row["epoch"] + 1 for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "top-1 accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = [row.get(prefix + metric) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_output(png_path) as temp:
        fig.savefig(temp, dpi=100)
    plt.close(fig)


def export_name(config):
    """The export's model name (``--export-name``, default ``mixer``)."""
    return config.export_name


def export_model(model_path, config, class_names, version=None):
    """Export the saved model to ``<export_dir>/<name>/<version>/`` for TF Serving."""
    return deploy.export_saved_model(model_path, export_dir=config.export_dir,
                                     name=export_name(config), version=version, labels=class_names)


def _has_tensorboard():
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _test_kill_point(point, epoch=None):
    """Test hook: SIGKILL this process here when ``$KERAS_MIXER_TEST_KILL_AT`` names ``point``.

    ``point`` or ``point@EPOCH`` (1-based; for points inside an epoch). The points,
    in order: ``during_backup_write`` (the epoch's backup is written to its temporary
    file, not yet renamed), ``after_fit``, ``after_model_save``, ``after_results``,
    ``after_export``. The kill tests (tests/test_training.py) stop a run at an exact
    stage with it; unset, it does nothing.
    """
    wanted = os.environ.get(KILL_AT_ENV)
    if wanted and wanted in (point, f"{point}@{epoch}"):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class DivergenceGuard(keras.callbacks.TerminateOnNaN):
    """``TerminateOnNaN`` that stops ``fit`` with :class:`TrainingDiverged` at once.

    Raised at the first batch with a non-finite loss (or an epoch ending with a
    non-finite validation loss), before the epoch-end callbacks run: no
    checkpoint, backup or history row of a diverged epoch is written. First
    among the run's callbacks.
    """

    def __init__(self, learning_rate):
        super().__init__(raise_error=True)
        self.learning_rate = learning_rate
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _diverged(self, what):
        return TrainingDiverged(
            f"Training diverged: {what}. Nothing of this epoch was "
            f"saved, no model.keras was written and nothing was exported; the run directory "
            f"keeps its last good epoch. Lower --learning-rate (this run: {self.learning_rate:g}), "
            f"lengthen --warmup-epochs or keep --clipnorm on, in a new --run-dir.")

    def on_batch_end(self, batch, logs=None):
        try:
            super().on_batch_end(batch, logs)
        except RuntimeError:
            raise self._diverged(f"the loss is {logs.get('loss')} at epoch {self.epoch + 1}, "
                                 f"step {batch + 1}") from None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss")
        if value is not None and not np.isfinite(value):
            raise self._diverged(f"the validation loss is {value} after epoch {epoch + 1}")


def list_backups(directory):
    """The ``epoch-NNNN.weights.h5`` backups in ``directory``, newest first."""
    return sorted(glob.glob(os.path.join(directory, BACKUP_NAME.replace("{:04d}", "[0-9]" * 4))),
                  reverse=True)


class RunBackup(keras.callbacks.Callback):
    """Model and optimizer after every epoch: ``epoch-NNNN.weights.h5``, the newest ``keep`` kept.

    Each file is written under a temporary name and renamed, so a file under its
    final name is whole; older ones are removed only after the new one is in place.
    A kill at any moment leaves at least the previous epoch's backup. The last of
    the run's callbacks: an epoch counts as done once everything else is written.
    """

    def __init__(self, directory, keep=2):
        super().__init__()
        self.directory = directory
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        final = os.path.join(self.directory, BACKUP_NAME.format(epoch + 1))
        with atomic_output(final) as temp:
            self.model.save_weights(temp)
            _test_kill_point("during_backup_write", epoch + 1)
        for old in list_backups(self.directory)[self.keep:]:
            os.remove(old)


def epochs_done(iterations, steps, grad_accum_steps, max_epochs):
    """The whole epochs that ``iterations`` optimizer steps make, or ``None`` if none match."""
    matches = [e for e in range(max_epochs + 1) if e * steps // grad_accum_steps == iterations]
    return matches[0] if len(matches) == 1 else None


def restore_training_state(model, run_dir, steps, config):
    """Load the newest readable training state of ``run_dir`` into ``model`` (built, compiled).

    Tries the newest backup, then ``last.keras``, then older backups (the chief's,
    so every process resumes at the same epoch); a file that cannot be read, or
    whose optimizer step count is not a whole number of epochs, is passed over
    with a message. Returns ``(epochs done, path, messages about files passed over)``,
    ``(0, None, [])`` when the run has nothing yet; raises :class:`RunError` when it
    has files but none is usable.
    """
    backups = list_backups(os.path.join(run_dir, "backup", "process_0"))
    candidates = backups[:1] + [os.path.join(run_dir, "last.keras")] + backups[1:]
    candidates = [path for path in candidates if os.path.exists(path)]
    problems = []
    for path in candidates:
        try:
            model.load_weights(path)
        except Exception as error:  # a torn or foreign file: try the next one
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            problems.append(f"{path}: cannot be read ({type(error).__name__}: {reason})")
            continue
        iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        name = os.path.basename(path)
        if name.startswith("epoch-"):  # a backup's name says its epoch: check its step count
            done = int(name[6:10])
            if done > config.epochs or done * steps // config.grad_accum_steps != iterations:
                done = None
        else:
            done = epochs_done(iterations, steps, config.grad_accum_steps, config.epochs)
        if done is None:
            problems.append(f"{path}: its {iterations} optimizer steps are not a whole number of "
                            f"the run's epochs")
            continue
        return done, path, problems
    if problems:
        raise RunError(
            f"Run directory {run_dir!r} has training state but none of it can be resumed:\n  "
            + "\n  ".join(problems) + "\nMove the run directory aside (or pass a new --run-dir) "
            "to train from scratch.")
    return 0, None, problems


def _load_json(path):
    """``(object, None)``, ``(None, None)`` when missing, ``(None, reason)`` when unreadable."""
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"
    return (value, None) if isinstance(value, dict) else (None, "not a JSON object")


def _has_training_files(run_dir):
    return (os.path.exists(os.path.join(run_dir, "last.keras"))
            or os.path.exists(os.path.join(run_dir, "model.keras"))
            or bool(glob.glob(os.path.join(run_dir, "backup", "*", "*.h5"))))


def check_settings(saved, config):
    """``[(field, run's value, this config's value)]`` of the settings that differ from ``saved``
    (a run's ``config.json``), leaving out :data:`FREE_SETTINGS`."""
    differ = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in FREE_SETTINGS:
            continue
        old, new = saved.get(field.name, field.default), getattr(config, field.name)
        if old != new:
            differ.append((field.name, old, new))
    return differ


def open_run_dir(config):
    """The state of ``config.run_dir`` (``{"stage": "new"}`` when it has none), after checking
    that ``config`` may go on with it.

    The run's settings are kept twice (config.json, and in state.json), so one torn
    file does not lose them; settings other than :data:`FREE_SETTINGS` must match.
    """
    run_dir = config.run_dir
    state, state_problem = _load_json(os.path.join(run_dir, STATE_FILE))
    saved, config_problem = _load_json(os.path.join(run_dir, "config.json"))
    if state_problem:
        print(f"{os.path.join(run_dir, STATE_FILE)} is unreadable ({state_problem}); going on "
              f"from the run's checkpoints")
    recorded = any(os.path.exists(os.path.join(run_dir, name)) for name in (STATE_FILE, "config.json"))
    if not recorded and not _has_training_files(run_dir):
        return {"stage": "new"}
    settings = (state or {}).get("config") or saved
    if settings is None and not _has_training_files(run_dir):
        return {"stage": "new"}  # torn records and nothing trained: nothing to lose
    if settings is None:
        raise RunError(
            f"Run directory {run_dir!r} holds checkpoints but no readable record of the settings "
            f"they were trained with (config.json: {config_problem or 'missing'}), so resuming "
            f"could load them into a different model. Restore config.json, or pass a new --run-dir.")
    differ = check_settings(settings, config)
    if differ:
        listing = "; ".join(f"{name} (--{name.replace('_', '-')}): {old!r} in the run, {new!r} now"
                            for name, old, new in differ)
        raise ValueError(
            f"Run directory {run_dir!r} was trained with other settings: {listing}. Resuming "
            f"would continue its checkpoints with a different model, data or schedule. Repeat "
            f"the run's settings (its config.json) to resume it, or pass a new --run-dir.")
    state = dict(state or {"stage": "training"})
    state["config"] = dataclasses.asdict(config)
    return state


def _remove_temp_files(run_dir):
    """Remove temporary files that a killed run left (``.tmp-*``; never read by anything)."""
    for pattern in (os.path.join(run_dir, TEMP_PREFIX + "*"),
                    os.path.join(run_dir, "backup", "*", TEMP_PREFIX + "*")):
        for path in glob.glob(pattern):
            if os.path.isfile(path):
                os.remove(path)


def _unshare_ema_arrays(model):
    """JAX with EMA: give the model's variables arrays of their own after fit().

    Keras swaps the EMA weights in by assigning the optimizer's average variables
    to the model's, which on JAX makes them share arrays; evaluate() donates the
    model's arrays, deleting the optimizer's too, and saving the model then fails
    ("Array has been deleted").
    """
    if keras.backend.backend() == "jax" and getattr(model.optimizer, "use_ema", False):
        for variable in model.trainable_variables:
            variable.assign(keras.ops.copy(variable.value))


def _check_finite_weights(model):
    bad = [v.path for v in model.weights
           if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]
    if bad:
        raise TrainingDiverged(
            f"Training diverged: {len(bad)} weights are not finite ({', '.join(bad[:3])}...). "
            f"No model.keras was written and nothing was exported. Lower --learning-rate, in "
            f"a new --run-dir.")


def _report_unreadable(sources):
    """``[{"split", "path", "reason"}]`` of the images left out, printed one per line."""
    found = [{"split": split, "path": path, "reason": reason}
             for split, source in sources.items() for path, reason in source.unreadable]
    if found:
        print(f"skipped {len(found)} undecodable images (--bad-images fail refuses them instead):")
        for item in found:
            print(f"  {item['split']}: {item['path']}: {item['reason']}")
    return found


def train(config, callbacks=(), distribution=None):
    """Train ``config`` with ``model.fit``; returns a dict with the final evaluation.

    Goes on from where ``config.run_dir`` stands (see the module docstring).

    Args:
        config: a :class:`TrainConfig`.
        callbacks: extra Keras callbacks (run after the run directory's own).
        distribution: a :class:`keras_mixer.distribute.Distribution`; default
            :func:`keras_mixer.distribute.setup_distribution` from ``config``.

    Raises:
        ValueError: a setting that cannot work, data that do not fit (class
            folders), or settings that differ from the run directory's.
        TrainingDiverged: the loss stopped being finite (nothing is saved as the
            final model or exported).
        RunError: the run directory has training state that cannot be resumed.
    """
    start = time.time()
    config.validate()
    run_dir = config.run_dir
    state = open_run_dir(config)  # before anything slow: refuses other settings at once
    dist = distribution or distribute.setup_distribution(config.strategy, config.cpu_devices,
                                                         config.model_parallel)
    chief = dist.is_chief
    if state["stage"] in ("evaluated", "finished"):
        if chief and state["stage"] == "evaluated":
            print(f"resuming {run_dir}: trained ({config.epochs} epochs) and evaluated; exporting")
        return _finish(config, state, chief, start)

    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    train_source, test_source = data.load_splits(config.data, config.data_dir, shard=dist.shard,
                                                 bad_images=config.bad_images)
    unreadable = _report_unreadable({"train": train_source, "test": test_source}) if chief else []
    global_examples = train_source.num_examples * dist.shard[0]
    steps = config.steps_per_epoch or global_examples // config.batch_size
    if steps < 1:
        raise ValueError(f"{global_examples} training examples make no batch of {config.batch_size}: "
                         f"lower --batch-size.")
    batch_size = dist.pipeline_batch_size(config.batch_size)
    train_data = data.make_dataset(
        train_source, batch_size, config.image_size, training=True,
        augment=config.augmentation(), seed=config.seed, repeat=True,  # same order everywhere
    )
    # Data parallel: pad the last eval batch with weight-0 blanks so it splits evenly.
    pad = dist.replicas > 1
    test_data = data.make_dataset(test_source, batch_size, config.image_size, training=False,
                                  crop_fraction=config.crop_fraction, pad_to_batch=pad)
    total_steps = steps * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps))

    with dist.scope():
        model = build_model(config, train_source.num_classes)
        compile_model(model, config, total_steps, warmup_steps)
        model.optimizer.build(model.trainable_variables)
    dist.prepare_model(model)

    os.makedirs(run_dir, exist_ok=True)
    if chief:
        _remove_temp_files(run_dir)
        if state["stage"] == "new":
            write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(config))
            state = {"stage": "training", "config": dataclasses.asdict(config)}
            write_json(os.path.join(run_dir, STATE_FILE), state)
    with dist.scope():
        done, restored_from, problems = restore_training_state(model, run_dir, steps, config)
    if chief:
        for problem in problems:
            print(f"resume: passed over {problem}")
        if restored_from and done < config.epochs:
            todo = (f"epochs {done + 1}-{config.epochs}" if done + 1 < config.epochs
                    else f"epoch {config.epochs}")
            print(f"resuming {run_dir} from {restored_from}: {done} of {config.epochs} epochs "
                  f"done, training {todo}")
        elif restored_from:
            print(f"resuming {run_dir} from {restored_from}: all {config.epochs} epochs done, "
                  f"evaluating and saving the final model")

    own = [DivergenceGuard(config.learning_rate)]
    if chief or dist.name == "multi_worker":
        own += checkpoint_callbacks(run_dir, write=chief)
    if chief:
        own.append(keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True))
        if _has_tensorboard():
            own.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")))
        else:
            print("TensorBoard logs skipped: the tensorboard package is not installed")
    # Last among our own: an epoch counts as done once everything above is written.
    own.append(RunBackup(os.path.join(run_dir, "backup", f"process_{dist.process_index}")))

    verbose = config.progress if config.progress == "auto" else int(config.progress)
    if done < config.epochs:
        model.fit(train_data, epochs=config.epochs, initial_epoch=done, steps_per_epoch=steps,
                  validation_data=test_data, callbacks=own + list(callbacks),
                  verbose=verbose if chief else 0)
    else:  # what fit() does after its last epoch: swap in the EMA weights (if any)
        with dist.scope():
            model.optimizer.finalize_variable_values(model.trainable_weights)
    _unshare_ema_arrays(model)
    _test_kill_point("after_fit")

    # fit() has swapped in the EMA weights (if any): check, evaluate and save those.
    _check_finite_weights(model)
    results = model.evaluate(test_data, return_dict=True, verbose=0)
    if not np.isfinite(results["loss"]):
        raise TrainingDiverged(
            f"The trained model's test loss is {results['loss']}: no model.keras was written and "
            f"nothing was exported. Lower --learning-rate, in a new --run-dir.")
    results = {"top1": float(results["accuracy"]), "top5": float(results["top5"]),
               "loss": float(results["loss"]), "test_examples": test_source.num_examples,
               "epochs": config.epochs, "backend": keras.backend.backend(),
               "strategy": dist.name, "replicas": dist.replicas,
               "unreadable_count": len(unreadable), "unreadable_images": unreadable,
               "seconds": round(time.time() - start, 1)}
    model_path = os.path.join(run_dir, "model.keras")
    if chief:
        save_atomically(model, model_path)
    elif dist.name == "multi_worker":  # every TF worker takes part in saving
        scratch = os.path.join(run_dir, f".worker-{os.getpid()}-model.keras")
        save_atomically(model, scratch)
        os.remove(scratch)
    _test_kill_point("after_model_save")
    if chief:
        write_json(os.path.join(run_dir, "results.json"), results)
        plot_history(os.path.join(run_dir, "history.csv"), os.path.join(run_dir, "curves.png"))
        print(f"final eval on {test_source.num_examples} test images: top-1 {results['top1']:.4f}, "
              f"top-5 {results['top5']:.4f}, loss {results['loss']:.4f} "
              f"({results['backend']}, {dist.name} x{dist.replicas}, {results['seconds']} s); "
              f"model: {model_path}")
    state = dict(state, stage="evaluated", results=results,
                 class_names=list(train_source.class_names))
    if chief:
        write_json(os.path.join(run_dir, STATE_FILE), state)
    _test_kill_point("after_results")
    return _finish(config, state, chief, start, model)


def _export_once(config, state):
    """Export the run's model.keras; a version planned by a killed attempt is reused, so a
    re-run publishes no duplicate (a new version only when a finished run is re-exported)."""
    run_dir = config.run_dir
    base = os.path.abspath(os.path.join(config.export_dir, export_name(config)))
    planned = state.get("export_planned") or {}
    if state["stage"] != "finished" and planned.get("base") == base:
        version = planned["version"]
        if os.path.isdir(os.path.join(base, str(version))):  # published (atomically) before a kill
            return os.path.join(config.export_dir, export_name(config), str(version))
    else:
        version = deploy.next_version(base)
        state["export_planned"] = {"base": base, "version": version}
        write_json(os.path.join(run_dir, STATE_FILE), state)
    path = export_model(os.path.join(run_dir, "model.keras"), config, state.get("class_names"),
                        version=version)
    _test_kill_point("after_export")
    return path


def _finish(config, state, chief, start, model=None):
    """The steps after the evaluation: export (once), then mark the run finished."""
    run_dir = config.run_dir
    results = dict(state["results"])
    if chief:
        finished = state["stage"] == "finished"
        if finished and not config.re_export and (state.get("export") or not config.export):
            exported = f"; exported: {state['export']}" if state.get("export") else ""
            print(f"{run_dir} is finished ({results['epochs']} epochs): top-1 {results['top1']:.4f}, "
                  f"top-5 {results['top5']:.4f}, loss {results['loss']:.4f}; model: "
                  f"{os.path.join(run_dir, 'model.keras')}{exported}. Nothing to do (--re-export "
                  f"exports it again; a new --run-dir trains again).")
        elif config.export:
            state["export"] = _export_once(config, state)
            print(f"exported: {state['export']}")
        state["stage"] = "finished"
        write_json(os.path.join(run_dir, STATE_FILE), state)
    if state.get("export"):
        results["export"] = state["export"]
    results["model"] = model if model is not None else models.load_keras_file(
        os.path.join(run_dir, "model.keras"), compile=False)
    return results
