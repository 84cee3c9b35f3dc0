"""MLP-Mixer models: ``MlpMixer`` (a ``keras.Model`` that owns its config), the paper variants,
and the one way to build a model from a name, a config, a ``.keras`` file or a checkpoint.

Shaped like ``keras.applications``: every constructor takes ``include_top``,
``weights``, ``input_tensor``, ``input_shape``, ``pooling``, ``num_classes``,
``classifier_activation`` and ``include_preprocessing``. Like keras-hub's
backbones, ``MlpMixer`` builds a functional graph in ``__init__`` and returns
its constructor arguments from ``get_config()``; ``model.config`` is the
:class:`~keras_mixer.config.ModelConfig` that everything downstream reads.
"""

import os
import zipfile
import zlib

import keras
import numpy as np

from keras_mixer import checkpoints, inductor
from keras_mixer.checkpoints import formats, keys, presets, tiling
from keras_mixer.config import (
    LAYER_NORM_EPSILON,
    VARIANTS,
    ModelConfig,
    canonical_variant,
    model_name,
    token_grid,
)
from keras_mixer.files import describe_contents
from keras_mixer.files import atomic_output
from keras_mixer.layers import PACKAGE, MixerBlock, PatchEmbedding, fused_inference, layer_norm

# Layer names: the one place that knows them (the properties below give the layers).
STEM, PRE_HEAD_NORM, HEAD = "stem", "pre_head_layer_norm", "head"


def block_name(index):
    return f"mixer_block_{index}"


def _mixer_graph(inputs, config):
    """The Mixer's layers applied to ``inputs`` as ``config`` says."""
    x = inputs
    if config.include_preprocessing:
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocessing")(x)
    x = PatchEmbedding(config.patch_size, config.hidden_dim, name=STEM)(x)
    for i in range(config.num_blocks):
        x = MixerBlock(
            config.tokens_mlp_dim,
            config.channels_mlp_dim,
            drop_path_rate=config.drop_path_rate * i / max(config.num_blocks - 1, 1),
            approximate_gelu=config.approximate_gelu,
            layer_norm_epsilon=config.layer_norm_epsilon,
            name=block_name(i),
        )(x)
    x = layer_norm(PRE_HEAD_NORM, config.layer_norm_epsilon)(x)
    if config.include_top:
        x = keras.layers.GlobalAveragePooling1D(name="avg_pool")(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
        x = keras.layers.Dense(config.num_classes, kernel_initializer="zeros", name=HEAD)(x)
        # Keep the outputs in float32 under mixed precision.
        x = keras.layers.Activation(config.classifier_activation, dtype="float32",
                                    name="predictions")(x)
    elif config.pooling == "avg":
        x = keras.layers.GlobalAveragePooling1D(name="avg_pool")(x)
    elif config.pooling == "max":
        x = keras.layers.GlobalMaxPooling1D(name="max_pool")(x)
    return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class MlpMixer(keras.Model):
    """An MLP-Mixer of any size (Tolstikhin et al., 2021).

    Args:
        patch_size: side ``P`` of the square patches.
        num_blocks: number of Mixer blocks.
        hidden_dim: token width ``C``.
        tokens_mlp_dim: hidden width ``D_S`` of the token-mixing MLPs.
        channels_mlp_dim: hidden width ``D_C`` of the channel-mixing MLPs.
        include_top: end with the classification head.
        weights: ``None`` (random init), or a weights file / preset accepted
            by :func:`keras_mixer.load_weights`.
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
        crop_fraction: evaluation and serving center-crop this fraction of an
            image's shorter side before resizing (``keras_mixer.images``); kept
            in the config so that it travels into exports.
        name: model name.
        dtype: a Keras dtype policy for every layer (``"bfloat16"``,
            ``"mixed_bfloat16"``, ...); default Keras' global policy. LayerNorm
            statistics and the outputs stay float32 under any policy.
    """

    def __init__(
        self,
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
        crop_fraction=1.0,
        name="mlp_mixer",
        dtype=None,
        **kwargs,
    ):
        # === Config === (validated before anything is built)
        config = ModelConfig(
            patch_size=patch_size, num_blocks=num_blocks, hidden_dim=hidden_dim,
            tokens_mlp_dim=tokens_mlp_dim, channels_mlp_dim=channels_mlp_dim,
            image_shape=_input_shape(input_tensor, input_shape), include_top=include_top,
            num_classes=num_classes, classifier_activation=classifier_activation,
            pooling=pooling, include_preprocessing=include_preprocessing,
            approximate_gelu=approximate_gelu, layer_norm_epsilon=layer_norm_epsilon,
            drop_path_rate=drop_path_rate, dropout=dropout, crop_fraction=crop_fraction,
            name=name,
        )
        # === Functional model === (every layer under the model's dtype policy)
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
        with dtype_policy(policy):
            inputs = _model_input(input_tensor, config.image_shape)
            outputs = _mixer_graph(inputs, config)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.dtype_policy = policy  # a functional model keeps no dtype of its own
        self._mixer_config = config
        if weights is not None:
            checkpoints.load_weights(self, weights)

    @property
    def config(self):
        """The :class:`~keras_mixer.config.ModelConfig` of this model."""
        return self._mixer_config

    def predict_step(self, *args, **kwargs):
        """Keras' step; on TensorFlow with bias + GELU and LayerNorm in XLA (:func:`fused_inference`)."""
        with fused_inference():
            return super().predict_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        """Keras' step, fused like :meth:`predict_step`."""
        with fused_inference():
            return super().test_step(*args, **kwargs)

    def make_predict_function(self, force=False):
        """On torch with ``jit_compile=True``: :func:`keras_mixer.inductor.predict_function`.

        Keras' own ``torch.compile`` of ``predict_step`` breaks the graph at every layer
        call; the exported, frozen graph runs bf16 matmuls on oneDNN with fused bias and GELU.
        """
        if keras.backend.backend() != "torch" or not self.jit_compile:
            return super().make_predict_function(force)
        if self.predict_function is None or force:
            self.predict_function = inductor.predict_function(self)
        return self.predict_function

    @property
    def stem(self):
        return self.get_layer(STEM)

    @property
    def blocks(self):
        """The ``MixerBlock`` layers, in order."""
        return [self.get_layer(block_name(i)) for i in range(self.config.num_blocks)]

    @property
    def pre_head_norm(self):
        return self.get_layer(PRE_HEAD_NORM)

    @property
    def head(self):
        """The classification ``Dense`` (``None`` without ``include_top``)."""
        return self.get_layer(HEAD) if self.config.include_top else None

    def get_config(self):
        config = self.config.to_kwargs()
        config.update(name=self.name, trainable=self.trainable)
        if self.dtype_policy.name != "float32":
            config["dtype"] = keras.dtype_policies.serialize(self.dtype_policy)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class dtype_policy:
    """``with dtype_policy("bfloat16"):`` sets Keras' global dtype policy for the block."""

    def __init__(self, policy):
        self.policy = policy

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.policy)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)


