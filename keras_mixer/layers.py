"""MLP-Mixer building blocks as backend-agnostic Keras 3 layers.

Every layer uses only ``keras.ops`` and computes exactly the official
(``vit_jax/models_mixer.py`` in google-research/vision_transformer) forward pass: LayerNorm with epsilon 1e-6 and the
tanh form of GELU unless told otherwise. On TensorFlow, while training and inside
:func:`fused_inference` (the model's own predict and test steps), bias + GELU and the blocks'
LayerNorms run the same ``keras.ops`` inside XLA-compiled functions (:func:`xla_fused`).
"""

import contextlib
import contextvars
import functools

import keras
from keras import ops

from keras_mixer.config import LAYER_NORM_EPSILON, token_grid

PACKAGE = "keras_mixer"

_FUSED_INFERENCE = contextvars.ContextVar("keras_mixer_fused_inference", default=False)


def fused_inference():
    """A context in which TensorFlow inference also runs bias + GELU and LayerNorm in XLA.

    ``MlpMixer``'s ``predict_step`` and ``test_step`` trace under it (B/16, batch 16:
    float32 1.2x, bfloat16 1.75x faster). Exports trace outside it, so SavedModels and
    TFLite files keep plain ops (TF Serving runs XLA only with ``--xla_cpu_compilation_enabled``).
    Other backends get a null context (nothing for ``torch.compile`` to break on).
    """
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    return _fused_inference_scope()


@contextlib.contextmanager
def _fused_inference_scope():
    token = _FUSED_INFERENCE.set(True)
    try:
        yield
    finally:
        _FUSED_INFERENCE.reset(token)


def _fused(training):
    """Whether to run elementwise work through :func:`xla_fused` (TensorFlow only)."""
    return keras.backend.backend() == "tensorflow" and bool(training or _FUSED_INFERENCE.get())


@ops.custom_gradient
def _gradient_written_once(x):
    """``x`` unchanged; its gradient is the upstream one, divided by ones XLA cannot fold.

    XLA CPU fuses the cheap elementwise sums that make up the residual stream's gradient
    into every consumer instead of writing them once, so each block's backward pass
    recomputes the LayerNorm backward of every block above it: work grows with depth
    squared (B/16: 2.4x the elementwise work of linear growth, most of JAX's training
    step). XLA's fusion does not duplicate an "expensive" op such as a division, so the
    gradient is written once here. ``s * s - s + 1`` is exactly 1 for ``s`` in {0, 1}
    (a plain ``/ 1`` is folded away, and ``jax.lax.optimization_barrier`` is removed
    before fusion on CPU).
    """

    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        s = ops.cast(ops.less(x, 0), upstream.dtype)
        return ops.divide(upstream, s * s - s + 1)

    return x, grad


def bias_gelu(h, bias, approximate=True, training=False):
    """``gelu(h + bias)``; on TensorFlow while training (or in :func:`fused_inference`), one XLA
    kernel forward and one back (:func:`xla_fused`). Otherwise plain ops (exports stay free of XLA).
    """
    if not _fused(training):
        return ops.gelu(h + bias, approximate=approximate)
    return _xla_bias_gelu(bool(approximate))(h, ops.cast(bias, h.dtype))


@functools.cache
def _xla_bias_gelu(approximate):
    return xla_fused(lambda h, bias: ops.gelu(h + bias, approximate=approximate))


def xla_fused(function):
    """``function`` of tensors (TensorFlow), compiled by XLA forward and backward.

    Without XLA (Keras' default for TensorFlow on a CPU-only machine) elementwise work
    such as the bias add and tanh GELU, or LayerNorm, runs as a dozen or more separate
    kernels each way, each a pass over the activations. Here the forward pass is one
    XLA-compiled function and the gradient another, the autodiff of the same function,
    so the values are the model's math to floating-point rounding.
    """
    import tensorflow as tf

    forward = tf.function(function, jit_compile=True, autograph=False)

    @tf.function(jit_compile=True, autograph=False)
    def backward(inputs, upstream):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = function(*inputs)
        return tape.gradient(outputs, inputs, output_gradients=upstream)

    @tf.custom_gradient
    def fused(*inputs):
        return forward(*inputs), lambda upstream: backward(inputs, upstream)

    # Variables are read outside, so that their gradients flow through the inputs.
    return lambda *inputs: fused(*(tf.convert_to_tensor(t) for t in inputs))


def normalize(norm, x, training=False):
    """``norm(x)`` for a Keras ``LayerNormalization``; fused by XLA where :func:`bias_gelu` is.

    The same ``ops.layer_normalization`` (statistics in float32 under bf16 policies) as
    one XLA kernel forward and one back (:func:`xla_fused`) instead of some thirty.
    """
    if not _fused(training):
        return norm(x)
    axis = tuple(norm.axis) if isinstance(norm.axis, (list, tuple)) else norm.axis
    outputs = _xla_layer_norm(axis, norm.epsilon)(
        ops.cast(x, norm.compute_dtype), norm.gamma, norm.beta)
    return ops.cast(outputs, norm.compute_dtype)


