"""MLP-Mixer models: ``MlpMixer`` (a ``keras.Model`` that owns its config), the paper variants,
and the one way to build a model from a name, a config, a ``.keras`` file or a checkpoint.

Shaped like ``keras.applications``: every constructor takes ``include_top``,
``weights``, ``input_tensor``, ``input_shape``, ``pooling``, ``num_classes``,
``classifier_activation`` and ``include_preprocessing``, and rejects unknown
arguments. Like keras-hub's backbones, ``MlpMixer`` builds a functional graph in
``__init__`` and returns its constructor arguments from ``get_config()``;
``model.config`` is the :class:`~keras_mixer.config.ModelConfig` that everything
downstream reads. After ``import keras_mixer``, ``keras.saving.load_model`` loads
the ``.keras`` files this release writes.
"""

import importlib
import inspect
import os
import re
import zipfile
import zlib

import keras
import numpy as np

from keras_mixer import checkpoints, compat, fast, inductor
from keras_mixer.checkpoints import formats, keys, presets, tiling
from keras_mixer.config import (
    LAYER_NORM_EPSILON,
    OFFICIAL_MEAN,
    OFFICIAL_STD,
    VARIANTS,
    ModelConfig,
    canonical_variant,
    model_name,
    parameter_count,
    token_grid,
)
from keras_mixer.files import atomic_output, describe_contents
from keras_mixer.layers import PACKAGE, LayerNorm, MixerBlock, PatchEmbedding

# Layer names: the one place that knows them (the properties below give the layers).
STEM, PRE_HEAD_NORM, HEAD = "stem", "pre_head_layer_norm", "head"


def block_name(index):
    return f"mixer_block_{index}"


