"""JAX (XLA CPU): the residual gradient written once, token mixing as rows while training,
the stem as one product over flattened patches."""

from keras import ops

from keras_mixer.config import token_grid
from keras_mixer.fast import common


def choosers():
    """``{layer class name: chooser(layer, training, inference) -> call or None}``."""
    return {"MixerBlock": choose_block, "PatchEmbedding": choose_stem}


def choose_block(block, training, inference):
    """:func:`training_block` while training; inference runs the plain layers."""
    return training_block if training else None


def choose_stem(stem, training, inference):
    """:func:`patch_product` always."""
    return stem_as_patch_product


def training_block(block, x, training=False):
    """The block with :func:`gradient_written_once` on its input and token mixing as rows.

    Token mixing: XLA CPU feeds the ``(D_S, S) @ (batch, S, C)`` product and its
    weight gradient through transposed copies of the activations and of the hidden
    layer; the rows form (:func:`common.rows_form`) leaves two transposes that fuse
    into LayerNorm and the residual add.
    """
    return common.mixer_block(block, x, training, norm=common.keras_norm,
                              token_mlp=common.rows_form, channel_mlp=common.product_form,
                              enter=gradient_written_once)


@ops.custom_gradient
def gradient_written_once(x):
    """``x`` unchanged; its gradient is the upstream one, divided by ones XLA cannot fold.

    XLA CPU fuses the cheap elementwise sums that make up the residual stream's
    gradient into every consumer instead of writing them once, so each block's
    backward pass recomputes the LayerNorm backward of every block above it: work
    grows with depth squared. XLA's fusion does not duplicate an "expensive" op such as
    a division, so the gradient is written once here. ``s * s - s + 1`` is exactly 1
    for ``s`` in {0, 1} (a plain ``/ 1`` is folded away, and
    ``jax.lax.optimization_barrier`` is removed before fusion on CPU).
    """

    def grad(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        s = ops.cast(ops.less(x, 0), upstream.dtype)
        return ops.divide(upstream, s * s - s + 1)

    return x, grad


def stem_as_patch_product(stem, images):
    """The stem's ``P x P``, stride-``P`` convolution as one product over flattened patches.

    XLA CPU's stride-``P`` convolution, and more so its kernel gradient, is slower than
    this product with the convolution's own weights.
    """
    return patch_product(images, stem.proj.kernel, stem.proj.bias)


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
