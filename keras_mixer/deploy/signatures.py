"""What an exported Mixer looks like from outside: signature and tensor names, and the
serving functions that implement them (TensorFlow), shared by the exporters and the clients.

Signatures (TF Serving, tag ``serve``):

* ``serving_default``: ``images`` float32 ``(batch, H, W, 3)`` pixels in 0-255,
  any ``H, W``;
* ``serving_bytes``: ``image_bytes`` string ``(batch,)`` of encoded JPEG/PNG/GIF/BMP.

Both prepare pixels by the image policy (:mod:`keras_mixer.images`, with the
model's ``crop_fraction``) and return ``probabilities`` ``(batch, classes)``,
``top_k_classes`` (int32) and ``top_k_scores`` ``(batch, k)``, plus
``top_k_labels`` (string) when labels are known. Both refuse an empty batch and
an image of more than ``max_image_pixels`` pixels (fixed at export; encoded
images are measured from their header, before decoding).
"""

import os

import numpy as np

from keras_mixer import images as image_policy
from keras_mixer import fast

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
OUTPUTS = ("probabilities", "top_k_classes", "top_k_scores", "top_k_labels")
LABELS_FILE = "labels.txt"  # the lookup table's file; the SavedModel keeps it in assets/
EMPTY_BATCH = "empty batch: send at least one image"
# Largest image (height x width) the signatures prepare: a 6000 x 4000 photo passes; a
# 10000 x 10000 PNG (291 KB encoded, 1.2 GB to decode and resize) does not.
MAX_IMAGE_PIXELS = 25_000_000


def probability_model(model):
    """``model`` with the exported interface: 0-255 pixels in, probabilities out (a ``keras.Model``).

    Adds the 0-255 -> [-1, 1] scaling for models built with
    ``include_preprocessing=False`` and a softmax for models ending in logits.
    """
    import keras

    config = model.config
    if config.include_preprocessing and config.outputs_probabilities:
        return model
    if not config.include_top:
        raise ValueError(f"Model {model.name!r} has no classification head (include_top=False): "
                         "nothing to serve.")
    inputs = keras.Input(config.image_shape, name=IMAGES_INPUT)
    x = inputs if config.include_preprocessing else keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    x = model(x)
    if not config.outputs_probabilities:
        x = keras.layers.Softmax(dtype="float32")(x)
    return keras.Model(inputs, x, name=f"{model.name}_probabilities")


def keras_probabilities(model, images, batch_size=32):
    """What the serving signatures compute, from the Keras model, for images at its size.

    Refuses what the signatures refuse, with a ``ValueError``: an empty batch
    (``model.predict`` itself fails on one with Keras' own ``UnboundLocalError``)
    and NaN or Inf pixels (``model.predict`` returns NaN probabilities for them).
    """
    images = np.asarray(images)
    check_images(images)
    with fast.inference():  # as the model's own predict step, also through a wrapper model
        probabilities = probability_model(model).predict(images, batch_size=batch_size, verbose=0)
    return np.asarray(probabilities, dtype="float64")


def check_images(images):
    """A clear ``ValueError`` for a batch the serving signatures would refuse (NumPy arrays)."""
    if images.ndim != 4:
        raise ValueError(f"Images must have shape (batch, height, width, channels), got {images.shape}.")
    if images.shape[0] == 0:
        raise ValueError("Empty batch: give at least one image.")
    if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
        raise ValueError("Images contain NaN or Inf: give pixels in 0-255.")


def check_finite(probabilities, what):
    """Raise a ``ValueError`` when a model's ``probabilities`` are not all finite.

    A model with NaN or Inf weights answers NaN for every image (and argmax makes
    that class 0): it is refused rather than exported or scored.

    Args:
        probabilities: the model's outputs on sample or evaluation images.
        what: the model, for the message (``"Model runs/main/model.keras"``).
    """
    if not np.all(np.isfinite(probabilities)):
        raise ValueError(f"{what} outputs NaN or Inf (its weights are not finite: a diverged "
                         "training?); it is neither exported nor scored. Use an earlier "
                         "checkpoint, or train again with a lower learning rate.")


def serving_functions(model, labels=None, top_k=5, labels_dir=None,
                      max_image_pixels=MAX_IMAGE_PIXELS):
    """``(classify, decode, table)``: the two signature functions and the labels table (TensorFlow).

    Args:
        model: the Mixer.
        labels: class names, or ``None``.
        top_k: classes in the ``top_k_*`` outputs.
        labels_dir: with ``labels``, the folder where the table's ``labels.txt`` is
            written; the caller removes it once the SavedModel is written (which
            copies it into its ``assets/``).
        max_image_pixels: largest ``height * width`` of an image the signatures
            prepare; larger ones fail with ``InvalidArgumentError`` (before decoding,
            for encoded images).
    """
    import tensorflow as tf

    config = model.config
    size, crop, interpolation = config.image_size, config.crop_fraction, config.interpolation
    probabilities_of = probability_model(model)
    num_classes = config.num_classes
    k = min(top_k, num_classes)
    table = None
    if labels is not None:
        if len(labels) != num_classes:
            raise ValueError(f"Got {len(labels)} labels for {num_classes} classes.")
        if labels_dir is None:
            raise ValueError("labels need a labels_dir for their table's file.")
        labels_file = os.path.join(labels_dir, LABELS_FILE)
        with open(labels_file, "w", encoding="utf-8") as f:
            f.writelines(label + "\n" for label in labels)
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                labels_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE),
            default_value="")

    def outputs_for(prepared):
        probabilities = tf.cast(probabilities_of(prepared, training=False), tf.float32)
        scores, classes = tf.math.top_k(probabilities, k=k)
        outputs = {"probabilities": probabilities, "top_k_classes": classes, "top_k_scores": scores}
        if table is not None:
            outputs["top_k_labels"] = table.lookup(tf.cast(classes, tf.int64))
        return outputs

    def check_pixels(height, width):
        pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
        return tf.debugging.Assert(pixels <= max_image_pixels, [tf.strings.format(
            "image of {}x{} pixels is larger than the {} pixels this model takes "
            "(max_image_pixels, set at export)", (height, width, max_image_pixels))])

    def classify(images):
        tf.debugging.assert_positive(tf.shape(images)[0], message=EMPTY_BATCH)
        with tf.control_dependencies([check_pixels(tf.shape(images)[1], tf.shape(images)[2])]):
            images = tf.cast(images, tf.float32)
        tf.debugging.assert_all_finite(images, "images contain NaN or Inf: send pixels in 0-255")
        prepared = image_policy.resize(images, size, crop, interpolation)
        return outputs_for(tf.ensure_shape(prepared, (None,) + tuple(size) + (3,)))

    def prepare(data):
        declared = image_policy.encoded_size(data)
        with tf.control_dependencies([check_pixels(declared[0], declared[1])]):
            return image_policy.prepare(data, size, crop, interpolation)

    def decode(image_bytes):
        tf.debugging.assert_positive(tf.size(image_bytes), message=EMPTY_BATCH)
        prepared = tf.map_fn(prepare, image_bytes,
                             fn_output_signature=tf.TensorSpec(tuple(size) + (3,), tf.float32))
        return outputs_for(prepared)

    return classify, decode, table