def _mixer_graph(inputs, config):
    """The Mixer's layers applied to ``inputs`` as ``config`` says."""
    x = inputs
    if config.include_preprocessing:
        scale, offset = config.pixel_scaling
        x = keras.layers.Rescaling(scale, offset=offset, name="preprocessing")(x)
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
    x = LayerNorm(config.layer_norm_epsilon, name=PRE_HEAD_NORM)(x)
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

    Images ``(batch, H, W, 3)`` go through the stem (a ``P x P`` convolution with
    stride ``P``), ``num_blocks`` :class:`~keras_mixer.MixerBlock` layers, a
    LayerNorm, the mean over tokens and a ``Dense`` head, exactly as the official
    code computes them. The paper's sizes are :func:`MixerB16` and its siblings.

    Args:
        patch_size: side ``P`` of the square patches.
        num_blocks: number of Mixer blocks.
        hidden_dim: token width ``C``.
        tokens_mlp_dim: hidden width ``D_S`` of the token-mixing MLPs.
        channels_mlp_dim: hidden width ``D_C`` of the channel-mixing MLPs.
        include_top: end with the classification head.
        weights: ``None`` (random init), or a weights file / preset / handle
            (``hf://...``, ``kaggle://...``, a preset folder) accepted by
            :func:`keras_mixer.load_weights`. The variant constructors
            (``MixerB16(weights=...)``) also take the preset's GELU, input
            normalisation, eval crop and filter, and classes as defaults.
        input_tensor: optional Keras tensor to use as the model's input (as in
            ``keras.applications``: the model's inputs are then the inputs it
            comes from).
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
        approximate_gelu: tanh GELU as the official code (default) or exact erf
            (timm's and keras-cv's weights).
        layer_norm_epsilon: LayerNorm epsilon (official: 1e-6).
        crop_fraction: evaluation and serving center-crop this fraction of an
            image's shorter side before resizing (``keras_mixer.images``); kept
            in the config so that it travels into exports.
        interpolation: the resampling filter of evaluation and serving
            (``"bilinear"``, ``"bicubic"``, ``"nearest"``); kept like ``crop_fraction``.
        input_mean: the input normalisation's mean, per channel (or one number)
            on [0, 1] pixels: the preprocessing layer computes
            ``(x / 255 - input_mean) / input_std``. Default 0.5: the official [-1, 1].
        input_std: the input normalisation's standard deviation (default 0.5).
        name: model name.
        dtype: a Keras dtype policy for every layer (``"bfloat16"``,
            ``"mixed_bfloat16"``, ...); default Keras' global policy. LayerNorm
            statistics and the outputs stay float32 under any policy.
        trainable: whether the model's weights are trainable.

    Call arguments:
        - inputs: images ``(batch, H, W, channels)`` of the model's
          ``input_shape``: 0-255 pixels with ``include_preprocessing`` (the
          default), else pixels already scaled as the preprocessing would.
        - training: dropout and stochastic depth are active only when ``True``.

    Returns:
        Called on images: class probabilities ``(batch, num_classes)`` (logits
        with ``classifier_activation=None``); without the head, the normalised
        tokens ``(batch, S, C)``, or ``(batch, C)`` with ``pooling``.
        ``model.config`` is the model's :class:`~keras_mixer.config.ModelConfig`.

    Raises:
        TypeError: an unknown argument.
        ValueError: an argument out of range (e.g. an image size that is not a
            multiple of ``patch_size``, ``dropout`` outside ``[0, 1)``).

    Examples:
        >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
        ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
        ...                              input_shape=(32, 32, 3), num_classes=10)
        >>> model.predict(np.zeros((2, 32, 32, 3)), verbose=0).shape
        (2, 10)
        >>> model.config.grid, model.config.variant      # 4 x 4 patches; no paper variant
        ((4, 4), None)
        >>> features = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                                 include_top=False, pooling="avg")
        >>> tuple(features(np.zeros((2, 32, 32, 3))).shape)
        (2, 32)
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
        interpolation="bilinear",
        input_mean=OFFICIAL_MEAN,
        input_std=OFFICIAL_STD,
        name="mlp_mixer",
        dtype=None,
        trainable=True,
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
            name=name, interpolation=interpolation, input_mean=input_mean, input_std=input_std,
        )
        # === Functional model === (every layer under the model's dtype policy)
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
        with dtype_policy(policy):
            images = _model_input(input_tensor, config.image_shape)
            outputs = _mixer_graph(images, config)
        # As keras.applications: a model built on another model's tensor starts at that model's inputs.
        from_tensor = input_tensor is not None and keras.backend.is_keras_tensor(input_tensor)
        inputs = keras.utils.get_source_inputs(input_tensor) if from_tensor else [images]
        super().__init__(inputs=inputs[0] if len(inputs) == 1 else inputs, outputs=outputs, name=name)
        self.dtype_policy = policy  # a functional model keeps no dtype of its own
        self._mixer_config = config
        self.trainable = trainable  # after the layers exist, so that it reaches them
        if weights is not None:
            checkpoints.load_weights(self, weights)

    @property
    def config(self):
        """The :class:`~keras_mixer.config.ModelConfig` of this model.

        Returns:
            The model's whole configuration (architecture, input, head, GELU
            form, image policy), which loading, export and evaluation read.

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> model.config.num_classes, model.config.image_shape
            (10, (32, 32, 3))
        """
        return self._mixer_config

    def predict_step(self, *args, **kwargs):
        """Keras' step, under :func:`keras_mixer.fast.inference` (backend fast paths)."""
        with fast.inference():
            return super().predict_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        """Keras' step, under :func:`keras_mixer.fast.inference` like :meth:`predict_step`."""
        with fast.inference():
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

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Keras' ``Model.quantize``: ``"int8"``, ``"int4"`` or ``"float8"`` weights for the ``Dense`` layers.

        Those are the four MLP matrices of every block and the head: all but the
        stem's share of the FLOPs (Keras quantizes no convolution). Keras' ``"gptq"``
        and ``"awq"`` calibrate on token sequences (a tokenizer, int32 token ids)
        and do not apply to an image model. A quantized model saves and loads as
        ``.keras``. The model changes in place.

        Args:
            mode: ``"int8"``, ``"int4"`` or ``"float8"`` (Keras' modes).
            config: a Keras quantization config instead of ``mode``.
            filters: Keras' layer filter (a callable, a regex or a list of
                them); default: every ``Dense``.
            **kwargs: passed on to Keras' ``Model.quantize``.

        Raises:
            ValueError: ``"gptq"`` or ``"awq"`` (or their configs).

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=1, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> model.quantize("int8")
            >>> [(path, layer.quantization_mode) for path, layer in model.layer_paths()
            ...  if isinstance(layer, keras.layers.Dense)]        # doctest: +NORMALIZE_WHITESPACE
            [('mixer_block_0/token_mixing/dense_0', 'int8'),
             ('mixer_block_0/token_mixing/dense_1', 'int8'),
             ('mixer_block_0/channel_mixing/dense_0', 'int8'),
             ('mixer_block_0/channel_mixing/dense_1', 'int8'), ('head', 'int8')]
        """
        if (config is None and mode in ("gptq", "awq")) or type(config).__name__ in (
                "GPTQConfig", "AWQConfig"):
            raise ValueError(
                f"Keras' {mode or type(config).__name__} quantization calibrates on token sequences "
                "(it tokenizes its calibration data and casts it to int32 token ids), so it does not "
                "apply to an image model. Use model.quantize('int8'), 'int4' or 'float8'.")
        if filters is None:
            filters = lambda layer: isinstance(layer, keras.layers.Dense)  # noqa: E731
        super().quantize(mode, config=config, filters=filters, **kwargs)

    def enable_lora(self, rank, lora_alpha=None, mlps=("token_mixing", "channel_mixing"),
                    train_head=True):
        """Fine-tune with LoRA: low-rank adapters on the blocks' MLPs, everything else frozen.

        As keras-hub's ``Backbone.enable_lora``: every layer is frozen, then each
        ``Dense`` of the chosen MLPs gets Keras' own
        ``enable_lora(rank)`` (its kernel stays frozen; two small trainable
        matrices are added). The head stays trainable when ``train_head`` (a new
        task needs a new head). Saving and loading keep the adapters.

        Args:
            rank: rank of the adapters (a positive integer).
            lora_alpha: Keras' LoRA scale (default: ``rank``).
            mlps: which MLPs get adapters: ``"token_mixing"`` and/or ``"channel_mixing"``.
            train_head: keep the classification head trainable.

        Raises:
            ValueError: ``mlps`` names something else.

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> model.enable_lora(4)
            >>> sorted({w.path.split("/")[-1] for w in model.trainable_weights})  # the head's too
            ['bias', 'kernel', 'lora_kernel_a', 'lora_kernel_b']
            >>> model.blocks[0].token_mixing.dense_0.lora_rank
            4
        """
        unknown = set(mlps) - {"token_mixing", "channel_mixing"}
        if unknown:
            raise ValueError(f"mlps are 'token_mixing' and/or 'channel_mixing', got {sorted(unknown)}.")
        self.trainable = True
        for _, layer in self.layer_paths():
            layer.trainable = False
        for block in self.blocks:
            block.trainable = True
            for name, mlp in (("token_mixing", block.token_mixing),
                              ("channel_mixing", block.channel_mixing)):
                mlp.trainable = name in mlps
                for dense in (mlp.dense_0, mlp.dense_1):
                    dense.trainable = name in mlps
                    if name in mlps:
                        dense.enable_lora(rank, lora_alpha=lora_alpha)
            for other in (block.norm_0, block.norm_1, block.drop_path):
                other.trainable = False
        if self.head is not None and train_head:
            self.head.trainable = True
        self.train_function = None  # the trainable set changed

    @property
    def stem(self):
        """The :class:`~keras_mixer.PatchEmbedding` layer.

        Returns:
            The stem, named ``"stem"``: a ``P x P`` convolution with stride ``P``.

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> model.stem.patch_size, model.stem.hidden_dim
            (8, 32)
        """
        return self.get_layer(STEM)

    @property
    def blocks(self):
        """The :class:`~keras_mixer.MixerBlock` layers, in order.

        Returns:
            A list of ``num_blocks`` layers, named ``mixer_block_0``, ``mixer_block_1``, ...

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> [block.name for block in model.blocks]
            ['mixer_block_0', 'mixer_block_1']
        """
        return [self.get_layer(block_name(i)) for i in range(self.config.num_blocks)]

    @property
    def pre_head_norm(self):
        """The final ``LayerNormalization``.

        Returns:
            The :class:`~keras_mixer.layers.LayerNorm` after the last block, named
            ``"pre_head_layer_norm"``.

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> model.pre_head_norm.name, model.pre_head_norm.epsilon
            ('pre_head_layer_norm', 1e-06)
        """
        return self.get_layer(PRE_HEAD_NORM)

    @property
    def head(self):
        """The classification ``Dense`` (``None`` without ``include_top``).

        Returns:
            The ``keras.layers.Dense`` named ``"head"``, or ``None``.

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> model.head.units
            10
            >>> keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
            ...                      include_top=False).head is None
            True
        """
        return self.get_layer(HEAD) if self.config.include_top else None

    def layer_at(self, path):
        """The layer at ``path``: a top-level layer name, then sublayer names, joined by ``/``.

        Args:
            path: a path as :meth:`layer_paths` gives them, e.g.
                ``"mixer_block_0/token_mixing/dense_0"``.

        Returns:
            The layer.

        Raises:
            ValueError: no layer has that path.

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> model.layer_at("mixer_block_0/token_mixing/dense_0").units   # D_S
            16
        """
        for layer_path, layer in self.layer_paths():
            if layer_path == path:
                return layer
        raise ValueError(f"Model {self.name!r} has no layer at {path!r}.")

    def layer_paths(self):
        """``(path, layer)`` of every layer inside the model, parents before their sublayers.

        Returns:
            A list of ``(path, layer)``: each path is the layer names from the
            model down, joined by ``/`` (what :meth:`layer_at` takes).

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> [path for path, _ in model.layer_paths()][:5]
            ['images', 'preprocessing', 'stem', 'stem/proj', 'mixer_block_0']
        """
        def walk(layer, prefix):
            for child in compat.sublayers(layer):
                path = f"{prefix}{child.name}"
                yield path, child
                yield from walk(child, path + "/")

        return list(walk(self, ""))

    def get_config(self):
        """The constructor's arguments, plus the layers' own state that they do not say.

        ``frozen_layers``: paths of layers set to ``trainable=False`` inside a
        trainable model; ``quantized_layers``: ``{path: mode}`` of layers that
        ``quantize`` changed; ``lora_layers``: ``{path: [rank, alpha]}`` of layers
        with LoRA enabled. :meth:`from_config` applies them, so a frozen, quantized
        or LoRA Mixer comes back as it was saved.

        Returns:
            A JSON-serializable dict: :class:`~keras_mixer.config.ModelConfig`'s
            fields as constructor arguments, ``name``, ``trainable``, ``dtype``
            (when not float32) and the layer states above.

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> model.blocks[0].trainable = False
            >>> config = model.get_config()
            >>> config["num_blocks"], config["frozen_layers"]
            (2, ['mixer_block_0'])
        """
        config = self.config.to_kwargs()
        config.update(name=self.name, trainable=self.trainable)
        if self.dtype_policy.name != "float32":
            config["dtype"] = keras.dtype_policies.serialize(self.dtype_policy)
        paths = self.layer_paths()
        frozen = [path for path, layer in paths if not layer.trainable
                  and all(not path.startswith(other + "/") for other, parent in paths
                          if not parent.trainable)]
        if frozen and self.trainable:
            config["frozen_layers"] = frozen
        quantized = {path: layer.quantization_mode for path, layer in paths
                     if getattr(layer, "quantization_mode", None)}
        if quantized:
            config["quantized_layers"] = quantized
        lora = {path: [layer.lora_rank, layer.lora_alpha] for path, layer in paths
                if getattr(layer, "lora_enabled", False)}
        if lora:
            config["lora_layers"] = lora
        return config

    @classmethod
    def from_config(cls, config):
        """The model :meth:`get_config` describes: the same layers, frozen, quantized or LoRA as saved.

        Args:
            config: a dict from :meth:`get_config`.

        Returns:
            A new :class:`MlpMixer` (with fresh weights: Keras' ``.keras`` files
            carry the weights).

        Examples:
            >>> model = keras_mixer.MlpMixer(patch_size=8, num_blocks=2, hidden_dim=32,
            ...                              tokens_mlp_dim=16, channels_mlp_dim=64,
            ...                              input_shape=(32, 32, 3), num_classes=10)
            >>> model.blocks[0].trainable = False
            >>> clone = keras_mixer.MlpMixer.from_config(model.get_config())
            >>> clone.blocks[0].trainable, clone.blocks[1].trainable
            (False, True)
        """
        config = dict(config)
        frozen = config.pop("frozen_layers", ())
        quantized = config.pop("quantized_layers", {})
        lora = config.pop("lora_layers", {})
        model = cls(**config)
        for path, (rank, alpha) in lora.items():
            model.layer_at(path).enable_lora(rank, lora_alpha=alpha)
        for path in frozen:
            model.layer_at(path).trainable = False
        for path, mode in quantized.items():
            model.layer_at(path).quantize(mode)
        return model


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

    Args:
        variant: ``"B/16"``, ``"b16"``, ``"Mixer-B_16"``, ... (see ``VARIANTS``).
        **kwargs: any :class:`MlpMixer` argument except the five architecture ones.

    Returns:
        An :class:`MlpMixer` named after the variant (``"mixer_b16"``) unless ``name`` is given.

    Raises:
        ValueError: an unknown variant.

    Examples:
        >>> model = keras_mixer.get_model("S/32", input_shape=(64, 64, 3), num_classes=10)
        >>> model.name, model.config.grid
        ('mixer_s32', (2, 2))
    """
    variant = canonical_variant(variant)
    kwargs.setdefault("name", model_name(variant))
    if kwargs.get("weights") is not None:  # build the model the weights were trained as
        kwargs = {**checkpoints.weights_defaults(kwargs["weights"], variant), **kwargs}
    architecture = VARIANTS[variant]
    return MlpMixer(architecture.patch_size, architecture.num_blocks, architecture.hidden_dim,
                    architecture.tokens_mlp_dim, architecture.channels_mlp_dim, **kwargs)


