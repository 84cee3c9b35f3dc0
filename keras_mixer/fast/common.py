"""The forms that the backend fast paths share: a Mixer block with pluggable parts, MLP forms.

Every function reads the plain layers' own variables (``mlp.dense_0.kernel``, ...),
so the weights, their dtype policy and their gradients are the plain model's.
"""

from keras import ops


def mixer_block(block, x, training, norm, token_mlp, channel_mlp, enter=None):
    """:meth:`keras_mixer.MixerBlock.call` with its LayerNorm and MLPs computed by the given forms.

    ``norm(layer, x)``, ``token_mlp(mlp, x)``, ``channel_mlp(mlp, x)``; ``enter(x)``
    (optional) marks the block's input (JAX's gradient form).
    """
    if enter is not None:
        x = enter(x)
    x = x + block.drop_path(token_mlp(block.token_mixing, norm(block.norm_0, x)), training=training)
    return x + block.drop_path(channel_mlp(block.channel_mixing, norm(block.norm_1, x)),
                               training=training)


def gelu_of(mlp):
    """``h, bias -> gelu(h + bias)`` in the MLP's GELU form (tanh or erf)."""
    return lambda h, bias: ops.gelu(h + bias, approximate=mlp.approximate_gelu)


def product_form(mlp, x, bias_gelu=None, matmul=ops.matmul):
    """The MLP as matrix products on ``(batch, S, C)`` in place.

    Channel mixing: ``gelu(x @ K0 + b0) @ K1 + b1``. Token mixing: the kernels are the
    left operand, ``K1^T gelu(K0^T x + b0) + b1``, contracting the token axis with no
    transposed copy of the activations (the biases broadcast over channels).
    ``bias_gelu(h, bias)`` defaults to :func:`gelu_of`; ``matmul`` to ``ops.matmul``.
    """
    bias_gelu = bias_gelu or gelu_of(mlp)
    d0, d1 = mlp.dense_0, mlp.dense_1
    if mlp.axis == -1:
        return matmul(bias_gelu(matmul(x, d0.kernel), d0.bias), d1.kernel) + d1.bias
    hidden = bias_gelu(matmul(ops.transpose(d0.kernel), x), d0.bias[:, None])
    return matmul(ops.transpose(d1.kernel), hidden) + d1.bias[:, None]


def rows_form(mlp, x, bias_gelu=None):
    """The MLP as two 2D products ``(rows, width) @ kernel + bias``.

    Token mixing first transposes to ``(batch, C, S)`` and back (the paper's form).
    """
    bias_gelu = bias_gelu or gelu_of(mlp)
    d0, d1 = mlp.dense_0, mlp.dense_1
    if mlp.axis == 1:
        x = ops.transpose(x, (0, 2, 1))
    rows = ops.reshape(x, (-1, x.shape[-1]))
    hidden = bias_gelu(ops.matmul(rows, d0.kernel), d0.bias)
    y = ops.matmul(hidden, d1.kernel) + d1.bias
    y = ops.reshape(y, (-1,) + tuple(x.shape[1:]))
    return ops.transpose(y, (0, 2, 1)) if mlp.axis == 1 else y


def keras_norm(norm, x):
    """The plain ``LayerNormalization`` layer itself."""
    return norm(x)
