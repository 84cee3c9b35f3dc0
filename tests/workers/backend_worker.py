"""Under this process's backend: the tiny Mixer's logits from saved weights; a saved run's
optimizer step."""

import keras
import keras_mixer
from helpers.tiny import TINY
from keras_mixer import models


def tiny_logits(weights, images):
    model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=10,
                                 classifier_activation=None, weights=weights)
    return model.predict(images, verbose=0)


def optimizer_step(path, grads):
    """Load a compiled ``.keras`` (safe mode) and apply ``grads`` with its optimizer; returns
    ``{"optimizer": class name, "weights": [...]}``."""
    model = models.load_keras_file(path)
    model.optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], model.trainable_variables)
    return {"optimizer": type(model.optimizer).__name__,
            "weights": [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]}
