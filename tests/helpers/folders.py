"""Small image folders for data tests, and a count of the images the pipeline decodes."""

import contextlib
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from keras_mixer import images


def write_image_folder(root, images_by_class, extension="png"):
    """``root/<class>/<i>.<extension>`` for ``{class name: uint8 images (n, H, W, 3)}``.

    Made whole or not at all (built aside, then renamed): processes of one job may
    write the same folder at once, and the first one to finish makes it.
    """
    if os.path.isdir(root):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".images-", dir=parent)
    encode = tf.io.encode_png if extension == "png" else tf.io.encode_jpeg
    for name, pixels in images_by_class.items():
        os.makedirs(os.path.join(staging, name))
        for i, image in enumerate(pixels):
            tf.io.write_file(os.path.join(staging, name, f"{i:03d}.{extension}"), encode(image))
    try:
        os.rename(staging, root)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return root


def random_classes(num_images, num_classes=10, size=32, seed=0):
    """``{class name: uint8 images}``: ``num_images`` random images, every class present."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (num_images, size, size, 3)).astype("uint8")
    labels = rng.permutation(np.arange(num_images) % num_classes)
    return {f"c{k}": pixels[labels == k] for k in range(num_classes)}


@contextlib.contextmanager
def count_decodes():
    """Count the images :func:`keras_mixer.images.decode` is given to decode (in tf.data maps too).

    Yields a list whose first item is the count so far.
    """
    count = [0]
    decode = images.decode

    def tick():
        count[0] += 1
        return np.int64(0)

    def counting(data):  # counts every attempt, before the decoder runs (or fails)
        with tf.control_dependencies([tf.py_function(tick, [], tf.int64)]):
            return decode(tf.identity(data))

    images.decode = counting
    try:
        yield count
    finally:
        images.decode = decode
