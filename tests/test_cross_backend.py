"""Weights saved under this backend give the same logits under every other backend."""

import numpy as np
import pytest
from helpers import reference
from helpers.processes import run_worker
from helpers.tiny import TINY, tiny_images

import keras
import keras_mixer

BACKEND_MODULES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
BACKENDS = tuple(BACKEND_MODULES)


def test_weights_give_same_logits_on_every_backend(tmp_path):
    here = keras.backend.backend()
    model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=10,
                                 classifier_activation=None)
    rng = np.random.default_rng(3)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.2
                       for w in model.get_weights()])
    weights = str(tmp_path / "tiny.weights.h5")
    model.save_weights(weights)
    images = tiny_images(4)
    expected = model.predict(images, verbose=0)

    for other in BACKENDS:
        if other == here:
            continue
        try:
            logits = run_worker(other, "workers.backend_worker:tiny_logits", weights, images,
                                timeout=300)
        except keras_mixer.backend.BackendCallError as error:
            if f"No module named '{BACKEND_MODULES[other]}'" in error.output:
                pytest.skip(f"backend {other} not installed")
            raise
        assert reference.rel_error(logits, expected) <= 1e-5, f"{here} -> {other}"
