"""What a Mixer is, as data: the paper's variants, a model's whole configuration, FLOP counts.

Imports nothing of keras-mixer's (the bottom of the import order), so checkpoint
code can describe a foreign checkpoint as a :class:`ModelConfig` without building
a model, and a model (``keras_mixer.MlpMixer``) owns one as ``model.config``.
"""

import dataclasses

LAYER_NORM_EPSILON = 1e-6  # official; Keras' LayerNormalization default is 1e-3
DEFAULT_IMAGE_SIZE = 224
POOLINGS = (None, "avg", "max")
# Resampling filters of the image policy (keras_mixer.images): tf.image.resize's names, which
# keras.layers.Resizing (keras-hub's image converters) also takes.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# The official input scaling, x / 127.5 - 1, as mean and std of [0, 1] pixels (timm's convention).
OFFICIAL_MEAN = OFFICIAL_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class MixerConfig:
    """Architecture of one Mixer: patch size, depth and widths (paper Table 1).

    The paper's variants are ``VARIANTS["S/32"]`` ... ``VARIANTS["H/14"]``.

    Args:
        patch_size: side ``P`` of the square patches, in pixels.
        num_blocks: number of Mixer blocks.
        hidden_dim: token width ``C``.
        tokens_mlp_dim: hidden width ``D_S`` of the token-mixing MLPs.
        channels_mlp_dim: hidden width ``D_C`` of the channel-mixing MLPs.

    Examples:
        >>> keras_mixer.VARIANTS["B/16"]
        MixerConfig(patch_size=16, num_blocks=12, hidden_dim=768, tokens_mlp_dim=384, channels_mlp_dim=3072)
        >>> keras_mixer.MixerConfig.from_width(8, 2, 32).describe()   # D_S = C / 2, D_C = 4 C
        'patch 8, 2 blocks, C=32, D_S=16, D_C=128'
    """

    patch_size: int
    num_blocks: int
    hidden_dim: int
    tokens_mlp_dim: int
    channels_mlp_dim: int

    @classmethod
    def from_width(cls, patch_size, num_blocks, hidden_dim):
        """The paper's proportions: ``D_S = C / 2`` and ``D_C = 4 C``."""
        return cls(patch_size, num_blocks, hidden_dim, hidden_dim // 2, 4 * hidden_dim)

    def describe(self):
        """``"patch 16, 12 blocks, C=768, D_S=384, D_C=3072"`` (with the variant name if any)."""
        text = (f"patch {self.patch_size}, {self.num_blocks} blocks, C={self.hidden_dim}, "
                f"D_S={self.tokens_mlp_dim}, D_C={self.channels_mlp_dim}")
        variant = variant_of(self)
        return f"Mixer-{variant} ({text})" if variant else text


VARIANTS = {
    "S/32": MixerConfig.from_width(32, 8, 512),
    "S/16": MixerConfig.from_width(16, 8, 512),
    "B/32": MixerConfig.from_width(32, 12, 768),
    "B/16": MixerConfig.from_width(16, 12, 768),
    "L/32": MixerConfig.from_width(32, 24, 1024),
    "L/16": MixerConfig.from_width(16, 24, 1024),
    "H/14": MixerConfig.from_width(14, 32, 1280),
}
ARCHITECTURE_FIELDS = tuple(field.name for field in dataclasses.fields(MixerConfig))


def canonical_variant(variant):
    """Canonical name of a paper variant: ``"b16"``, ``"Mixer-B/16"``, ``"Mixer-B_16"`` -> ``"B/16"``.

    Args:
        variant: a variant name in any of the spellings above (any case).

    Returns:
        The key of ``VARIANTS``: ``"S/32"``, ``"S/16"``, ``"B/32"``, ``"B/16"``,
        ``"L/32"``, ``"L/16"`` or ``"H/14"``.

    Raises:
        ValueError: not a paper variant (the message lists them).

    Examples:
        >>> [keras_mixer.canonical_variant(name) for name in ("b16", "Mixer-L/16", "mixer_s_32")]
        ['B/16', 'L/16', 'S/32']
    """
    key = str(variant).upper().replace("MIXER", "").strip("-_ ").replace("_", "/")
    if "/" not in key and len(key) > 1:
        key = f"{key[0]}/{key[1:]}"
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown Mixer variant {variant!r}; known variants: {', '.join(VARIANTS)}."
        )
    return key