_ARCHITECTURE_ARGUMENTS = ("patch_size", "num_blocks", "hidden_dim", "tokens_mlp_dim",
                           "channels_mlp_dim")


def _argument_docs(docstring, leave_out):
    """The ``Args:`` entries of a Google-style ``docstring``, without those named in ``leave_out``."""
    section = docstring.split("    Args:\n", 1)[1].split("\n\n", 1)[0]
    entries = re.split(r"\n(?=        \w+: )", section)
    return "\n".join(entry for entry in entries
                     if entry.strip().split(":", 1)[0] not in leave_out)


def _variant_constructor(variant):
    """``MixerB16`` and its siblings: :class:`MlpMixer`'s signature without the architecture."""
    function_name = "Mixer" + variant.replace("/", "")
    parameters = [parameter for name, parameter in
                  inspect.signature(MlpMixer.__init__).parameters.items()
                  if name not in ("self",) + _ARCHITECTURE_ARGUMENTS]
    parameters = [parameter.replace(default=model_name(variant)) if parameter.name == "name"
                  else parameter for parameter in parameters]
    signature = inspect.Signature(parameters)

    def constructor(*args, **kwargs):
        return get_model(variant, **signature.bind(*args, **kwargs).arguments)

    architecture = VARIANTS[variant]
    constructor.__name__ = constructor.__qualname__ = function_name
    constructor.__module__ = __name__
    constructor.__signature__ = signature
    constructor.__doc__ = f"""{architecture.describe()}.

    {parameter_count(architecture):,} weights with a 1000-class head at 224 x 224 (paper
    Table 1). Unknown arguments raise ``TypeError``.

    Args:
{_argument_docs(MlpMixer.__doc__, _ARCHITECTURE_ARGUMENTS)}

    Returns:
        An :class:`MlpMixer` named ``{model_name(variant)}``.

    Examples:
{_variant_example(function_name, variant)}
    """
    return constructor