@functools.cache
def _xla_layer_norm(axis, epsilon):
    return xla_fused(lambda x, gamma, beta: ops.layer_normalization(x, gamma, beta, axis, epsilon))


def patch_product(images, kernel, bias):
    """A ``P x P``, stride-``P`` "valid" convolution as one product, flattened to tokens.

    ``images (batch, H, W, C_in)`` are cut into non-overlapping patches, each flattened
    in the kernel's ``(P, P, C_in)`` order, times the kernel ``(P, P, C_in, D)``
    reshaped to a matrix: tokens ``(batch, (H / P) * (W / P), D)`` in row-major grid order.
    """
    p, _, channels, width = kernel.shape
    grid_h, grid_w = token_grid(images.shape[1:], p)
    x = ops.reshape(images, (-1, grid_h, p, grid_w, p, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    x = ops.reshape(x, (-1, grid_h * grid_w, p * p * channels))
    kernel = ops.cast(ops.reshape(kernel, (p * p * channels, width)), x.dtype)
    return ops.matmul(x, kernel) + ops.cast(bias, x.dtype)


def layer_norm(name, epsilon=LAYER_NORM_EPSILON, dtype=None):
    """LayerNormalization over channels with the paper's epsilon (Keras' default is 1e-3)."""
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name, dtype=dtype)


def traced_by_torch_export():
    """Whether ``torch.export`` is tracing the layers now (torch backend only)."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.compiler.is_exporting()


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbedding(keras.layers.Layer):
    """The Mixer stem: a P x P, stride P convolution, flattened to tokens (JAX: :func:`patch_product`).

    Maps images ``(batch, H, W, channels)`` to tokens ``(batch, S, hidden_dim)``
    with ``S = (H / P) * (W / P)`` in row-major grid order. ``H`` and ``W`` must
    be known and divisible by ``P``.
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
            self.hidden_dim,
            self.patch_size,
            strides=self.patch_size,
            padding="valid",
            kernel_initializer="lecun_normal",
            name="proj",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        token_grid(input_shape[1:], self.patch_size)
        self.proj.build(input_shape)

    def call(self, images):
        if keras.backend.backend() == "jax":
            # XLA CPU's 16x16 stride-16 convolution, and more so its kernel gradient, is slower
            # than the same product over flattened patches (B/16, batch 16: forward 43 -> 33 ms,
            # forward and gradient 63 -> 31 ms; about 1% of a step).
            return patch_product(images, self.proj.kernel, self.proj.bias)
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
    """Dense -> GELU -> Dense along one axis of a ``(batch, tokens, channels)`` tensor.

    ``axis=-1`` mixes channels (the channel-mixing MLP); ``axis=1`` mixes tokens
    (the token-mixing MLP, shared by all channels). Token mixing contracts the
    token axis directly with a matrix product, so the ``(batch, S, C)`` layout
    is never transposed. Kernels are ``(in, out)`` as in Flax and Keras Dense.

    Args:
        hidden_dim: width of the hidden layer (``D_S`` or ``D_C``).
        axis: ``1`` (tokens) or ``-1`` (channels).
        approximate_gelu: tanh GELU as in the official code (default), or the
            exact erf form when ``False``.
    """

    def __init__(self, hidden_dim, axis=-1, approximate_gelu=True, **kwargs):
        super().__init__(**kwargs)
        if axis not in (1, -1, 2):
            raise ValueError(f"MlpBlock mixes axis 1 (tokens) or -1 (channels), got axis={axis}.")
        self.hidden_dim = int(hidden_dim)
        self.axis = -1 if axis == 2 else axis
        self.approximate_gelu = bool(approximate_gelu)

    def build(self, input_shape):
        width = input_shape[self.axis]
        if width is None:
            raise ValueError(f"MlpBlock needs a known size on axis {self.axis}; got {input_shape}.")
        dense_init = keras.initializers.GlorotUniform()
        self.kernel_0 = self.add_weight(
            name="kernel_0", shape=(width, self.hidden_dim), initializer=dense_init
        )
        self.bias_0 = self.add_weight(name="bias_0", shape=(self.hidden_dim,), initializer="zeros")
        self.kernel_1 = self.add_weight(
            name="kernel_1", shape=(self.hidden_dim, width), initializer=dense_init
        )
        self.bias_1 = self.add_weight(name="bias_1", shape=(width,), initializer="zeros")

    def call(self, x, training=False):
        jax_training = training and keras.backend.backend() == "jax"
        if traced_by_torch_export() or (jax_training and self.axis == 1):
            # JAX training: XLA CPU feeds the (D_S, S) @ (batch, S, C) product and its weight
            # gradient through transposed copies of the activations and of the hidden layer;
            # the rows form leaves it two transposes that fuse into LayerNorm and the residual
            # add (B/16 batch-16 steps 1.09-1.18x faster, interleaved). Inference keeps the product.
            return self.call_as_rows(x, training)
        if self.axis == -1:
            return self._mlp_on_last_axis(x, training)
        # Token mixing: (D_S, S) @ (batch, S, C) -> (batch, D_S, C), and back.
        kernel_0, kernel_1 = ops.transpose(self.kernel_0), ops.transpose(self.kernel_1)
        if keras.backend.backend() == "torch":
            # torch.matmul runs a 2D @ 3D product as one GEMM after copying the activations
            # to (batch * C, S) and the result back; a batched product (bmm) reads them in
            # place. Measured ~4% faster for B/16 on CPU; XLA (JAX, TF) needs no help.
            batch = ops.shape(x)[0]
            kernel_0 = ops.broadcast_to(kernel_0, (batch,) + tuple(kernel_0.shape))
            kernel_1 = ops.broadcast_to(kernel_1, (batch,) + tuple(kernel_1.shape))
        h = bias_gelu(ops.matmul(kernel_0, x), self.bias_0[:, None], self.approximate_gelu, training)
        return ops.matmul(kernel_1, h) + self.bias_1[:, None]

    def _mlp_on_last_axis(self, x, training=False):
        """``gelu(x @ kernel_0 + bias_0) @ kernel_1 + bias_1`` over the last axis of ``x``."""
        h = bias_gelu(ops.matmul(x, self.kernel_0), self.bias_0, self.approximate_gelu, training)
        return ops.matmul(h, self.kernel_1) + self.bias_1

    def call_as_rows(self, x, training=False):
        """The same MLP as two 2D products ``(rows, width) @ kernel + bias``.

        Token mixing first transposes to ``(batch, C, S)`` and back. Under
        ``torch.compile`` (:mod:`keras_mixer.inductor`) inductor turns each product, its
        bias and the GELU into one oneDNN (AMX) matmul with post-ops, and folds the
        transposes into the neighbouring LayerNorm and residual kernels.
        """
        if self.axis == 1:
            x = ops.transpose(x, (0, 2, 1))
        y = self._mlp_on_last_axis(ops.reshape(x, (-1, x.shape[-1])), training)
        y = ops.reshape(y, (-1,) + tuple(x.shape[1:]))
        return ops.transpose(y, (0, 2, 1)) if self.axis == 1 else y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim, axis=self.axis, approximate_gelu=self.approximate_gelu
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample while training."""

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
    """One Mixer layer: token mixing then channel mixing, each pre-LayerNorm with a residual.

    ``x = x + DropPath(TokenMlp(LN(x)))``; ``x = x + DropPath(ChannelMlp(LN(x)))``.

    Args:
        tokens_mlp_dim: ``D_S``, hidden width of the token-mixing MLP.
        channels_mlp_dim: ``D_C``, hidden width of the channel-mixing MLP.
        drop_path_rate: stochastic-depth rate of this block.
        approximate_gelu: tanh GELU (official) or exact erf GELU.
        layer_norm_epsilon: LayerNorm epsilon (official: 1e-6).
    """

    def __init__(
        self,
        tokens_mlp_dim,
        channels_mlp_dim,
        drop_path_rate=0.0,
        approximate_gelu=True,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tokens_mlp_dim = int(tokens_mlp_dim)
        self.channels_mlp_dim = int(channels_mlp_dim)
        self.drop_path_rate = float(drop_path_rate)
        self.approximate_gelu = bool(approximate_gelu)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        policy = self.dtype_policy
        self.norm_0 = layer_norm("norm_0", self.layer_norm_epsilon, dtype=policy)
        self.token_mixing = MlpBlock(
            self.tokens_mlp_dim, axis=1, approximate_gelu=approximate_gelu,
            name="token_mixing", dtype=policy,
        )
        self.norm_1 = layer_norm("norm_1", self.layer_norm_epsilon, dtype=policy)
        self.channel_mixing = MlpBlock(
            self.channels_mlp_dim, axis=-1, approximate_gelu=approximate_gelu,
            name="channel_mixing", dtype=policy,
        )
        self.drop_path = DropPath(self.drop_path_rate, name="drop_path", dtype=policy)

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"MixerBlock expects tokens of shape (batch, tokens, channels); got {input_shape}."
            )
        for sublayer in (self.norm_0, self.token_mixing, self.norm_1, self.channel_mixing):
            sublayer.build(input_shape)

    def call(self, x, training=False):
        if keras.backend.backend() == "jax":  # see _gradient_written_once; TF's XLA needs no help
            x = _gradient_written_once(x)
        h = self.token_mixing(normalize(self.norm_0, x, training), training=training)
        x = x + self.drop_path(h, training=training)
        h = self.channel_mixing(normalize(self.norm_1, x, training), training=training)
        return x + self.drop_path(h, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            tokens_mlp_dim=self.tokens_mlp_dim,
            channels_mlp_dim=self.channels_mlp_dim,
            drop_path_rate=self.drop_path_rate,
            approximate_gelu=self.approximate_gelu,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
