"""Train the tiny Mixer for one step under the chosen backend, save it and its predictions.

Usage: KERAS_BACKEND=... python export_worker.py OUT_DIR [--no-preprocessing]
Writes OUT_DIR/model.keras, images.npy (uint8) and expected.npy (the model's outputs).
"""

import os
import sys

import numpy as np

from conftest import tiny_classifier


def main(out_dir, *flags):
    plain = "--no-preprocessing" in flags
    # Without preprocessing the model takes [-1, 1] pixels; with logits the export adds softmax.
    model = tiny_classifier(include_preprocessing=not plain,
                            classifier_activation=None if plain else "softmax")
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (16, 32, 32, 3)).astype("uint8")
    inputs = images.astype("float32") / 127.5 - 1.0 if plain else images.astype("float32")
    model.compile(optimizer="adam", loss=keras_loss(plain))
    model.fit(inputs, rng.integers(0, 10, 16), batch_size=8, epochs=1, verbose=0)
    model.save(os.path.join(out_dir, "model.keras"))
    np.save(os.path.join(out_dir, "images.npy"), images)
    np.save(os.path.join(out_dir, "expected.npy"), model.predict(inputs, verbose=0))


def keras_loss(from_logits):
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


if __name__ == "__main__":
    main(*sys.argv[1:])
