"""Training with ``model.fit``: recipes, run directory, checkpoints, evaluation.

:func:`train` runs one :class:`TrainConfig` end to end on any backend and
distribution (see :mod:`keras_mixer.distribute`); ``scripts/train.py`` is its
command line. The run directory holds::

    backup/            BackupAndRestore state (a killed run resumes at the next epoch)
    last.keras         model after the latest epoch (written atomically)
    best.keras         model with the best validation accuracy so far (atomically)
    history.csv        per-epoch metrics          logs/   TensorBoard
    curves.png         loss / accuracy curves     results.json   final evaluation
"""

import csv
import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_mixer import checkpoints, data, deploy, distribute, models
from keras_mixer.files import atomic_output
from keras_mixer.layers import PACKAGE

RECIPES = ("pretrain", "finetune")
# Variables without weight decay: LayerNorm scales/offsets and every bias.
NO_WEIGHT_DECAY = ["gamma", "beta", "bias"]


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
    progress: str = _field("auto", "Keras progress bars: auto, 0, 1, 2")
    export: bool = _field(True, "export the final model to saved_models/")
    export_dir: str = _field("saved_models", "export directory")
    export_name: str = _field(None, "export name (default: mixer_<data>)")

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


def export_model(model_path, config, class_names):
    """Export the saved model to ``<export_dir>/<name>/<version>/`` for TF Serving."""
    name = config.export_name or "mixer_" + os.path.basename(os.path.normpath(config.data))
    return deploy.export_saved_model(model_path, export_dir=config.export_dir, name=name,
                              labels=class_names)


def _has_tensorboard():
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def train(config, callbacks=(), distribution=None):
    """Train ``config`` with ``model.fit``; returns a dict with the final evaluation.

    Args:
        config: a :class:`TrainConfig`.
        callbacks: extra Keras callbacks (run after the run directory's own).
        distribution: a :class:`keras_mixer.distribute.Distribution`; default
            :func:`keras_mixer.distribute.setup_distribution` from ``config``.
    """
    start = time.time()
    dist = distribution or distribute.setup_distribution(config.strategy, config.cpu_devices,
                                              config.model_parallel)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")

    train_source = data.load_source(config.data, "train", config.data_dir, shard=dist.shard)
    test_source = data.load_source(config.data, "test", config.data_dir)
    global_examples = train_source.num_examples * dist.shard[0]
    steps = config.steps_per_epoch or global_examples // config.batch_size
    if steps < 1:
        raise ValueError(f"{global_examples} training examples make no batch of {config.batch_size}.")
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

    run_dir = config.run_dir
    os.makedirs(run_dir, exist_ok=True)
    if dist.is_chief:
        write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(config))
    chief = dist.is_chief
    own = checkpoint_callbacks(run_dir, write=chief) if chief or dist.name == "multi_worker" else []
    if chief:
        own.append(keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True))
        if _has_tensorboard():
            own.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")))
        else:
            print("TensorBoard logs skipped: the tensorboard package is not installed")
    # Last among our own: an epoch counts as done once everything above is written.
    backup_dir = os.path.join(run_dir, "backup", f"process_{dist.process_index}")
    own.append(keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True))

    progress = config.progress if config.progress == "auto" else int(config.progress)
    model.fit(train_data, epochs=config.epochs, steps_per_epoch=steps,
              validation_data=test_data, callbacks=own + list(callbacks),
              verbose=progress if chief else 0)

    # fit() has swapped in the EMA weights (if any): save and evaluate those.
    results = model.evaluate(test_data, return_dict=True, verbose=0)
    # The loss averages over padded batches: rescale to the real examples (exact).
    padded = -(-test_source.num_examples // batch_size) * batch_size if pad else 0
    loss_scale = padded / test_source.num_examples if pad else 1.0
    results = {"top1": float(results["accuracy"]), "top5": float(results["top5"]),
               "loss": float(results["loss"]) * loss_scale, "test_examples": test_source.num_examples,
               "epochs": config.epochs, "backend": keras.backend.backend(),
               "strategy": dist.name, "replicas": dist.replicas,
               "seconds": round(time.time() - start, 1)}
    model_path = os.path.join(run_dir, "model.keras")
    if chief:
        save_atomically(model, model_path)
    elif dist.name == "multi_worker":  # every TF worker takes part in saving
        scratch = os.path.join(run_dir, f".worker-{os.getpid()}-model.keras")
        save_atomically(model, scratch)
        os.remove(scratch)
    if chief:
        write_json(os.path.join(run_dir, "results.json"), results)
        plot_history(os.path.join(run_dir, "history.csv"), os.path.join(run_dir, "curves.png"))
        print(f"final eval on {test_source.num_examples} test images: top-1 {results['top1']:.4f}, "
              f"top-5 {results['top5']:.4f}, loss {results['loss']:.4f} "
              f"({results['backend']}, {dist.name} x{dist.replicas}, {results['seconds']} s); "
              f"model: {model_path}")
        if config.export:
            results["export"] = export_model(model_path, config, train_source.class_names)
            if results["export"]:
                print(f"exported: {results['export']}")
    results["model"] = model
    return results


def training_throughput(model, batch_size, steps=10, warmup=2):
    """Training images per second of a compiled ``model`` on fixed in-memory batches."""
    rng = np.random.default_rng(0)
    size = model.input_shape[1:]
    images = rng.uniform(0, 255, (batch_size, *size)).astype("float32")
    labels = np.eye(model.output_shape[-1], dtype="float32")[rng.integers(0, model.output_shape[-1],
                                                                          batch_size)]
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)
