"""Backend fast paths for the Mixer's layers, beside the plain layers and chosen here, in one place.

:mod:`keras_mixer.layers` is the paper in plain Keras layers. Some backends run a
layer faster in another form of the same math; each such form lives in this
package's module for its backend (:mod:`.tensorflow`, :mod:`.jax`, :mod:`.torch`),
is switched on only where it was measured faster (the numbers are in the
performance guide), and has a parity test against the plain layers
(``tests/test_fast.py``). A layer asks :func:`path_for` at the top of its ``call``:

- a fast path never applies to a layer whose ``Dense`` sublayers are
  quantized or have LoRA enabled (Keras' own code must run for those);
- ``set_enabled(False)`` (or ``KERAS_MIXER_FAST=0``) switches every fast path off;
- a form that is only worth it inside the model's own predict and test steps
  (TensorFlow's XLA-fused elementwise work) applies only under :func:`inference`,
  which ``MlpMixer.predict_step`` / ``test_step`` enter. A plain ``model(x)`` call,
  and so every export, traces the plain layers.
"""

import contextlib
import contextvars
import os

import keras

from keras_mixer import compat
from keras_mixer.fast import jax as jax_paths
from keras_mixer.fast import tensorflow as tensorflow_paths
from keras_mixer.fast import torch as torch_paths

_BACKENDS = {"jax": jax_paths, "tensorflow": tensorflow_paths, "torch": torch_paths}
_ENABLED = contextvars.ContextVar("keras_mixer_fast_enabled",
                                  default=os.environ.get("KERAS_MIXER_FAST", "1") != "0")
_INFERENCE = contextvars.ContextVar("keras_mixer_fast_inference", default=False)


def set_enabled(enabled):
    """Switch every fast path on or off (for this context: thread, task).

    The start value is on, unless the environment variable ``KERAS_MIXER_FAST=0``.
    :func:`disabled` switches them off for a ``with`` block only.

    Args:
        enabled: ``True`` lets layers take their backend's fast paths; ``False``
            runs the plain layers only.

    Examples:
        >>> keras_mixer.fast.set_enabled(False)
        >>> keras_mixer.fast.is_enabled()
        False
        >>> keras_mixer.fast.set_enabled(True)
    """
    _ENABLED.set(bool(enabled))


def is_enabled():
    """Whether fast paths may be used.

    Returns:
        ``False`` after ``set_enabled(False)``, inside :func:`disabled` or with
        ``KERAS_MIXER_FAST=0``; else ``True``.

    Examples:
        >>> with keras_mixer.fast.disabled():
        ...     keras_mixer.fast.is_enabled()
        False
    """
    return _ENABLED.get()


@contextlib.contextmanager
def disabled():
    """``with fast.disabled():`` the plain layers only (parity tests, debugging).

    Returns:
        A context manager: inside its ``with`` block no fast path applies; on
        leaving it, the previous setting comes back.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
        >>> images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))
        >>> fast = model.predict(images, verbose=0)
        >>> with keras_mixer.fast.disabled():
        ...     plain = model.predict(images, verbose=0)
        >>> bool(np.allclose(fast, plain, atol=1e-5))
        True
    """
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


@contextlib.contextmanager
def inference():
    """The context of ``MlpMixer.predict_step`` / ``test_step``: inference-only fast paths apply.

    ``model.predict`` and ``model.evaluate`` enter it themselves; a custom
    inference loop that calls the model directly may enter it too.

    Returns:
        A context manager: inside its ``with`` block, :func:`path_for` may pick
        paths that are only worth it for inference.

    Examples:
        >>> block = keras_mixer.MixerBlock(16, 64)
        >>> tokens = np.zeros((2, 16, 32), "float32")
        >>> with keras_mixer.fast.inference():
        ...     y = block(tokens)
        >>> tuple(y.shape)
        (2, 16, 32)
    """
    token = _INFERENCE.set(True)
    try:
        yield
    finally:
        _INFERENCE.reset(token)


def path_for(layer, training=False):
    """The fast implementation of ``layer.call`` to run now, or ``None`` for the plain layer.

    Layers call it at the top of their ``call``; which paths exist depends on the
    backend (and on :func:`inference`).

    Args:
        layer: a layer of :mod:`keras_mixer.layers`.
        training: whether the call is a training step.

    Returns:
        A function with ``layer.call``'s signature (``layer`` first), or ``None``
        (fast paths switched off, none for this layer and backend, or the layer
        quantized or with LoRA).

    Examples:
        >>> block = keras_mixer.MixerBlock(16, 64)
        >>> with keras_mixer.fast.disabled():
        ...     keras_mixer.fast.path_for(block) is None
        True
    """
    if not _ENABLED.get():
        return None
    chooser = _BACKENDS[keras.backend.backend()].choosers().get(type(layer).__name__)
    if chooser is None or not _plain_weights(layer):
        return None
    return chooser(layer, training=bool(training), inference=_INFERENCE.get())


def _plain_weights(layer):
    """Whether every ``Dense`` inside ``layer`` computes with its plain weights."""
    for sublayer in [layer] + compat.sublayers(layer, recursive=True):
        if getattr(sublayer, "quantization_mode", None) or getattr(sublayer, "lora_enabled", False):
            return False
    return True
