"""Train the tiny Mixer for one step under this process's backend and save it.

Writes OUT_DIR/model.keras and returns ``(images uint8, the model's outputs on them)``.
"""

import os

import keras
import numpy as np

from helpers.tiny import tiny_classifier


def train_and_save(out_dir, plain=False):
    # Without preprocessing the model takes [-1, 1] pixels; with logits the export adds softmax.
    model = tiny_classifier(include_preprocessing=not plain,
                            classifier_activation=None if plain else "softmax")
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (16, 32, 32, 3)).astype("uint8")
    inputs = images.astype("float32") / 127.5 - 1.0 if plain else images.astype("float32")
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=plain))
    model.fit(inputs, rng.integers(0, 10, 16), batch_size=8, epochs=1, verbose=0)
    model.save(os.path.join(out_dir, "model.keras"))
    return images, model.predict(inputs, verbose=0)
