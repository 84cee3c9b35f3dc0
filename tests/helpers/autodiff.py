"""Values and gradients with each backend's own autodiff, as NumPy (for parity tests)."""

import keras
import numpy as np


def values_and_gradients(fn, x, variables=()):
    """``fn(x)`` and the gradients of its sum w.r.t. ``x`` and ``variables``, with the backend's
    own autodiff, as float32 NumPy: ``[fn(x), d/dx, *d/dvariables]``."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def loss(t, values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                y = keras.ops.cast(fn(t), "float32")
            return keras.ops.sum(y), y

        grads, y = jax.grad(loss, argnums=(0, 1), has_aux=True)(
            keras.ops.convert_to_tensor(x), [v.value for v in variables])
        return [np.asarray(g, "float32") for g in [y, grads[0], *grads[1]]]
    if backend == "tensorflow":
        import tensorflow as tf

        t = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = tf.cast(fn(t), "float32")
            loss = tf.reduce_sum(y)
        grads = tape.gradient(loss, [t] + [v.value for v in variables])
        return [np.asarray(tf.cast(g, "float32")) for g in [y, *grads]]
    import torch

    t = torch.tensor(x, requires_grad=True)
    for v in variables:
        v.value.grad = None
    y = keras.ops.cast(fn(t), "float32")
    keras.ops.sum(y).backward()
    return [y.detach().numpy(), t.grad.numpy()] + [v.value.grad.float().numpy() for v in variables]


def input_gradient(fn, x):
    """d sum(fn(x)) / dx, as NumPy."""
    return values_and_gradients(fn, x)[1]
