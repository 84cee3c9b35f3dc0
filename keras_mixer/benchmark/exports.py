"""Exported artifacts of a random-weight Mixer: SavedModel img/s, the served SavedModel
over gRPC (:mod:`.served`) and TFLite latency.

The exports themselves go through :mod:`keras_mixer.deploy` (under TensorFlow,
in a subprocess when another backend is active); the SavedModel is timed with
TensorFlow in this process.
"""

import dataclasses
import os
import tempfile
import time

import numpy as np

from keras_mixer import deploy, models
from keras_mixer.benchmark import served


def export_benchmark(config, image_size, batch_size, log=print,
                     modes=("float32", "float16", "dynamic_int8"), repeats=3,
                     served_batches=served.BATCHES, served_clients=served.CLIENTS):
    """Measure exported artifacts of a random-weight Mixer of architecture ``config``.

    SavedModel ``serving_default`` img/s at ``batch_size`` (best of ``repeats``),
    the same SavedModel called directly and served over gRPC at each of
    ``served_batches`` by each number of ``served_clients``
    (:func:`.served.served_benchmark`; none when empty), and single-thread
    TFLite latency per mode (int8 needs calibration data: left out).

    Returns a list of JSON-serializable dicts, one per artifact (served rows:
    ``artifact="served"``).
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as work:
        model_path = os.path.join(work, "model.keras")
        models.MlpMixer(**dataclasses.asdict(config),
                        input_shape=(image_size, image_size, 3)).save(model_path)
        log("exports: SavedModel")
        version_dir = deploy.export_saved_model(model_path, export_dir=os.path.join(work, "served"),
                                                name="bench")
        serve = tf.saved_model.load(version_dir).signatures[deploy.SERVING_DEFAULT]
        serve(images=tf.constant(images))  # trace and warm up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            serve(images=tf.constant(images))
            seconds.append(time.perf_counter() - start)
        rows = [dict(artifact="saved_model", batch=batch_size,
                     images_per_second=batch_size / min(seconds))]
        log(f"exports: SavedModel {rows[0]['images_per_second']:.3g} img/s at batch {batch_size}")
        if served_batches and served_clients:
            rows += [dict(artifact="served", **row) for row in served.served_benchmark(
                version_dir, image_size, served_batches, served_clients,
                log=lambda msg: log(f"exports: {msg}"))]
        for row in deploy.export_tflite(model_path, export_dir=work, name="bench", modes=modes,
                                        eval_images=images):
            rows.append(dict(artifact=f"tflite_{row['mode']}", latency_ms=row["latency_ms"],
                             size_bytes=row["size_bytes"], max_abs_error=row["max_abs_error"]))
            log(f"exports: TFLite {row['mode']} {row['latency_ms']:.3g} ms/image")
    return rows
