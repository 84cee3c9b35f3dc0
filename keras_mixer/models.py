"""MLP-Mixer models: the generic builder and one constructor per paper variant.

Shaped like ``keras.applications``: every constructor returns a functional
``keras.Model`` and takes ``include_top``, ``weights``, ``input_tensor``,
``input_shape``, ``pooling``, ``num_classes``, ``classifier_activation`` and
``include_preprocessing``.
"""

import dataclasses

import keras

from keras_mixer.layers import LAYER_NORM_EPSILON, MixerBlock, PatchEmbedding, check_image_shape, layer_norm

DEFAULT_IMAGE_SIZE = 224


@dataclasses.dataclass(frozen=True)
class MixerConfig:
    """Architecture of one Mixer: patch size, depth and widths (paper Table 1)."""

    patch_size: int
    num_blocks: int
    hidden_dim: int
    tokens_mlp_dim: int
    channels_mlp_dim: int

    @classmethod
    def from_width(cls, patch_size, num_blocks, hidden_dim):
        """The paper's proportions: ``D_S = C / 2`` and ``D_C = 4 C``."""
        return cls(patch_size, num_blocks, hidden_dim, hidden_dim // 2, 4 * hidden_dim)


VARIANTS = {
    "S/32": MixerConfig.from_width(32, 8, 512),
    "S/16": MixerConfig.from_width(16, 8, 512),
    "B/32": MixerConfig.from_width(32, 12, 768),
    "B/16": MixerConfig.from_width(16, 12, 768),
    "L/32": MixerConfig.from_width(32, 24, 1024),
    "L/16": MixerConfig.from_width(16, 24, 1024),
    "H/14": MixerConfig.from_width(14, 32, 1280),
}


def canonical_variant(variant):
    """Canonical name of a paper variant: ``"b16"``, ``"Mixer-B/16"``, ``"Mixer-B_16"`` -> ``"B/16"``."""
    key = str(variant).upper().replace("MIXER", "").strip("-_ ").replace("_", "/")
    if "/" not in key and len(key) > 1:
        key = f"{key[0]}/{key[1:]}"
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown Mixer variant {variant!r}; known variants: {', '.join(VARIANTS)}."
        )
    return key


def model_name(variant):
    """Default model name of a variant, e.g. ``"mixer_b16"``."""
    return "mixer_" + str(variant).lower().replace("/", "")


