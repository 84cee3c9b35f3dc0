"""Weights saved under this backend give the same logits under every other backend."""

import os
import subprocess
import sys

import numpy as np
import pytest
import reference
from conftest import TINY, tiny_images

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
    images = tmp_path / "images.npy"
    np.save(images, tiny_images(4))
    expected = model.predict(np.load(images), verbose=0)

    tests_dir = os.path.dirname(__file__)
    for other in BACKENDS:
        if other == here:
            continue
        out = tmp_path / f"{other}.npy"
        path = os.pathsep.join([tests_dir, os.path.dirname(tests_dir), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, KERAS_BACKEND=other, PYTHONPATH=path)
        result = subprocess.run(
            [sys.executable, os.path.join(tests_dir, "backend_worker.py"), weights, str(images),
             str(out)],
            env=env, capture_output=True, text=True, timeout=300,
        )
        if result.returncode and f"No module named '{BACKEND_MODULES[other]}'" in result.stderr:
            pytest.skip(f"backend {other} not installed: {result.stderr.splitlines()[-1]}")
        assert result.returncode == 0, result.stderr[-3000:]
        logits = np.load(out, allow_pickle=False)
        assert reference.rel_error(logits, expected) <= 1e-5, f"{here} -> {other}"