def variant_of(architecture):
    """The paper variant with this patch, depth and width (``"B/16"``), or ``None``."""
    for name, config in VARIANTS.items():
        if (config.patch_size, config.num_blocks, config.hidden_dim) == (
                architecture.patch_size, architecture.num_blocks, architecture.hidden_dim):
            return name
    return None


def model_name(variant):
    """Default model name of a variant, e.g. ``"mixer_b16"``."""
    return "mixer_" + str(variant).lower().replace("/", "")


def token_grid(image_shape, patch_size):
    """Validate an ``(H, W, channels)`` shape; return the token grid ``(H/P, W/P)``."""
    image_shape = tuple(image_shape)
    if len(image_shape) != 3:
        raise ValueError(
            f"Mixer expects images of shape (height, width, channels); got a "
            f"shape of rank {len(image_shape)}: {image_shape}."
        )
    height, width, _ = image_shape
    if height is None or width is None:
        raise ValueError(
            "Mixer needs a fixed image height and width (the token-mixing MLP "
            f"depends on the number of patches); got {image_shape}."
        )
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"Image size {height}x{width} is not divisible by the patch size "
            f"{patch_size}: both height and width must be multiples of it."
        )
    return height // patch_size, width // patch_size


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a Mixer model: architecture, input, head, GELU form, image policy.

    The fields are the constructor arguments of ``keras_mixer.MlpMixer`` (with
    ``image_shape`` for ``input_shape``); ``MlpMixer.get_config()`` returns them
    and ``model.config`` is this object. Loading, export, resolution transfer,
    FLOPs, evaluation and visualization all read it. Frozen: :meth:`replace`
    makes a changed copy. Every field is checked when the object is made.

    Args:
        patch_size: side ``P`` of the square patches.
        num_blocks: number of Mixer blocks.
        hidden_dim: token width ``C``.
        tokens_mlp_dim: hidden width ``D_S`` of the token-mixing MLPs.
        channels_mlp_dim: hidden width ``D_C`` of the channel-mixing MLPs.
        image_shape: ``(height, width, channels)``; height and width multiples
            of ``patch_size`` (default 224 x 224 x 3).
        include_top: the model ends with the classification head.
        num_classes: classes of the head.
        classifier_activation: activation of the head (``None``: logits).
        pooling: without the head, ``None`` (tokens), ``"avg"`` or ``"max"``.
        include_preprocessing: the model scales 0-255 pixels itself.
        approximate_gelu: tanh GELU (official) or exact erf (timm's weights).
        layer_norm_epsilon: LayerNorm epsilon (official: 1e-6).
        drop_path_rate: stochastic depth of the last block, in ``[0, 1)``.
        dropout: dropout before the head, in ``[0, 1)``.
        crop_fraction: evaluation and serving center-crop this fraction of an
            image's shorter side before resizing, in ``(0, 1]``.
        name: the model's name.
        interpolation: the resize filter of evaluation and serving
            (``"bilinear"``, ``"bicubic"`` or ``"nearest"``).
        input_mean: the input normalisation's mean per channel (or one number),
            on [0, 1] pixels (default 0.5: the official [-1, 1] inputs).
        input_std: the input normalisation's standard deviation (default 0.5).

    Raises:
        ValueError: a field out of range (the message names it).

    Examples:
        >>> config = keras_mixer.ModelConfig(8, 2, 32, 16, 64, image_shape=(32, 32, 3),
        ...                                  num_classes=10)
        >>> config.grid, config.pixel_scaling
        ((4, 4), (0.00784313725490196, -1.0))
        >>> model = keras_mixer.MlpMixer(**config.to_kwargs())
        >>> model.config == config
        True
        >>> config.replace(image_shape=(64, 64, 3)).grid
        (8, 8)
    """

    patch_size: int
    num_blocks: int
    hidden_dim: int
    tokens_mlp_dim: int
    channels_mlp_dim: int
    image_shape: tuple = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3)
    include_top: bool = True
    num_classes: int = 1000
    classifier_activation: str = "softmax"
    pooling: str = None
    include_preprocessing: bool = True
    approximate_gelu: bool = True
    layer_norm_epsilon: float = LAYER_NORM_EPSILON
    drop_path_rate: float = 0.0
    dropout: float = 0.0
    # Evaluation and serving center-crop this fraction of the shorter side before resizing
    # (keras_mixer.images); stored here so that it travels with the model into its exports.
    crop_fraction: float = 1.0
    name: str = "mlp_mixer"
    # The image policy's resampling filter (a preset's: timm's Mixers were evaluated "bicubic").
    interpolation: str = "bilinear"
    # The input normalisation, per channel on [0, 1] pixels as timm's pretrained_cfg gives it:
    # the preprocessing layer computes (x / 255 - mean) / std; 0.5 / 0.5 is the official [-1, 1].
    input_mean: tuple = OFFICIAL_MEAN
    input_std: tuple = OFFICIAL_STD

    def __post_init__(self):
        for field in ARCHITECTURE_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}.")
        object.__setattr__(self, "image_shape", tuple(
            None if d is None else int(d) for d in self.image_shape))
        token_grid(self.image_shape, self.patch_size)
        if self.include_top and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(
                f"include_top=True needs num_classes >= 1, got num_classes={self.num_classes!r}."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be None, 'avg' or 'max', got {self.pooling!r}.")
        for field in ("drop_path_rate", "dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{field} must be in [0, 1), got {getattr(self, field)}.")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                             f"got {self.interpolation!r}.")
        for field in ("input_mean", "input_std"):
            object.__setattr__(self, field, per_channel(field, getattr(self, field),
                                                         self.image_shape[2]))
        if min(self.input_std) <= 0:
            raise ValueError(f"input_std must be positive, got {self.input_std}.")

    @property
    def architecture(self):
        """The :class:`MixerConfig` part."""
        return MixerConfig(**{field: getattr(self, field) for field in ARCHITECTURE_FIELDS})

    @property
    def variant(self):
        """The paper variant (``"B/16"``) of this patch, depth and width, or ``None``."""
        return variant_of(self)

    @property
    def image_size(self):
        """``(height, width)``."""
        return self.image_shape[0], self.image_shape[1]

    @property
    def grid(self):
        """The token grid ``(H/P, W/P)``."""
        return token_grid(self.image_shape, self.patch_size)

    @property
    def pixel_scaling(self):
        """``(scale, offset)`` that map 0-255 pixels to the model's inputs (``x * scale + offset``).

        Numbers when every channel has the same, else one list entry per channel;
        the official ``(1 / 127.5, -1)`` for the default mean and std.
        """
        scale = [1.0 / (255.0 * std) for std in self.input_std]
        offset = [-mean / std for mean, std in zip(self.input_mean, self.input_std)]
        if len(set(scale)) == 1 and len(set(offset)) == 1:
            return scale[0], offset[0]
        return scale, offset

    @property
    def outputs_probabilities(self):
        """Whether the model ends in a softmax (else logits, or features without a head)."""
        return self.include_top and self.classifier_activation == "softmax"

    def replace(self, **changes):
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_kwargs(self):
        """``MlpMixer`` constructor arguments (``input_shape`` for ``image_shape``)."""
        kwargs = dataclasses.asdict(self)
        kwargs["input_shape"] = kwargs.pop("image_shape")
        return kwargs

    @classmethod
    def from_kwargs(cls, **kwargs):
        """The inverse of :meth:`to_kwargs`; ``input_shape=None`` means 224x224x3."""
        kwargs = dict(kwargs)
        input_shape = kwargs.pop("input_shape", None)
        if input_shape is not None:
            kwargs["image_shape"] = tuple(input_shape)
        return cls(**kwargs)


def per_channel(field, value, channels):
    """``value`` as a tuple of ``channels`` floats; one number (or all equal) serves every channel."""
    values = (value,) if isinstance(value, (int, float)) else tuple(value)
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be numbers, got {value!r}.") from None
    if channels is not None and values and len(set(values)) == 1:
        values = values[:1] * channels
    if channels is not None and len(values) != channels:
        raise ValueError(f"{field} needs one value per channel ({channels}), got {value!r}.")
    return values


def flops(config, image_size=224, num_classes=1000, channels=3):
    """Forward-pass FLOPs per image of a Mixer (a multiply-add counts as 2 FLOPs).

    Counts the matrix products, which are all but ~1% of the work: the stem
    projection, the two token-mixing and two channel-mixing products of every
    block, and the head (``num_classes=0`` for none). LayerNorm, GELU, biases
    and residual adds are left out. Mixer-B/16 at 224: ~25.2 GFLOP.

    Args:
        config: a :class:`MixerConfig`, a :class:`ModelConfig` (its own image
            size and head are used), a dict of architecture fields, or a
            variant name such as ``"B/16"``.
        image_size: ``H`` (square) or ``(H, W)``, in pixels.
        num_classes: classes of the head (``0`` for none).
        channels: image channels.

    Returns:
        The FLOPs of one image's forward pass, as an ``int``.

    Raises:
        ValueError: the image size is not a multiple of the patch size.

    Examples:
        >>> round(keras_mixer.flops("B/16") / 1e9, 1)       # GFLOP per 224 x 224 image
        25.2
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> keras_mixer.flops(model.config)
        588288
    """
    config, tokens, num_classes, channels = _counted_sizes(config, image_size, num_classes, channels)
    width_c = config.hidden_dim
    stem = tokens * config.patch_size ** 2 * channels * width_c
    token_mixing = 2 * width_c * tokens * config.tokens_mlp_dim
    channel_mixing = 2 * tokens * width_c * config.channels_mlp_dim
    head = width_c * num_classes
    return 2 * (stem + config.num_blocks * (token_mixing + channel_mixing) + head)


def parameter_count(config, image_size=224, num_classes=1000, channels=3):
    """Number of weights of a Mixer, from its sizes alone (no model is built).

    Args:
        config: as for :func:`flops` (a :class:`ModelConfig` uses its own image
            size and head).
        image_size: ``H`` (square) or ``(H, W)``: the token count sets the token-mixing sizes.
        num_classes: classes of the head (``0`` for none).
        channels: image channels.

    Returns:
        The count (Mixer-B/16 at 224 with 1000 classes: 59,880,472, as paper Table 1).

    Examples:
        >>> keras_mixer.parameter_count("B/16")
        59880472
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> keras_mixer.parameter_count(model.config) == model.count_params()
        True
    """
    config, tokens, num_classes, channels = _counted_sizes(config, image_size, num_classes, channels)
    width_c, d_s, d_c = config.hidden_dim, config.tokens_mlp_dim, config.channels_mlp_dim
    stem = config.patch_size ** 2 * channels * width_c + width_c
    block = (4 * width_c                              # two LayerNorms
             + 2 * tokens * d_s + d_s + tokens        # token-mixing MLP
             + 2 * width_c * d_c + d_c + width_c)     # channel-mixing MLP
    head = (width_c + 1) * num_classes
    return stem + config.num_blocks * block + 2 * width_c + head


def _counted_sizes(config, image_size, num_classes, channels):
    """``(architecture, tokens, num_classes, channels)`` that :func:`flops` and
    :func:`parameter_count` count with: a :class:`ModelConfig` gives its own image size and
    head; the image size must be a multiple of the patch size."""
    if isinstance(config, ModelConfig):
        image_size = config.image_size
        num_classes = config.num_classes if config.include_top else 0
        channels = config.image_shape[2]
    config = as_architecture(config)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    patch = config.patch_size
    if height % patch or width % patch:
        raise ValueError(f"Image size {height}x{width} is not divisible by the patch size {patch}.")
    return config, (height // patch) * (width // patch), num_classes, channels


def as_architecture(config):
    """A :class:`MixerConfig` from a MixerConfig, ModelConfig, dict or variant name."""
    if isinstance(config, MixerConfig):
        return config
    if isinstance(config, ModelConfig):
        return config.architecture
    if isinstance(config, dict):
        return MixerConfig(**{k: config[k] for k in ARCHITECTURE_FIELDS})
    return VARIANTS[canonical_variant(config)]
