"""Reference GEMMs: the physical limit that benchmark rows are read against.

The Mixer's own channel-mixing and token-mixing shapes and a large square one,
each run as one ``(m, k) @ (k, n)`` product in the row's dtype on the current
Keras backend (:func:`matmul_step`).
"""

import keras
import numpy as np

from keras_mixer.config import as_architecture

SQUARE_GEMM = 2048  # side of the large square reference GEMM


def reference_gemms(config, image_size, batch):
    """``{name: (m, k, n)}``: the Mixer's channel- and token-mixing GEMMs and a large square one.

    Channel mixing multiplies ``(batch * S, C) @ (C, D_C)``; token mixing
    ``(batch * C, S) @ (S, D_S)``.
    """
    config = as_architecture(config)
    tokens = (image_size // config.patch_size) ** 2
    return dict(channel_mlp=(batch * tokens, config.hidden_dim, config.channels_mlp_dim),
                token_mlp=(batch * config.hidden_dim, tokens, config.tokens_mlp_dim),
                square=(SQUARE_GEMM,) * 3)


def gemm_flops(shape):
    """FLOPs of an ``(m, k) @ (k, n)`` GEMM."""
    m, k, n = shape
    return 2 * m * k * n


def matmul_step(shape, dtype):
    """A zero-argument callable: the ``(m, k) @ (k, n)`` GEMM in ``dtype`` on this backend."""
    m, k, n = shape
    rng = np.random.default_rng(1)
    a, b = (keras.ops.cast(rng.standard_normal(size, dtype="float32"), dtype)
            for size in ((m, k), (k, n)))
    return lambda: keras.ops.matmul(a, b)