def with_dtype(model, dtype):
    """The same Mixer (same weights) computing under the Keras dtype policy ``dtype``.

    ``model`` itself when it already has that policy; else a new :class:`MlpMixer`
    whose variables hold ``model``'s weights cast to the policy's variable dtype.
    """
    policy = keras.dtype_policies.get(dtype)
    if policy.name == model.dtype_policy.name:
        return model
    copy = MlpMixer(**model.config.to_kwargs(), dtype=policy)
    for target, source in zip(copy.weights, model.weights):
        target.assign(keras.ops.cast(source, target.dtype))
    return copy


def drift(expected, actual):
    """How far ``actual`` outputs (logits or probabilities) are from ``expected`` ones.

    Returns ``top1_agreement`` (fraction of rows with the same arg-max),
    ``relative_error`` (``||actual - expected|| / ||expected||`` over all
    values) and ``max_abs_error``.
    """
    expected = np.asarray(expected, dtype="float64")
    actual = np.asarray(actual, dtype="float64")
    if expected.shape != actual.shape or expected.ndim != 2:
        raise ValueError(f"Compare outputs of the same (batch, classes) shape, got "
                         f"{expected.shape} and {actual.shape}.")
    norm = np.linalg.norm(expected)
    return dict(
        top1_agreement=float(np.mean(expected.argmax(-1) == actual.argmax(-1))),
        relative_error=float(np.linalg.norm(actual - expected) / norm) if norm else float("inf"),
        max_abs_error=float(np.max(np.abs(actual - expected))),
        num_images=int(expected.shape[0]),
    )


def _input_shape(input_tensor, input_shape):
    if input_shape is None:
        return (tuple(input_tensor.shape[1:]) if input_tensor is not None
                else (224, 224, 3))
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be 3D (height, width, channels), got {input_shape}.")
    return input_shape


def _model_input(input_tensor, input_shape):
    if input_tensor is None:
        return keras.Input(shape=input_shape, name="images")
    if keras.backend.is_keras_tensor(input_tensor):
        return input_tensor
    return keras.Input(tensor=input_tensor, shape=input_shape, name="images")


# ----------------------------------------------------------------------------- variants


def get_model(variant, **kwargs):
    """Build a paper variant by name, e.g. ``get_model("B/16", num_classes=10)``.

    Takes every keyword argument of :class:`MlpMixer` except the architecture ones.
    """
    variant = canonical_variant(variant)
    kwargs.setdefault("name", model_name(variant))
    architecture = VARIANTS[variant]
    return MlpMixer(architecture.patch_size, architecture.num_blocks, architecture.hidden_dim,
                    architecture.tokens_mlp_dim, architecture.channels_mlp_dim, **kwargs)