def _variant_example(function_name, variant):
    """The variant's doctest: built at a small size where that is cheap, else counted only."""
    size = 4 * VARIANTS[variant].patch_size
    weights = parameter_count(variant, image_size=size, num_classes=10)
    call = f"keras_mixer.{function_name}(input_shape=({size}, {size}, 3), num_classes=10)"
    if weights > 20_000_000:  # examples stay fast: the larger variants are not built
        return f"""        >>> keras_mixer.{function_name}(input_shape=({size}, {size}, 3), classes=10)
        Traceback (most recent call last):
            ...
        TypeError: got an unexpected keyword argument 'classes'
        >>> keras_mixer.parameter_count("{variant}", image_size={size}, num_classes=10)
        {weights}

        ``{call}`` builds a model of that many weights (not built here)."""
    return f"""        >>> model = {call}
        >>> model.name, model.config.variant, model.config.grid
        ('{model_name(variant)}', '{variant}', (4, 4))
        >>> model.count_params()
        {weights}"""


MixerS32 = _variant_constructor("S/32")
MixerS16 = _variant_constructor("S/16")
MixerB32 = _variant_constructor("B/32")
MixerB16 = _variant_constructor("B/16")
MixerL32 = _variant_constructor("L/32")
MixerL16 = _variant_constructor("L/16")
MixerH14 = _variant_constructor("H/14")


