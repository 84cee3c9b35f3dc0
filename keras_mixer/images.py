"""The image policy: how image files and arrays become model inputs, the same on every path.

Training's evaluation, both serving signatures, TFLite/ONNX calibration,
``keras-mixer evaluate`` and the visualizer all call these functions, so a file
gives the same pixels wherever it goes:

1. decode with ``tf.io.decode_image`` to RGB uint8 (JPEG, PNG, BMP, GIF);
2. with ``crop_fraction < 1``, crop the central square whose side is that
   fraction of the shorter side (the model's ``config.crop_fraction``);
3. resize to the model's size with the model's filter (``config.interpolation``:
   bilinear by default, bicubic for timm's presets), antialiased when shrinking
   (``tf.image.resize(..., antialias=True)``), as float32 0-255.

``crop_fraction == 1`` squashes the whole image to the model's size. A pretrained
preset sets both (timm's Mixers: crop 0.875, bicubic), so that a model is evaluated
and served the way it was evaluated upstream; exports record them.
"""

import os

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Leading bytes of the formats tf.io.decode_image reads.
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"GIF8")


def decode(data):
    """Encoded image bytes (a scalar string tensor) -> uint8 ``(H, W, 3)``."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, (None, None, 3))


def center_crop(images, crop_fraction):
    """The central square of side ``round(crop_fraction * shorter side)`` of ``(..., H, W, C)``."""
    if crop_fraction >= 1.0:
        return images
    shape = tf.shape(images)
    height, width = shape[-3], shape[-2]
    side = tf.cast(tf.round(tf.cast(tf.minimum(height, width), tf.float32) * crop_fraction), tf.int32)
    side = tf.maximum(side, 1)
    return tf.image.crop_to_bounding_box(images, (height - side) // 2, (width - side) // 2, side, side)


def resize(images, size, crop_fraction=1.0, interpolation="bilinear"):
    """Pixels ``(H, W, 3)`` or ``(batch, H, W, 3)`` -> float32 at ``size`` (``(height, width)``).

    Bicubic resampling overshoots: its values are clipped back to 0-255.
    """
    images = center_crop(tf.cast(images, tf.float32), crop_fraction)
    resized = tf.image.resize(images, tuple(size), method=interpolation, antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0) if interpolation == "bicubic" else resized


def prepare(data, size, crop_fraction=1.0, interpolation="bilinear"):
    """Encoded bytes -> the model's float32 0-255 input ``(height, width, 3)``."""
    return tf.ensure_shape(resize(decode(data), size, crop_fraction, interpolation),
                           tuple(size) + (3,))


def list_images(folder):
    """Image files under ``folder`` (recursively), sorted."""
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                  for name in names if name.lower().endswith(IMAGE_EXTENSIONS))


def check_header(path):
    """Raise ``ValueError`` naming ``path`` when it does not start like a readable image."""
    with open(path, "rb") as f:
        header = f.read(8)
    if not header.startswith(IMAGE_MAGIC):
        raise ValueError(f"Unreadable image {path!r}: not a JPEG, PNG, BMP or GIF file.")


def load_files(paths, size, crop_fraction=1.0, interpolation="bilinear"):
    """Image files as a NumPy float32 ``(n, height, width, 3)`` of 0-255 pixels, by the policy."""
    arrays = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image not found: {path}")
        check_header(path)
        try:
            arrays.append(prepare(tf.io.read_file(path), size, crop_fraction, interpolation).numpy())
        except tf.errors.InvalidArgumentError as error:
            raise ValueError(f"Unreadable image {path!r}: {error.message.splitlines()[0]}") from None
    return np.stack(arrays).astype("float32")


def load_images(path, size, crop_fraction=1.0, max_images=256, seed=0, interpolation="bilinear"):
    """0-255 float32 images ``(n, H, W, 3)`` from a ``.npy`` file or a folder of image files.

    From a folder (searched recursively), ``max_images`` files are drawn at
    random (fixed ``seed``) and prepared by the policy. A ``.npy`` array is
    taken as it is (it must already be at the model's size).
    """
    path = os.fspath(path)
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False).astype("float32")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Expected a .npy file or a folder of images, got {path!r}.")
    files = list_images(path)
    if not files:
        raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {path!r}.")
    files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))[:max_images]]
    return load_files(files, size, crop_fraction, interpolation)