def _variant_constructor(variant):
    def constructor(**kwargs):
        return get_model(variant, **kwargs)

    constructor.__name__ = constructor.__qualname__ = "Mixer" + variant.replace("/", "")
    constructor.__doc__ = (
        f"{VARIANTS[variant].describe()}.\n\n"
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
    return model.blocks


# ----------------------------------------------------------------------------- one way to build


def from_config(config, weights=None, **changes):
    """A new :class:`MlpMixer` from a :class:`~keras_mixer.config.ModelConfig` (plus ``changes``)."""
    return MlpMixer(**config.replace(**changes).to_kwargs(), weights=weights)


def model_from_checkpoint(path, image_size=None, verbose=True, **kwargs):
    """Build the Mixer a checkpoint file describes and load it.

    Args:
        path: ``.npz``, ``.pth``, ``.safetensors`` or Keras ``.weights.h5`` checkpoint.
        image_size: build at this size (int or ``(height, width)``) with the
            paper's resolution transfer; default: the checkpoint's size.
        verbose: emit the loader's messages as warnings.
        **kwargs: other :class:`MlpMixer` arguments (``num_classes``,
            ``include_preprocessing``, ``approximate_gelu``, ...).

    Returns:
        ``(model, summary)``.
    """
    params = formats.read_checkpoint(path)
    config = checkpoints.config_from_params(params)
    if image_size is not None:
        config = _resized_config(config, image_size)
    model = MlpMixer(**config.replace(**_as_config_fields(kwargs)).to_kwargs())
    return model, checkpoints.load_params(model, params, verbose=verbose)


def _as_config_fields(kwargs):
    kwargs = dict(kwargs)
    if "input_shape" in kwargs:
        kwargs["image_shape"] = tuple(kwargs.pop("input_shape"))
    return kwargs


def _resized_config(config, image_size):
    """``config`` at ``image_size`` with ``tokens_mlp_dim`` scaled for the block-diagonal init."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    target_shape = (int(image_size[0]), int(image_size[1]), config.image_shape[2])
    kh, kw = tiling.tiling_factors(config.grid, token_grid(target_shape, config.patch_size))
    return config.replace(image_shape=target_shape, tokens_mlp_dim=config.tokens_mlp_dim * kh * kw)


def convert_resolution(model, image_size, name=None):
    """A new Mixer at ``image_size`` initialised from ``model`` by the paper's scheme.

    Args:
        model: a :class:`MlpMixer`.
        image_size: ``int`` or ``(height, width)``; each side an integer multiple
            of the model's (same patch size).
        name: name of the new model (default: the old one's).

    Returns:
        A new model with ``tokens_mlp_dim`` multiplied by the number of tiles and
        block-diagonal token-mixing weights; every other weight copied. On an
        image made of independent tiles, each tile's tokens are mixed exactly as
        the original model mixes that tile on its own.
    """
    config = _resized_config(model.config, image_size).replace(name=name or model.name)
    new_model = from_config(config)
    target_grid = token_grid(config.image_shape, config.patch_size)
    params = tiling.expand_token_mixing(keys.get_params(model), model.config.grid, target_grid)
    checkpoints.load_params(new_model, params, verbose=False)
    return new_model


def load_model(source, variant=None, image_size=None, verbose=True, **kwargs):
    """The one way to get a Mixer from a name, a file or a preset.

    Args:
        source: a ``.keras`` model file (also one written by keras-mixer 0.1,
            converted to :class:`MlpMixer`), a checkpoint (``.npz``, ``.pth``,
            ``.safetensors``: the architecture is read off its shapes), a paper
            variant name (``"B/16"``: random weights), or a preset name /
            ``.weights.h5`` file together with ``variant``.
        variant: paper variant for presets and ``.weights.h5`` files.
        image_size: int or ``(height, width)``; resolution transfer when it differs.
        verbose: emit the loader's messages as warnings.
        **kwargs: other :class:`MlpMixer` arguments (not for ``.keras`` files,
            which fix the architecture).

    Returns:
        An :class:`MlpMixer`.
    """
    path = os.fspath(source)
    if formats.has_suffix(path, formats.KERAS_MODEL_SUFFIXES):
        if kwargs:
            raise ValueError(f"A .keras file fixes the architecture; got extra arguments {kwargs}.")
        model = load_keras_file(path)
    elif formats.has_suffix(path, formats.CHECKPOINT_SUFFIXES):
        return model_from_checkpoint(path, image_size=image_size, verbose=verbose, **kwargs)[0]
    elif presets.is_preset_name(path) or formats.has_suffix(path, formats.KERAS_WEIGHTS_SUFFIXES):
        if variant is None:
            raise ValueError(f"Loading {path!r} needs the variant (e.g. variant='B/16').")
        model = get_model(variant, weights=path, **kwargs)
    elif variant is None and _is_variant(path):
        model = get_model(path, **kwargs)
    else:
        raise ValueError(
            f"Cannot build a Mixer from {path!r}: expected a .keras model, a checkpoint "
            "(.npz, .pth, .safetensors), a paper variant (B/16, ...), or a preset name / "
            ".weights.h5 file with variant=."
        )
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if size != model.config.image_size:
            model = convert_resolution(model, size)
    return model


def _is_variant(name):
    try:
        canonical_variant(name)
    except ValueError:
        return False
    return True


def load_keras_file(path, compile=True):
    """A ``.keras`` Mixer, loaded with ``safe_mode``; a keras-mixer 0.1 file is converted.

    keras-mixer 0.1 saved plain functional models; their architecture is read
    off the graph once here and the weights are copied into an :class:`MlpMixer`.
    A file that is not a complete ``.keras`` archive (empty, text, truncated,
    damaged) raises :class:`~keras_mixer.checkpoints.CheckpointError` saying so.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file not found: {path}")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise checkpoints.CheckpointError(
            f"Cannot load {path}: the file {describe_contents(path)}; a .keras model file is "
            "a zip archive (written by model.save)."
        )
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:
        damaged = _damaged_member(path)
        problem = None if damaged else formats.keras_archive_problem(path, error)
        if damaged is None and problem is None:
            raise
        raise checkpoints.CheckpointError(
            f"Cannot load {path}: " + (f"the file is corrupt ({damaged})." if damaged else f"{problem}.")
        ) from error
    if isinstance(model, MlpMixer):
        return model
    upgraded = from_config(_functional_config(model))
    for layer in upgraded.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return upgraded


def _damaged_member(path):
    """Which member of a zip archive fails its CRC check, or ``None``."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        return f"it cannot be read as a zip archive: {error}"
    return None if bad is None else f"its member {bad!r} fails its CRC check"


def save_keras_file(model, path):
    """Write ``model`` to a ``.keras`` file atomically (a temporary file, then a rename)."""
    with atomic_output(path) as temp:
        model.save(temp)
    return os.fspath(path)


def _functional_config(model):
    """The :class:`ModelConfig` of a keras-mixer 0.1 functional Mixer, read off its layers."""
    names = {layer.name for layer in model.layers}
    blocks = [layer for layer in model.layers if isinstance(layer, MixerBlock)]
    if STEM not in names or not blocks:
        raise ValueError(f"Model {model.name!r} in this file is not a Mixer (no stem or MixerBlocks).")
    stem = model.get_layer(STEM)
    fields = dict(
        patch_size=stem.patch_size, num_blocks=len(blocks), hidden_dim=stem.hidden_dim,
        tokens_mlp_dim=blocks[0].tokens_mlp_dim, channels_mlp_dim=blocks[0].channels_mlp_dim,
        image_shape=tuple(model.input.shape[1:]), include_top=HEAD in names,
        include_preprocessing="preprocessing" in names, drop_path_rate=blocks[-1].drop_path_rate,
        approximate_gelu=blocks[0].approximate_gelu,
        layer_norm_epsilon=blocks[0].layer_norm_epsilon, name=model.name,
    )
    if fields["include_top"]:
        fields["num_classes"] = model.get_layer(HEAD).units
        fields["classifier_activation"] = model.get_layer("predictions").get_config()["activation"]
        if "head_dropout" in names:
            fields["dropout"] = model.get_layer("head_dropout").rate
    else:
        fields["pooling"] = "avg" if "avg_pool" in names else "max" if "max_pool" in names else None
    return ModelConfig(**fields)


# ----------------------------------------------------------------------------- features


def feature_extractor(model, blocks=None, as_grid=False, name=None):
    """A model that returns the token features after the chosen Mixer blocks.

    Args:
        model: a :class:`MlpMixer` (with or without its head).
        blocks: block indices (negative counts from the end); default all.
        as_grid: reshape each ``(batch, S, C)`` output to
            ``(batch, H/P, W/P, C)``.
        name: name of the new model.

    Returns:
        A ``keras.Model`` mapping the Mixer's input to a list of features.
    """
    all_blocks = model.blocks
    indices = range(len(all_blocks)) if blocks is None else blocks
    outputs = []
    for i in indices:
        if not -len(all_blocks) <= i < len(all_blocks):
            raise ValueError(f"Block index {i} out of range for {len(all_blocks)} blocks.")
        features = all_blocks[i].output
        if as_grid:
            features = keras.layers.Reshape(model.config.grid + (model.config.hidden_dim,))(features)
        outputs.append(features)
    return keras.Model(model.input, outputs, name=name or f"{model.name}_features")
