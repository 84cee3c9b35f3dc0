"""MLP-Mixer's layers (Tolstikhin et al., 2021, Appendix E) as plain Keras layers.

The paper, in Keras layers and ``keras.ops`` only::

    tokens = PatchEmbedding(P, C)(images)                       # (batch, S, C)
    for block in blocks:                                        # MixerBlock
        tokens += DropPath(TokenMlp(LayerNorm(tokens)))          # MlpBlock(axis=1)
        tokens += DropPath(ChannelMlp(LayerNorm(tokens)))        # MlpBlock(axis=-1)
    features = mean over S of LayerNorm(tokens)                 # in models.py

Each MLP is two ``keras.layers.Dense`` (token mixing transposes the tokens to
``(batch, C, S)`` and back, as the paper), so ``model.quantize``, ``enable_lora``,
dtype policies, freezing and serialization all reach them. As
the official code (``vit_jax/models_mixer.py``), LayerNorm's epsilon is 1e-6 and
GELU is the tanh form unless told otherwise.

Backend fast paths live beside these layers in :mod:`keras_mixer.fast`: a layer's
``call`` hands over to one only where :func:`keras_mixer.fast.path_for` picks one
(measured faster, same values), and never for quantized or LoRA layers.
"""

import keras
from keras import ops

from keras_mixer import fast
from keras_mixer.config import LAYER_NORM_EPSILON, token_grid

