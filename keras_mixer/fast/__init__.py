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
    """Switch every fast path on or off (for this context: thread, task)."""
    _ENABLED.set(bool(enabled))


def is_enabled():
    """Whether fast paths may be used."""
    return _ENABLED.get()


@contextlib.contextmanager
def disabled():
    """``with fast.disabled():`` the plain layers only (parity tests, debugging)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


@contextlib.contextmanager
def inference():
    """The context of ``MlpMixer.predict_step`` / ``test_step``: inference-only fast paths apply."""
    token = _INFERENCE.set(True)
    try:
        yield
    finally:
        _INFERENCE.reset(token)


def path_for(layer, training=False):
    """The fast implementation of ``layer.call`` to run now, or ``None`` for the plain layer.

    Returns a function with ``layer.call``'s signature (``layer`` first).
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
