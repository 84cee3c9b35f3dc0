"""How much a reduced-precision policy changes a Mixer's outputs, on fixed inputs.

The same random-weight Mixer (a random head too: the zero-initialised one gives
all-zero logits) runs in float32 and under the Keras dtype policy of the row
(``bfloat16``) on the same seeded images; :func:`keras_mixer.models.drift`
compares the logits: top-1 agreement and relative error.
"""

import dataclasses
import os
import tempfile
import time

import keras
import numpy as np

from keras_mixer import deploy, models
from keras_mixer.benchmark.gemm import gemm_flops, reference_gemms
from keras_mixer.config import as_architecture, flops


def precision_drift(config, image_size=224, num_classes=1000, dtype="bfloat16", num_images=8,
                    seed=0, batch_size=8):
    """``{"dtype", "top1_agreement", "relative_error", "max_abs_error", "num_images"}``.

    ``config`` is an architecture (a :class:`~keras_mixer.config.MixerConfig` or a
    variant name); runs on the current Keras backend.
    """
    keras.utils.set_random_seed(seed)
    reference = models.MlpMixer(**dataclasses.asdict(as_architecture(config)), num_classes=num_classes,
                                input_shape=(image_size, image_size, 3),
                                classifier_activation=None, dtype="float32")
    rng = np.random.default_rng(seed)
    head = reference.head.kernel
    head.assign(rng.standard_normal(head.shape).astype("float32") / np.sqrt(head.shape[0]))
    images = rng.uniform(0, 255, (num_images, image_size, image_size, 3)).astype("float32")
    candidate = models.with_dtype(reference, dtype)
    expected, actual = (model.predict(images, batch_size=batch_size, verbose=0)
                        for model in (reference, candidate))
    return dict(dtype=dtype, **models.drift(expected, actual))


def saved_model_rates(config="B/16", image_size=224, batch_size=16, dtypes=("float32", "bfloat16"),
                      repeats=3, log=print):
    """``serving_default`` img/s of a random-weight Mixer exported at each dtype (TensorFlow).

    The SavedModels are timed interleaved with TensorFlow's bf16 reference GEMMs
    (:func:`~keras_mixer.benchmark.gemm.reference_gemms`), best of ``repeats``; each
    row also gives its GFLOP/s as a fraction of the best same-run bf16 GEMM rate.
    """
    import tensorflow as tf

    architecture = as_architecture(config)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch_size, image_size, image_size, 3)), tf.float32)
    gemms = reference_gemms(architecture, image_size, batch_size)
    matmuls = {}
    for name, (m, k, n) in gemms.items():  # TensorFlow's own bf16 GEMMs: the SavedModel runs there
        a, b = (tf.constant(rng.standard_normal(shape), tf.bfloat16) for shape in ((m, k), (k, n)))
        matmuls[name] = tf.function(lambda a=a, b=b: tf.matmul(a, b))
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "model.keras")
        models.save_keras_file(models.MlpMixer(**dataclasses.asdict(architecture),
                                               input_shape=(image_size, image_size, 3)), path)
        calls = {}
        for dtype in dtypes:
            log(f"saved model rates: exporting {dtype}")
            version = deploy.export_saved_model(path, work, name=dtype, dtype=dtype)
            serve = tf.saved_model.load(version).signatures[deploy.SERVING_DEFAULT]
            calls[dtype] = lambda serve=serve: serve(images=images)["probabilities"].numpy()
        calls.update({name: lambda fn=fn: fn().numpy() for name, fn in matmuls.items()})
        for fn in calls.values():
            fn()  # trace and warm up
        best = dict.fromkeys(calls, float("inf"))
        for _ in range(repeats):
            for name, fn in calls.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    gemm = max(gemm_flops(shape) / best[name] for name, shape in gemms.items()) / 1e9
    per_image = flops(architecture, image_size) / 1e9
    rows = [dict(dtype=dtype, batch=batch_size, img_per_s=batch_size / best[dtype],
                 fraction_of_bf16_matmul=batch_size / best[dtype] * per_image / gemm)
            for dtype in dtypes]
    for row in rows:
        log(f"SavedModel {row['dtype']}: {row['img_per_s']:.2f} img/s at batch {batch_size} = "
            f"{row['fraction_of_bf16_matmul']:.2f} of the same-run bf16 GEMM ({gemm:.0f} GFLOP/s)")
    return dict(bf16_matmul_gflops=gemm, rows=rows)
