"""The paper's recipes: optimizers, learning-rate schedules, the model of a run and its compile."""

import keras
from keras import ops

from keras_mixer import checkpoints, models
from keras_mixer.layers import PACKAGE
from keras_mixer.training.config import RECIPES
from keras_mixer.training.optimizer import AdamW

# Variables without weight decay: LayerNorm scales/offsets and every bias.
NO_WEIGHT_DECAY = ["gamma", "beta", "bias"]


@keras.saving.register_keras_serializable(package=PACKAGE)


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then linear decay to ``end``.

    The paper's pre-training schedule; after ``total_steps`` it stays at ``end``.

    Args:
        peak: the learning rate at the end of the warmup.
        warmup_steps: optimizer steps of the warmup (0: none).
        total_steps: the step at which the decay reaches ``end``.
        end: the final learning rate.

    Call arguments:
        - step: the optimizer's step (``optimizer.iterations``), a scalar.

    Returns:
        Called on a step: the learning rate at that step, a float32 scalar.

    Examples:
        >>> schedule = keras_mixer.WarmupLinearDecay(peak=1e-3, warmup_steps=10, total_steps=110)
        >>> [round(float(schedule(step)), 6) for step in (0, 5, 10, 60, 110, 200)]
        [0.0, 0.0005, 0.001, 0.0005, 0.0, 0.0]
        >>> optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    """

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
    optimizer = AdamW(weight_decay=config.weight_decay, **common)  # Keras' AdamW, fused on torch
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


# What a model started from a preset or handle (--init) takes from it; the image policy
# (crop, filter) and the head stay the run's.
INIT_FIELDS = ("approximate_gelu", "layer_norm_epsilon", "input_mean", "input_std")


def build_model(config, num_classes):
    """The Mixer of ``config`` (a paper variant or the custom sizes), optionally initialised.

    The run's eval ``crop_fraction`` goes into the model's config, so that its
    exports prepare images exactly as the run's evaluation did.
    """
    common = dict(input_shape=(config.image_size, config.image_size, 3), num_classes=num_classes,
                  drop_path_rate=config.drop_path_rate, dropout=config.dropout,
                  crop_fraction=config.crop_fraction)
    if config.init:  # computes as the weights were trained (a preset's GELU, input scaling)
        common.update(checkpoints.weights_defaults(config.init, fields=INIT_FIELDS))
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

    Other files and handles (presets, ``hf://``, ``kaggle://``, preset folders) go to
    :func:`keras_mixer.load_weights` (a head of another size is kept fresh).
    """
    if not str(path).endswith(".keras"):
        return checkpoints.load_weights(model, path)
    source = models.load_keras_file(path, compile=False)
    skipped, matched = [], []
    for layer in model.layers:
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            weights = None
        if weights is not None and [w.shape for w in weights] == [
            tuple(v.shape) for v in layer.weights
        ]:
            matched.append((layer, weights))
        elif layer.weights:
            skipped.append(layer.name)
    if not any(layer.weights for layer, _ in matched):
        raise ValueError(
            f"--init {path}: none of its layers matches this model by name and shape "
            f"(it is {source.config.architecture.describe()}, the model "
            f"{model.config.architecture.describe()}), so training would start from scratch. "
            "Pass a model of the same architecture, or leave --init out.")
    for layer, weights in matched:
        layer.set_weights(weights)
    if skipped:
        print(f"init: kept fresh weights for {', '.join(skipped)} (not in {path} or other shape)")


def top_k_of(num_classes):
    """The k of the top-k accuracy reported for a model of ``num_classes`` classes: 5, or
    fewer for fewer classes (a top-5 of 3 classes is always 1)."""
    return min(5, num_classes)


def compile_model(model, config, total_steps, warmup_steps):
    top_k = top_k_of(model.output_shape[-1])
    model.compile(
        optimizer=build_optimizer(config, total_steps, warmup_steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        # Weighted: padded eval batches carry weight-0 blanks (see make_dataset).
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                          keras.metrics.TopKCategoricalAccuracy(k=top_k, name=f"top{top_k}")],
    )