def mixer_blocks(model):
    """The ``MixerBlock`` layers of a Mixer model, in order (:attr:`MlpMixer.blocks`).

    Args:
        model: a :class:`MlpMixer`.

    Returns:
        A list of :class:`~keras_mixer.MixerBlock`.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> len(keras_mixer.mixer_blocks(model))
        2
    """
    return model.blocks


# ----------------------------------------------------------------------------- one way to build


def from_config(config, weights=None, **changes):
    """A new :class:`MlpMixer` from a :class:`~keras_mixer.config.ModelConfig` (plus ``changes``)."""
    return MlpMixer(**config.replace(**changes).to_kwargs(), weights=weights)


def model_from_checkpoint(path, image_size=None, verbose=True, **kwargs):
    """Build the Mixer a checkpoint file or handle describes and load it.

    Args:
        path: ``.npz``, ``.pth``, ``.safetensors`` or Keras ``.weights.h5`` checkpoint,
            or a handle (:mod:`keras_mixer.checkpoints.hub`: a preset name or folder,
            ``hf://...``, ``kaggle://...``), whose config also fixes the GELU, the
            input normalisation, the image policy and the head.
        image_size: build at this size (int or ``(height, width)``) with the
            paper's resolution transfer; default: the checkpoint's size.
        verbose: emit the loader's messages as warnings.
        **kwargs: other :class:`MlpMixer` arguments (``num_classes``,
            ``include_preprocessing``, ``approximate_gelu``, ...).

    Returns:
        ``(model, summary)``: the :class:`MlpMixer` and a
        :class:`~keras_mixer.checkpoints.LoadSummary`; ``summary.class_names``
        has the source's class names, if any.

    Raises:
        keras_mixer.CheckpointError: the file is not a Mixer checkpoint, or is damaged.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=10)
        >>> path = keras_mixer.save_weights(model, os.path.join(tempfile.mkdtemp(), "tiny.npz"))
        >>> loaded, summary = keras_mixer.model_from_checkpoint(path)
        >>> loaded.config.num_blocks, loaded.config.image_shape, loaded.config.num_classes
        (2, (32, 32, 3), 10)
        >>> print(summary)
        Loaded 30 tensors (16,298 values).
    """
    source = checkpoints.read_source(path)
    config = checkpoints.source_config(source)
    if image_size is not None:
        config = _resized_config(config, image_size)
    model = MlpMixer(**config.replace(**_as_config_fields(kwargs)).to_kwargs())
    summary = checkpoints.load_params(model, source.params, verbose=verbose)
    summary.class_names = source.class_names
    return model, summary


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

    Raises:
        ValueError: a side of ``image_size`` is not a multiple of the model's.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> larger = keras_mixer.convert_resolution(model, 64)      # 2 x 2 tiles
        >>> larger.config.grid, larger.config.tokens_mlp_dim
        ((8, 8), 64)
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
            ``.safetensors``: the architecture is read off its shapes), a handle
            (a full preset name such as ``"mixer_b16_224.goog_in21k_ft_in1k"``,
            ``hf://OWNER/REPO``, ``kaggle://...``, or a preset folder written by
            :func:`keras_mixer.save_to_preset`: the model its publisher evaluated,
            preprocessing included), a paper variant name (``"B/16"``: random
            weights), or a short preset name / ``.weights.h5`` file together with
            ``variant``.
        variant: paper variant for presets and ``.weights.h5`` files.
        image_size: int or ``(height, width)``; resolution transfer when it differs.
        verbose: emit the loader's messages as warnings.
        **kwargs: other :class:`MlpMixer` arguments (not for ``.keras`` files,
            which fix the architecture).

    Returns:
        An :class:`MlpMixer`.

    Raises:
        ValueError: ``source`` is none of these, or needs ``variant``.
        keras_mixer.CheckpointError: the file is damaged or does not fit.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=10)
        >>> folder = tempfile.mkdtemp()
        >>> model.save(os.path.join(folder, "tiny.keras"))
        >>> keras_mixer.load_model(os.path.join(folder, "tiny.keras")).config == model.config
        True
        >>> path = keras_mixer.save_weights(model, os.path.join(folder, "tiny.npz"))
        >>> keras_mixer.load_model(path, image_size=64).config.grid     # resolution transfer
        (8, 8)
    """
    path = os.fspath(source)
    if formats.has_suffix(path, formats.KERAS_MODEL_SUFFIXES):
        if kwargs:
            raise ValueError(f"A .keras file fixes the architecture; got extra arguments {kwargs}.")
        model = load_keras_file(path)
    elif formats.has_suffix(path, formats.CHECKPOINT_SUFFIXES) or checkpoints.is_handle(path):
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
            "(.npz, .pth, .safetensors), a preset name or folder, an hf:// or kaggle:// handle, "
            "a paper variant (B/16, ...), or a short preset name / .weights.h5 file with variant=."
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
    """A ``.keras`` Mixer, loaded with ``safe_mode``; files of older releases are converted.

    keras-mixer 0.1 saved plain functional models, and 0.1 and 0.2 kept each MLP's
    weights in the ``MlpBlock`` itself; such a file is read as a checkpoint (its
    architecture from its ``config.json``, its weights by their official names) into
    a new :class:`MlpMixer`. A file that is not a complete ``.keras`` archive
    (empty, text, truncated, damaged) raises
    :class:`~keras_mixer.checkpoints.CheckpointError` saying so.

    Args:
        path: the ``.keras`` file.
        compile: restore the saved training configuration (current files only).

    Returns:
        An :class:`MlpMixer`.
    """
    saved_config, legacy = _inspect_keras_file(path)
    if legacy or saved_config.get("class_name") == "Functional":
        model = from_config(_saved_model_config(saved_config, path))
        checkpoints.load_params(model, formats.read_keras_archive(path), verbose=False)
        return model
    for module in sorted(_own_modules_named(saved_config)):
        # `import keras_mixer` is lazy: the module that registers a saved class (the recipe's
        # AdamW, its schedule) may not be imported yet, and Keras finds a registered class
        # only once its module has run. Only this package's own modules are imported.
        try:
            importlib.import_module(module)
        except ImportError:  # not a module of this release: Keras' own check names the class
            pass
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:
        problem = formats.keras_archive_problem(path, error)
        if problem is None:
            raise
        raise checkpoints.CheckpointError(f"Cannot load {path}: {problem}.") from error
    if not isinstance(model, MlpMixer):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a keras_mixer.MlpMixer.")
    return model


def keras_file_config(path):
    """The :class:`~keras_mixer.config.ModelConfig` of a ``.keras`` Mixer file of any release,
    read from its ``config.json``: no model is built and no variable made (so it is safe in one
    process of a multi-process job, where making a variable is a collective step).

    Args:
        path: the ``.keras`` file.

    Returns:
        Its :class:`~keras_mixer.config.ModelConfig`.
    """
    return _saved_model_config(_inspect_keras_file(os.fspath(path))[0], path)


def _inspect_keras_file(path):
    """``(config.json as a dict, legacy layout?)`` of a ``.keras`` file, after checking that it
    is a whole zip archive (else :class:`~keras_mixer.checkpoints.CheckpointError`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file not found: {path}")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise checkpoints.CheckpointError(
            f"Cannot load {path}: the file {describe_contents(path)}; a .keras model file is "
            "a zip archive (written by model.save)."
        )
    damaged = _damaged_member(path)
    if damaged is not None:
        raise checkpoints.CheckpointError(f"Cannot load {path}: the file is corrupt ({damaged}).")
    return formats.inspect_keras_archive(path)


