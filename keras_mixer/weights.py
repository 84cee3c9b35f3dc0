"""Loading weights into Mixer models."""

import os


def load_weights(model, weights):
    """Load ``weights`` into ``model``.

    Args:
        model: a Mixer model built by this package.
        weights: path to a Keras ``.weights.h5`` file.
    """
    path = os.fspath(weights)
    if not path.endswith(".weights.h5"):
        raise ValueError(
            f"Unsupported weights {weights!r}: expected a path to a '.weights.h5' file."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    model.load_weights(path)
