"""The tiny Mixer used by behaviour tests, and images for it."""

import functools
import os

import numpy as np

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
TESTS_DATA = os.path.join(os.path.dirname(__file__), "..", "data")

# A tiny Mixer for behaviour tests: 32x32 images, patch 8 (16 tokens), width 32.
TINY = dict(patch_size=8, num_blocks=2, hidden_dim=32, tokens_mlp_dim=16, channels_mlp_dim=64)
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def tiny_images(n=4, size=32, seed=0):
    """uint8-range float images."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def tiny_classifier(seed=1, **kwargs):
    """The tiny Mixer with a random (not zero) head, so its predictions differ between classes."""
    import keras_mixer

    model = keras_mixer.MlpMixer(**TINY, input_shape=(32, 32, 3), num_classes=10, **kwargs)
    rng = np.random.default_rng(seed)
    model.head.set_weights([rng.normal(0, 0.5, w.shape).astype("float32")
                            for w in model.head.get_weights()])
    return model


@functools.lru_cache(maxsize=4)
def png_bytes(width, height):
    """A valid black RGB PNG of ``width`` x ``height``, built row by row: a 10000 x 10000 one is
    291 KB and never held decoded here."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)  # filter byte, then RGB
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))