def MlpMixer(
    patch_size,
    num_blocks,
    hidden_dim,
    tokens_mlp_dim,
    channels_mlp_dim,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    num_classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=0.0,
    dropout=0.0,
    approximate_gelu=True,
    layer_norm_epsilon=LAYER_NORM_EPSILON,
    name="mlp_mixer",
):
    """Build an MLP-Mixer of any size (Tolstikhin et al., 2021).

    Args:
        patch_size: side ``P`` of the square patches.
        num_blocks: number of Mixer blocks.
        hidden_dim: token width ``C``.
        tokens_mlp_dim: hidden width ``D_S`` of the token-mixing MLPs.
        channels_mlp_dim: hidden width ``D_C`` of the channel-mixing MLPs.
        include_top: end with the classification head.
        weights: ``None`` (random init), or a weights file / preset accepted
            by :func:`keras_mixer.weights.load_weights`.
        input_tensor: optional Keras tensor to use as the model input.
        input_shape: ``(height, width, channels)``, default ``(224, 224, 3)``;
            height and width must be multiples of ``patch_size``.
        pooling: with ``include_top=False``: ``None`` returns the normalised
            tokens ``(batch, S, C)``; ``"avg"`` (the model's own pooling) or
            ``"max"`` returns ``(batch, C)``.
        num_classes: classes of the head.
        classifier_activation: activation of the head (``None`` for logits).
        include_preprocessing: map 0-255 pixels to ``[-1, 1]`` inside the model.
            With ``False`` the model expects inputs already in ``[-1, 1]``
            (see :func:`keras_mixer.preprocess_input`).
        drop_path_rate: stochastic depth of the last block; block ``i`` uses
            ``drop_path_rate * i / (num_blocks - 1)``.
        dropout: dropout rate before the head.
        approximate_gelu: tanh GELU as the official code (default) or exact erf.
        layer_norm_epsilon: LayerNorm epsilon (official: 1e-6).
        name: model name.

    Returns:
        A functional ``keras.Model``.
    """
    for arg, value in (("patch_size", patch_size), ("num_blocks", num_blocks),
                       ("hidden_dim", hidden_dim), ("tokens_mlp_dim", tokens_mlp_dim),
                       ("channels_mlp_dim", channels_mlp_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
    if include_top and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(
            f"include_top=True needs num_classes >= 1, got num_classes={num_classes!r}."
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")

    inputs = _model_input(input_tensor, input_shape)
    check_image_shape(inputs.shape[1:], patch_size)

    x = inputs
    if include_preprocessing:
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocessing")(x)
    x = PatchEmbedding(patch_size, hidden_dim, name="stem")(x)
    for i in range(num_blocks):
        x = MixerBlock(
            tokens_mlp_dim,
            channels_mlp_dim,
            drop_path_rate=drop_path_rate * i / max(num_blocks - 1, 1),
            approximate_gelu=approximate_gelu,
            layer_norm_epsilon=layer_norm_epsilon,
            name=f"mixer_block_{i}",
        )(x)
    x = layer_norm("pre_head_layer_norm", layer_norm_epsilon)(x)

    if include_top:
        x = keras.layers.GlobalAveragePooling1D(name="avg_pool")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        x = keras.layers.Dense(num_classes, kernel_initializer="zeros", name="head")(x)
        # Keep the outputs in float32 under mixed precision.
        x = keras.layers.Activation(classifier_activation, dtype="float32", name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling1D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling1D(name="max_pool")(x)

    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        from keras_mixer.weights import load_weights

        load_weights(model, weights)
    return model


def _model_input(input_tensor, input_shape):
    if input_shape is None:
        input_shape = (
            tuple(input_tensor.shape[1:]) if input_tensor is not None
            else (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3)
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be 3D (height, width, channels), got {input_shape}."
        )
    if input_tensor is None:
        return keras.Input(shape=input_shape, name="images")
    if keras.backend.is_keras_tensor(input_tensor):
        return input_tensor
    return keras.Input(tensor=input_tensor, shape=input_shape, name="images")


def get_model(variant, **kwargs):
    """Build a paper variant by name, e.g. ``get_model("B/16", num_classes=10)``.

    Takes every keyword argument of :func:`MlpMixer` except the architecture ones.
    """
    variant = canonical_variant(variant)
    kwargs.setdefault("name", model_name(variant))
    return MlpMixer(**dataclasses.asdict(VARIANTS[variant]), **kwargs)


def _variant_constructor(variant):
    config = VARIANTS[variant]

    def constructor(**kwargs):
        return get_model(variant, **kwargs)

    constructor.__name__ = constructor.__qualname__ = "Mixer" + variant.replace("/", "")
    constructor.__doc__ = (
        f"Mixer-{variant}: patch {config.patch_size}, {config.num_blocks} blocks, "
        f"C={config.hidden_dim}, D_S={config.tokens_mlp_dim}, D_C={config.channels_mlp_dim}.\n\n"
        "Takes every keyword argument of `MlpMixer` except the architecture ones."
    )
    return constructor


MixerS32 = _variant_constructor("S/32")
MixerS16 = _variant_constructor("S/16")
MixerB32 = _variant_constructor("B/32")
MixerB16 = _variant_constructor("B/16")
MixerL32 = _variant_constructor("L/32")
MixerL16 = _variant_constructor("L/16")
MixerH14 = _variant_constructor("H/14")


def mixer_blocks(model):
    """The ``MixerBlock`` layers of a Mixer model, in order."""
    return [layer for layer in model.layers if isinstance(layer, MixerBlock)]


def feature_extractor(model, blocks=None, as_grid=False, name=None):
    """A model that returns the token features after the chosen Mixer blocks.

    Args:
        model: a Mixer built by this package (with or without its head).
        blocks: block indices (negative counts from the end); default all.
        as_grid: reshape each ``(batch, S, C)`` output to
            ``(batch, H/P, W/P, C)``.
        name: name of the new model.

    Returns:
        A ``keras.Model`` mapping the Mixer's input to a list of features.
    """
    all_blocks = mixer_blocks(model)
    if not all_blocks:
        raise ValueError(f"Model {model.name!r} has no MixerBlock layers.")
    indices = range(len(all_blocks)) if blocks is None else blocks
    outputs = []
    for i in indices:
        if not -len(all_blocks) <= i < len(all_blocks):
            raise ValueError(f"Block index {i} out of range for {len(all_blocks)} blocks.")
        features = all_blocks[i].output
        if as_grid:
            stem = model.get_layer("stem")
            grid = check_image_shape(model.input.shape[1:], stem.patch_size)
            features = keras.layers.Reshape(grid + (stem.hidden_dim,))(features)
        outputs.append(features)
    return keras.Model(model.input, outputs, name=name or f"{model.name}_features")