PACKAGE = "keras_mixer"


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerNorm(keras.layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` computed as the paper's formula, with its epsilon.

    ``d = x - mean(x)``; ``d / sqrt(mean(d * d) + epsilon) * gamma + beta`` over the
    channels, statistics in float32 under 16-bit dtype policies (as Keras' own).
    The same values as Keras' kernel in ops that every runtime supports, also
    quantized: the TFLite converter turns Keras' TensorFlow kernel into ops that
    int16 activations cannot run (``NEG``) and that stay float in int8 files.

    Args:
        epsilon: added to the variance (official: 1e-6; Keras' default is 1e-3).
        **kwargs: ``keras.layers.LayerNormalization`` arguments (``axis``,
            ``center``, ``scale``, ``name``, ``dtype``, ...).

    Call arguments:
        - inputs: a tensor ``(..., channels)`` (normalised over ``axis``, by
          default the last).

    Returns:
        A tensor of the shape of ``inputs``, in the layer's compute dtype.

    Examples:
        >>> norm = keras_mixer.layers.LayerNorm()
        >>> y = norm(np.array([[1.0, 2.0, 3.0]]))
        >>> np.round(keras.ops.convert_to_numpy(y), 4)
        array([[-1.2247,  0.    ,  1.2247]], dtype=float32)
    """

    def __init__(self, epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)

    def call(self, inputs):
        if path := fast.path_for(self):
            return path(self, inputs)
        x = ops.cast(inputs, "float32") if self.compute_dtype in ("float16", "bfloat16") else inputs
        centred = x - ops.mean(x, axis=self.axis, keepdims=True)
        variance = ops.mean(centred * centred, axis=self.axis, keepdims=True)
        outputs = centred * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * ops.cast(self.gamma, x.dtype)
        if self.center:
            outputs = outputs + ops.cast(self.beta, x.dtype)
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbedding(keras.layers.Layer):
    """The Mixer stem: a ``P x P`` convolution with stride ``P``, flattened to tokens.

    Cuts the image into non-overlapping ``P x P`` patches and projects each to
    ``hidden_dim`` channels (a ``keras.layers.Conv2D`` named ``proj``). Tokens come
    in row-major order of the patch grid.

    Args:
        patch_size: side ``P`` of the square patches, in pixels (a positive integer).
        hidden_dim: token width ``C`` (a positive integer).
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Call arguments:
        - images: ``(batch, H, W, channels)``; ``H`` and ``W`` known and
          multiples of ``P``.

    Returns:
        Tokens ``(batch, S, hidden_dim)`` with ``S = (H / P) * (W / P)``.

    Raises:
        ValueError: ``patch_size`` or ``hidden_dim`` is not positive, or the
            image height or width is unknown or not a multiple of ``patch_size``.

    Examples:
        >>> stem = keras_mixer.PatchEmbedding(patch_size=8, hidden_dim=32)
        >>> tuple(stem(np.zeros((2, 32, 48, 3))).shape)    # a 4 x 6 grid of patches
        (2, 24, 32)
    """

    def __init__(self, patch_size, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        if int(patch_size) < 1 or int(hidden_dim) < 1:
            raise ValueError(
                f"patch_size and hidden_dim must be positive integers, got "
                f"patch_size={patch_size}, hidden_dim={hidden_dim}."
            )
        self.patch_size = int(patch_size)
        self.hidden_dim = int(hidden_dim)
        self.proj = keras.layers.Conv2D(
            self.hidden_dim, self.patch_size, strides=self.patch_size, padding="valid",
            kernel_initializer="lecun_normal", name="proj", dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        token_grid(input_shape[1:], self.patch_size)
        self.proj.build(input_shape)

    def call(self, images):
        if path := fast.path_for(self):
            return path(self, images)
        x = self.proj(images)
        return ops.reshape(x, (-1, x.shape[1] * x.shape[2], self.hidden_dim))

    def compute_output_shape(self, input_shape):
        grid_h, grid_w = token_grid(input_shape[1:], self.patch_size)
        return (input_shape[0], grid_h * grid_w, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, hidden_dim=self.hidden_dim)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MlpBlock(keras.layers.Layer):
    """Dense -> GELU -> Dense along one axis of tokens ``(batch, S, C)``.

    ``axis=-1`` is channel mixing. ``axis=1`` is token mixing, one MLP shared by all
    channels: as in the paper, the tokens are transposed to ``(batch, C, S)``, mixed
    along their last axis and transposed back. The MLP is two ``keras.layers.Dense``,
    ``dense_0`` and ``dense_1``, with kernels ``(in, out)`` as in Flax.

    Args:
        hidden_dim: width of the hidden layer (``D_S`` or ``D_C``).
        axis: ``1`` (tokens) or ``-1`` (channels; ``2`` is the same).
        approximate_gelu: tanh GELU as in the official code (default), or the
            exact erf form (timm, keras-cv) when ``False``.
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Call arguments:
        - x: tokens ``(batch, S, C)`` with ``S`` and ``C`` known.
        - training: passed on to the fast paths (the math does not depend on it).

    Returns:
        A tensor of the shape of ``x``.

    Raises:
        ValueError: ``axis`` is not 1 or -1, or the tokens are not ``(batch, S, C)``
            with known ``S`` and ``C``.

    Examples:
        >>> mlp = keras_mixer.MlpBlock(hidden_dim=16, axis=1)    # token mixing
        >>> tuple(mlp(np.zeros((2, 49, 32))).shape)
        (2, 49, 32)
        >>> tuple(mlp.dense_0.kernel.shape)                       # (S, D_S)
        (49, 16)
    """

    def __init__(self, hidden_dim, axis=-1, approximate_gelu=True, **kwargs):
        super().__init__(**kwargs)
        if axis not in (1, -1, 2):
            raise ValueError(f"MlpBlock mixes axis 1 (tokens) or -1 (channels), got axis={axis}.")
        self.hidden_dim = int(hidden_dim)
        self.axis = -1 if axis == 2 else axis
        self.approximate_gelu = bool(approximate_gelu)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                f"MlpBlock expects tokens (batch, S, C) with known S and C; got {input_shape}.")
        width = input_shape[self.axis]
        common = dict(kernel_initializer="glorot_uniform", dtype=self.dtype_policy)
        self.dense_0 = keras.layers.Dense(self.hidden_dim, name="dense_0", **common)
        self.dense_1 = keras.layers.Dense(width, name="dense_1", **common)
        self.dense_0.build((None, width))
        self.dense_1.build((None, self.hidden_dim))

    def call(self, x, training=False):
        if path := fast.path_for(self, training):
            return path(self, x, training)
        if self.axis == 1:
            x = ops.transpose(x, (0, 2, 1))
        y = self.dense_1(ops.gelu(self.dense_0(x), approximate=self.approximate_gelu))
        return ops.transpose(y, (0, 2, 1)) if self.axis == 1 else y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, axis=self.axis,
                      approximate_gelu=self.approximate_gelu)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a residual branch for whole samples while training.

    Each sample's branch is kept with probability ``1 - rate`` and then scaled by
    ``1 / (1 - rate)``, so its expected value is unchanged; at inference the
    branch passes through.

    Args:
        rate: drop probability in ``[0, 1)``; 0 (default) never drops.
        seed: seed of the layer's ``keras.random.SeedGenerator`` (``None``: random).
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Call arguments:
        - x: a residual branch ``(batch, ...)``.
        - training: drop only when ``True``.

    Returns:
        A tensor of the shape of ``x``: while training, each sample of ``x`` is
        either zero or scaled by ``1 / (1 - rate)``; otherwise ``x`` itself.

    Raises:
        ValueError: ``rate`` is outside ``[0, 1)``.

    Examples:
        >>> drop = keras_mixer.DropPath(rate=0.5, seed=0)
        >>> y = keras.ops.convert_to_numpy(drop(np.ones((8, 3, 2)), training=True))
        >>> samples = y.reshape(8, -1)      # each sample is all 0 (dropped) or all 2 (kept)
        >>> bool(np.all((samples == 0).all(axis=1) | (samples == 2).all(axis=1)))
        True
        >>> keras.ops.convert_to_numpy(drop(np.ones((2, 3)))).tolist()   # inference: unchanged
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Drop-path rate must be in [0, 1), got {rate}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask_shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=x.dtype) < keep
        return ops.where(mask, x / keep, ops.zeros_like(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MixerBlock(keras.layers.Layer):
    """One Mixer layer: token mixing, then channel mixing, each pre-LayerNorm with a residual.

    ``x = x + DropPath(TokenMlp(LayerNorm(x)))``, then
    ``x = x + DropPath(ChannelMlp(LayerNorm(x)))``. Sublayers: ``norm_0``,
    ``token_mixing``, ``norm_1``, ``channel_mixing`` (:class:`MlpBlock`), ``drop_path``.

    Args:
        tokens_mlp_dim: ``D_S``, hidden width of the token-mixing MLP.
        channels_mlp_dim: ``D_C``, hidden width of the channel-mixing MLP.
        drop_path_rate: stochastic-depth rate of this block, in ``[0, 1)``.
        approximate_gelu: tanh GELU (official, default) or exact erf GELU (``False``).
        layer_norm_epsilon: LayerNorm epsilon (official: 1e-6).
        **kwargs: standard ``keras.layers.Layer`` arguments.

    Call arguments:
        - x: tokens ``(batch, S, C)`` with ``S`` and ``C`` known.
        - training: stochastic depth is active only when ``True``.

    Returns:
        Tokens of the shape of ``x``.

    Examples:
        >>> block = keras_mixer.MixerBlock(tokens_mlp_dim=16, channels_mlp_dim=64)
        >>> tuple(block(np.zeros((2, 16, 32))).shape)
        (2, 16, 32)
        >>> [layer.name for layer in (block.norm_0, block.token_mixing, block.norm_1,
        ...                           block.channel_mixing)]
        ['norm_0', 'token_mixing', 'norm_1', 'channel_mixing']
    """

    def __init__(self, tokens_mlp_dim, channels_mlp_dim, drop_path_rate=0.0, approximate_gelu=True,
                 layer_norm_epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.tokens_mlp_dim = int(tokens_mlp_dim)
        self.channels_mlp_dim = int(channels_mlp_dim)
        self.drop_path_rate = float(drop_path_rate)
        self.approximate_gelu = bool(approximate_gelu)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        policy = self.dtype_policy
        self.norm_0 = LayerNorm(self.layer_norm_epsilon, name="norm_0", dtype=policy)
        self.token_mixing = MlpBlock(self.tokens_mlp_dim, axis=1, approximate_gelu=approximate_gelu,
                                     name="token_mixing", dtype=policy)
        self.norm_1 = LayerNorm(self.layer_norm_epsilon, name="norm_1", dtype=policy)
        self.channel_mixing = MlpBlock(self.channels_mlp_dim, axis=-1,
                                       approximate_gelu=approximate_gelu, name="channel_mixing",
                                       dtype=policy)
        self.drop_path = DropPath(self.drop_path_rate, name="drop_path", dtype=policy)

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"MixerBlock expects tokens of shape (batch, tokens, channels); got {input_shape}.")
        for sublayer in (self.norm_0, self.token_mixing, self.norm_1, self.channel_mixing,
                         self.drop_path):
            sublayer.build(input_shape)

    def call(self, x, training=False):
        if path := fast.path_for(self, training):
            return path(self, x, training)
        x = x + self.drop_path(self.token_mixing(self.norm_0(x)), training=training)
        return x + self.drop_path(self.channel_mixing(self.norm_1(x)), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            tokens_mlp_dim=self.tokens_mlp_dim, channels_mlp_dim=self.channels_mlp_dim,
            drop_path_rate=self.drop_path_rate, approximate_gelu=self.approximate_gelu,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
