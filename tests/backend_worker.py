"""Run under a chosen backend in a subprocess: load weights into the tiny Mixer, write its logits.

Usage: KERAS_BACKEND=... python backend_worker.py WEIGHTS.weights.h5 IMAGES.npy OUT.npy
"""

import sys

import numpy as np

import keras_mixer
from conftest import TINY


def main(weights, images, out):
    model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=10,
                                 classifier_activation=None, weights=weights)
    np.save(out, model.predict(np.load(images, allow_pickle=False), verbose=0))


if __name__ == "__main__":
    main(*sys.argv[1:])
