"""Loading a preset in a fresh process, under the backend it was started with."""

import importlib
import importlib.util

import keras
import numpy as np

import keras_mixer


def load_preset(preset, pixels):
    """The preset's outputs on ``pixels`` (0-255, at the model's size) by keras-mixer and, when
    installed, by keras-hub's own ``from_preset`` (after ``import keras_mixer.hub``)."""
    result = dict(backend=keras.backend.backend(),
                  mixer=np.asarray(keras_mixer.load_model(preset).predict(pixels, verbose=0)))
    if importlib.util.find_spec("keras_hub") is not None:
        import keras_hub

        importlib.import_module("keras_mixer.hub")  # registers the Mixer classes with Keras

        classifier = keras_hub.models.ImageClassifier.from_preset(preset)
        backbone = keras_hub.models.Backbone.from_preset(preset)
        result.update(keras_hub=np.asarray(classifier.predict(pixels, verbose=0)),
                      classes=[type(classifier).__name__, type(backbone).__name__])
    return result
