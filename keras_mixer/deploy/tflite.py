"""TFLite (LiteRT) files: ``<export_dir>/<name>.<mode>.tflite``, each checked against Keras.

Converted by ``model.export(format="litert")`` (Keras' ExportArchive, then
``TFLiteConverter``) from the exported interface (:func:`signatures.probability_model`):
input ``(1, H, W, 3)`` float32 0-255 (uint8 for ``int8``), output probabilities.
Calibration and check images go through the image policy (:mod:`keras_mixer.images`).
"""

import json
import os
import time

import numpy as np

from keras_mixer import images as image_policy
from keras_mixer.deploy import runner, signatures
from keras_mixer.files import atomic_output, write_text

TFLITE_MODES = ("float32", "float16", "dynamic_int8", "int8")
INFO_SUFFIX = ".json"  # beside each file: NAME.MODE.tflite.json (crop, image size, the check's numbers)


def read_info(path):
    """The sidecar ``PATH.json`` that :func:`export_tflite` writes beside a ``.tflite`` file, or ``None``."""
    try:
        with open(os.fspath(path) + INFO_SUFFIX, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def export_tflite(model, export_dir="saved_models", name="mixer", modes=TFLITE_MODES,
                  representative_images=None, eval_images=None, num_threads=1):
    """Convert a Mixer to TFLite files ``<export_dir>/<name>.<mode>.tflite`` and check them.

    Args:
        model: a ``.keras`` file (or an ``MlpMixer`` under TensorFlow).
        export_dir: output directory.
        name: file-name prefix.
        modes: any of ``"float32"``, ``"float16"``, ``"dynamic_int8"``
            (int8 weights, float activations) and ``"int8"`` (full integer:
            int8 weights and activations, uint8 input, float32 output).
        representative_images: ``(n, H, W, 3)`` 0-255 images for calibrating
            ``"int8"`` (needed for that mode), e.g. training images; or a
            ``.npy`` file / image folder (:func:`keras_mixer.images.load_images`).
        eval_images: held-out ``(n, H, W, 3)`` 0-255 images (or file / folder) on
            which every file is compared with the Keras model (default: the first
            16 representative images, else random pixels).
        num_threads: interpreter threads for the latency figure.

    Returns:
        One dict per mode: ``mode``, ``path``, ``size_bytes``, ``max_abs_error``
        (probabilities), ``top1_agreement`` and ``latency_ms`` (median
        single-image ``invoke``).
    """
    unknown = set(modes) - set(TFLITE_MODES)
    if unknown:
        raise ValueError(f"Unknown TFLite modes {sorted(unknown)}; known: {TFLITE_MODES}.")
    if "int8" in modes and representative_images is None:
        raise ValueError("TFLite mode 'int8' needs representative_images for calibration.")
    return runner.on_tensorflow(
        "keras_mixer.deploy.tflite:write_tflite", model, export_dir=export_dir, name=name,
        modes=list(modes), representative_images=_as_input(representative_images),
        eval_images=_as_input(eval_images), num_threads=num_threads)


def _as_input(images):
    """Paths stay paths (loaded at the model's size later); arrays become float32 arrays."""
    if images is None or isinstance(images, (str, os.PathLike)):
        return None if images is None else os.fspath(images)
    return np.asarray(images, dtype="float32")


def _images_for(model, images):
    if images is None:
        return None
    config = model.config
    if isinstance(images, str):
        images = image_policy.load_images(images, config.image_size, config.crop_fraction)
    images = np.asarray(images, dtype="float32")
    expected = tuple(config.image_size) + (3,)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"Expected images of shape (n, {expected[0]}, {expected[1]}, 3) for this "
                         f"model, got {images.shape}.")
    return images


def _converter_options(mode, representative_images):
    import tensorflow as tf

    if mode == "float32":
        return {}
    if mode == "float16":
        return dict(optimizations=[tf.lite.Optimize.DEFAULT],
                    target_spec={"supported_types": [tf.float16]})
    if mode == "dynamic_int8":
        return dict(optimizations=[tf.lite.Optimize.DEFAULT])

    def representative_dataset():
        for image in representative_images:
            yield [np.asarray(image, "float32")[None]]

    return dict(optimizations=[tf.lite.Optimize.DEFAULT],
                representative_dataset=representative_dataset,
                target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
                inference_input_type=tf.uint8, inference_output_type=tf.float32)


def write_tflite(model, export_dir, name, modes=TFLITE_MODES, representative_images=None,
                 eval_images=None, num_threads=1):
    """The conversion itself (TensorFlow backend); returns one row per mode."""
    import tensorflow as tf

    height, width = model.config.image_size
    representative_images = _images_for(model, representative_images)
    eval_images = _images_for(model, eval_images)
    if eval_images is None:
        eval_images = (representative_images[:16] if representative_images is not None else
                       np.random.default_rng(0).integers(0, 256, (16, height, width, 3)).astype("float32"))
    served = signatures.probability_model(model)
    expected = signatures.keras_probabilities(model, eval_images)
    os.makedirs(export_dir, exist_ok=True)
    rows = []
    for mode in modes:
        final = os.path.join(export_dir, f"{name}.{mode}.tflite")
        with atomic_output(final) as tmp:
            served.export(tmp, format="litert", verbose=False, input_signature=[
                tf.TensorSpec((1, height, width, 3), tf.float32, name=signatures.IMAGES_INPUT)],
                **_converter_options(mode, representative_images))
            got, latency = run_tflite(tmp, eval_images, num_threads)
            if not np.all(np.isfinite(got)):
                raise RuntimeError(f"TFLite {mode} model produced non-finite outputs; not publishing it.")
            row = dict(mode=mode, path=final, size_bytes=os.path.getsize(tmp),
                       max_abs_error=float(np.max(np.abs(got - expected))),
                       top1_agreement=float(np.mean(got.argmax(-1) == expected.argmax(-1))),
                       latency_ms=latency, num_eval_images=len(eval_images))
        # Mobile code and `keras-mixer evaluate` read how images must be prepared from here.
        write_text(final + INFO_SUFFIX, json.dumps(dict(
            row, crop_fraction=model.config.crop_fraction, image_size=[height, width],
            num_classes=model.config.num_classes, input="(1, H, W, 3) pixels 0-255, "
            + ("uint8" if mode == "int8" else "float32"), output="probabilities"), indent=2) + "\n")
        rows.append(row)
        print(f"TFLite {mode:>12}: {row['size_bytes'] / 1e6:8.3f} MB  max|err| {row['max_abs_error']:.2e}  "
              f"top-1 agreement {row['top1_agreement']:.3f}  {latency:.3f} ms  -> {final}")
    return rows


def run_tflite(path, images, num_threads=1):
    """Per-image outputs (dequantized) and the median single-image latency in ms."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=path, num_threads=num_threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    outputs, times = [], []
    for image in images:
        x = image[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
        y = interpreter.get_tensor(out["index"]).astype("float64")
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        outputs.append(y[0])
    return np.stack(outputs), 1e3 * float(np.median(times[1:] or times))
