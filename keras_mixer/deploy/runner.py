"""Exports run under the TensorFlow backend: here when it is active, else in a subprocess.

``model.export`` works from TensorFlow (and JAX, but not PyTorch), and LiteRT
conversion from TensorFlow only, so a ``.keras`` file trained on any backend is
loaded under TensorFlow for every export.
"""

import importlib
import os

import keras

from keras_mixer import backend, models


def on_tensorflow(function, model, **options):
    """Call ``function`` (``"module:name"``, taking a model first) with ``model`` under TensorFlow.

    ``model`` is a ``.keras`` path (any backend) or, under TensorFlow, an ``MlpMixer``.
    An error in the subprocess is raised here with its own type and message
    (:func:`keras_mixer.backend.run_under`'s ``raise_errors``).
    """
    if keras.backend.backend() == "tensorflow":
        if not isinstance(model, keras.Model):
            model = models.load_keras_file(os.fspath(model), compile=False)
        return _resolve(function)(model, **options)
    if isinstance(model, keras.Model):
        raise TypeError(
            f"Under the {keras.backend.backend()} backend pass a saved '.keras' file, "
            "not a Model: the export runs under TensorFlow in a subprocess."
        )
    return backend.run_under("tensorflow", "keras_mixer.deploy.runner:run_on_file", function,
                             os.path.abspath(os.fspath(model)), raise_errors=True, **options)


def run_on_file(function, model_path, **options):
    """The subprocess side of :func:`on_tensorflow`."""
    return _resolve(function)(models.load_keras_file(model_path, compile=False), **options)


def _resolve(function):
    module_name, _, name = function.partition(":")
    return getattr(importlib.import_module(module_name), name)
