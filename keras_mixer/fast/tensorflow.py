"""TensorFlow: the blocks' LayerNorms and bias + GELU as XLA-compiled functions.

Without XLA (Keras' default for TensorFlow on a CPU) LayerNorm and the bias add and
tanh GELU run as a dozen or more separate kernels each way, each a pass over the
activations. Here each is one XLA-compiled function forward and another (its
autodiff) backward, while the matrix products stay on oneDNN. Used while training,
and inside the model's own predict and test steps (:func:`keras_mixer.fast.inference`);
a plain ``model(x)`` call, and so every SavedModel and TFLite export, keeps plain ops
(TF Serving runs XLA only with ``--xla_cpu_compilation_enabled``).
"""

import functools

from keras import ops

from keras_mixer.fast import common


def choosers():
    """``{layer class name: chooser(layer, training, inference) -> call or None}``."""
    return {"MixerBlock": choose_block}


def choose_block(block, training, inference):
    """:func:`mixer_block` while training or inside the model's predict/test steps."""
    return mixer_block if training or inference else None


def mixer_block(block, x, training=False):
    """The block with XLA-fused LayerNorms and bias + GELU (:func:`xla_fused`)."""
    return common.mixer_block(block, x, training, norm=layer_norm, token_mlp=_mlp,
                              channel_mlp=_mlp)


def _mlp(mlp, x):
    return common.product_form(mlp, x, bias_gelu=_bias_gelu(mlp.approximate_gelu))


def _bias_gelu(approximate):
    fused = _xla_bias_gelu(bool(approximate))
    return lambda h, bias: fused(h, ops.cast(bias, h.dtype))


@functools.cache
def _xla_bias_gelu(approximate):
    return xla_fused(lambda h, bias: ops.gelu(h + bias, approximate=approximate))


def layer_norm(norm, x):
    """``norm(x)`` for a Keras ``LayerNormalization``: the same ``ops.layer_normalization``
    (statistics in float32 under bf16 policies), as one XLA function each way."""
    axis = tuple(norm.axis) if isinstance(norm.axis, (list, tuple)) else norm.axis
    outputs = _xla_layer_norm(axis, norm.epsilon)(ops.cast(x, norm.compute_dtype), norm.gamma,
                                                  norm.beta)
    return ops.cast(outputs, norm.compute_dtype)


@functools.cache
def _xla_layer_norm(axis, epsilon):
    return xla_fused(lambda x, gamma, beta: ops.layer_normalization(x, gamma, beta, axis, epsilon))


def xla_fused(function):
    """``function`` of tensors, compiled by XLA forward and backward (the autodiff of the same
    function, so the values are the model's math to floating-point rounding)."""
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