def _own_modules_named(config):
    """The ``keras_mixer`` modules that a saved Keras config names (``"module"`` entries)."""
    found = set()
    if isinstance(config, dict):
        module = config.get("module")
        if isinstance(module, str) and (module == PACKAGE or module.startswith(PACKAGE + ".")):
            found.add(module)
        for value in config.values():
            found |= _own_modules_named(value)
    elif isinstance(config, list):
        for value in config:
            found |= _own_modules_named(value)
    return found


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


# MlpMixer.get_config's entries that are not ModelConfig fields.
_LAYER_STATE = ("trainable", "dtype", "frozen_layers", "quantized_layers", "lora_layers")


def _saved_model_config(saved, path):
    """The :class:`ModelConfig` of a ``.keras`` file of any release, from its ``config.json``."""
    config = saved.get("config", {})
    if saved.get("class_name") == "MlpMixer":  # 0.2 and later
        fields = {name: value for name, value in config.items() if name not in _LAYER_STATE}
        return ModelConfig.from_kwargs(**fields)
    layers = {layer["config"]["name"]: layer for layer in config.get("layers", [])}  # 0.1
    blocks = [layer["config"] for layer in layers.values() if layer["class_name"] == "MixerBlock"]
    if STEM not in layers or not blocks:
        raise ValueError(f"{path} holds a model that is not a Mixer (no stem or MixerBlocks).")
    stem = layers[STEM]["config"]
    inputs = [layer for layer in layers.values() if layer["class_name"] == "InputLayer"]
    fields = dict(
        patch_size=stem["patch_size"], num_blocks=len(blocks), hidden_dim=stem["hidden_dim"],
        tokens_mlp_dim=blocks[0]["tokens_mlp_dim"], channels_mlp_dim=blocks[0]["channels_mlp_dim"],
        image_shape=tuple(inputs[0]["config"]["batch_shape"][1:]), include_top=HEAD in layers,
        include_preprocessing="preprocessing" in layers,
        drop_path_rate=blocks[-1]["drop_path_rate"], approximate_gelu=blocks[0]["approximate_gelu"],
        layer_norm_epsilon=blocks[0]["layer_norm_epsilon"], name=config.get("name", "mlp_mixer"),
    )
    if fields["include_top"]:
        fields["num_classes"] = layers[HEAD]["config"]["units"]
        fields["classifier_activation"] = layers["predictions"]["config"]["activation"]
        if "head_dropout" in layers:
            fields["dropout"] = layers["head_dropout"]["config"]["rate"]
    else:
        fields["pooling"] = ("avg" if "avg_pool" in layers else "max" if "max_pool" in layers
                             else None)
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

    Raises:
        ValueError: a block index is out of range.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> features = keras_mixer.feature_extractor(model, blocks=[0, -1], as_grid=True)
        >>> [tuple(f.shape) for f in features(np.zeros((2, 32, 32, 3)))]
        [(2, 4, 4, 32), (2, 4, 4, 32)]
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
