"""TFLite (LiteRT) files ``<export_dir>/<name>.<mode>.tflite``, each checked against Keras in LiteRT.

The probability model (:func:`signatures.probability_model`) is written as a
SavedModel with one signature, ``serving_default``: input ``images``
``(1, H, W, 3)`` 0-255 pixels (uint8 for ``int8``, else float32), output
``probabilities``; ``TFLiteConverter.from_saved_model`` converts it. LayerNorm is
traced as ``x - mean``, ``mean(d * d)``, ``rsqrt``: the same numbers as Keras'
kernel, in ops that every integer kernel set supports. Calibration and check
images go through the image policy (:mod:`keras_mixer.images`). Beside each file:
``.json`` (crop, size, the check), ``.layers.json``/``.png`` for quantized modes
(:mod:`.layer_report`), and ``NAME.labels.txt`` when labels are known.
"""

import contextlib
import json
import os
import re
import tempfile

import numpy as np

from keras_mixer import data as datasets
from keras_mixer import images as image_policy
from keras_mixer.deploy import layer_report, litert, runner, signatures
from keras_mixer.deploy.saved_model import read_labels
from keras_mixer.files import atomic_output, write_text
from keras_mixer.layers import MlpBlock

TFLITE_MODES = ("float32", "float16", "dynamic_int8", "int8", "int16x8", "mixed")
CALIBRATED_MODES = ("int8", "int16x8", "mixed")  # need representative images
QUANTIZED_MODES = ("dynamic_int8",) + CALIBRATED_MODES  # get a per-layer report
INFO_SUFFIX = ".json"  # beside each file: NAME.MODE.tflite.json (crop, image size, the check's numbers)
LABELS_SUFFIX = ".labels.txt"  # NAME.labels.txt, one class name per line, shared by every mode
# What `mixed` keeps float (README): LayerNorm (the debugger ranks its RSQRT and variance
# worst: far more than 8 bits of range), the residual adds (they carry the outliers), token
# mixing, the stem, the first block's channel-mixing MLP (the error that enters early is
# carried through every block: int8 there alone cost 1.2% agreement on a CIFAR Mixer) and
# the head. The other blocks' channel-mixing MLPs (most of the weights and FLOPs in a deep
# Mixer) are int8.
MIXED_FLOAT_LAYERS = ("norm", "add", "token_mixing", "stem", "channel_mixing_0", "head")
REPORT_IMAGES = 32  # eval images for the accumulated per-layer errors


def read_info(path):
    """The sidecar ``PATH.json`` that :func:`export_tflite` writes beside a ``.tflite`` file, or ``None``."""
    try:
        with open(os.fspath(path) + INFO_SUFFIX, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def export_tflite(model, export_dir="saved_models", name="mixer", modes=TFLITE_MODES,
                  representative_images=None, eval_images=None, num_threads=1, labels=None,
                  mixed_float_layers=MIXED_FLOAT_LAYERS, max_calibration_images=256,
                  max_eval_images=1000, threads=(1, 2)):
    """Convert a Mixer to TFLite files ``<export_dir>/<name>.<mode>.tflite`` and check them in LiteRT.

    Args:
        model: a ``.keras`` file (or an ``MlpMixer`` under TensorFlow).
        export_dir: output directory.
        name: file-name prefix.
        modes: any of ``"float32"``, ``"float16"``, ``"dynamic_int8"`` (int8
            weights, float activations), ``"int8"`` (full integer: int8 weights
            and activations, uint8 input, float32 output), ``"int16x8"`` (int16
            activations, int8 weights, float32 input and output) and ``"mixed"``
            (int8, except the layers of the kinds in ``mixed_float_layers``,
            which the quantization debugger ranks worst on Mixers: LayerNorm,
            residual adds, token mixing, stem, the first block's channel mixing,
            head; they stay float).
        representative_images: calibration images for the ``int8``, ``int16x8``
            and ``mixed`` modes (required for them): training images, as a folder
            of image files (``max_calibration_images`` drawn at random), a
            ``.npy`` file or an ``(n, H, W, 3)`` 0-255 array.
        eval_images: held-out images on which every file is compared with Keras
            (folder, ``.npy`` or array; default: the first 16 representative
            images, else random pixels). A labelled folder (``class/*.jpg``, or
            its ``test/`` split) also gives top-1 accuracy.
        num_threads: interpreter threads for ``latency_ms``.
        labels: class names (list or text file) written to ``NAME.labels.txt``
            (default: a labelled ``eval_images`` folder's class names).
        threads: thread counts of the ``latency_ms_<n>t`` figures.

    Returns:
        One dict per mode: ``mode``, ``path``, ``size_bytes``, ``max_abs_error``
        and ``mean_abs_error`` (probabilities), ``top1_agreement``,
        ``top1_accuracy`` (labelled eval images), ``latency_ms`` and
        ``latency_ms_<n>t`` (median single-image ``invoke``), ``float_layers``
        (``mixed``) and ``report`` (quantized modes: the per-layer JSON).
    """
    unknown = set(modes) - set(TFLITE_MODES)
    if unknown:
        raise ValueError(f"Unknown TFLite modes {sorted(unknown)}; known: {TFLITE_MODES}.")
    calibrated = [mode for mode in modes if mode in CALIBRATED_MODES]
    if calibrated and representative_images is None:
        raise ValueError(
            f"TFLite mode(s) {', '.join(calibrated)} need representative_images for calibration: "
            "pass a folder of training images (CLI: --representative-images DIR) or a .npy "
            "(n, H, W, 3) 0-255 array.")
    for images in (representative_images, eval_images):
        if isinstance(images, (str, os.PathLike)):
            check_image_source(images)
    return runner.on_tensorflow(
        "keras_mixer.deploy.tflite:write_tflite", model, export_dir=export_dir, name=name,
        modes=list(modes), representative_images=_as_input(representative_images),
        eval_images=_as_input(eval_images), num_threads=num_threads,
        labels=read_labels(labels), mixed_float_layers=mixed_float_layers,
        max_calibration_images=max_calibration_images, max_eval_images=max_eval_images,
        threads=list(threads))


def check_image_source(path):
    """A clear error for a calibration / eval image source that is missing or empty."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image array not found: {path!r}.")
        return
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Image folder not found: {path!r} (expected a folder of image "
                                "files or a .npy (n, H, W, 3) array).")
    if not image_policy.list_images(path):
        raise ValueError(f"No image files ({', '.join(image_policy.IMAGE_EXTENSIONS)}) under {path!r}.")


def _as_input(images):
    """Paths stay paths (loaded at the model's size later); arrays become float32 arrays."""
    if images is None or isinstance(images, (str, os.PathLike)):
        return None if images is None else os.fspath(images)
    return np.asarray(images, dtype="float32")


def _images_for(model, images, max_images=256, seed=0):
    """``(images, labels or None, class names or None)`` at the model's size."""
    if images is None:
        return None, None, None
    config = model.config
    labels = class_names = None
    if isinstance(images, str):
        folder = images
        if os.path.isdir(images) and not images.endswith(".npy"):
            with contextlib.suppress(ValueError, OSError):
                folder, _ = datasets.split_root(images, "test")
                paths, labels, class_names = datasets.scan_folder(folder)
        if labels is not None:
            pick = np.sort(np.random.default_rng(seed).permutation(len(paths))[:max_images])
            images = image_policy.load_files([paths[i] for i in pick], config.image_size,
                                             config.crop_fraction)
            labels = np.asarray(labels)[pick]
        else:
            images = image_policy.load_images(images, config.image_size, config.crop_fraction,
                                              max_images=max_images, seed=seed)
    images = np.asarray(images, dtype="float32")
    expected = tuple(config.image_size) + (3,)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"Expected images of shape (n, {expected[0]}, {expected[1]}, 3) for this "
                         f"model, got {images.shape}.")
    return images, labels, class_names


@contextlib.contextmanager
def _patched(cls, name, method):
    original = getattr(cls, name)
    setattr(cls, name, method)
    try:
        yield
    finally:
        setattr(cls, name, original)


def token_mixing_as_dense():
    """While tracing: token mixing as transpose, ``x @ kernel`` twice, transpose back.

    The model's ``kernel.T @ x`` (constant left operand) converts to BATCH_MATMUL,
    which quantizes its weights per tensor and has no XNNPACK int8 kernel (measured
    ~4x slower than float in ``int8``); ``x @ kernel`` converts to FULLY_CONNECTED:
    per-channel int8 weights, XNNPACK kernels. Same values.
    """
    import tensorflow as tf

    original = MlpBlock.call

    def call(self, x):
        if self.axis == -1:
            return original(self, x)
        h = tf.transpose(x, (0, 2, 1))  # (batch, C, S)
        h = tf.tensordot(h, self.kernel_0, axes=1) + self.bias_0
        h = tf.nn.gelu(h, approximate=self.approximate_gelu)
        h = tf.tensordot(h, self.kernel_1, axes=1) + self.bias_1
        return tf.transpose(h, (0, 2, 1))

    return _patched(MlpBlock, "call", call)


def integer_friendly_layer_norm():
    """While tracing: LayerNorm as ``d = x - mean``, ``d * rsqrt(mean(d * d) + eps)``.

    Keras' TensorFlow kernel emits NEG and SQUARED_DIFFERENCE, which have no
    int16 kernels; these ops compute the same values and quantize everywhere.
    """
    import keras
    import tensorflow as tf

    def call(self, inputs):
        mean = tf.reduce_mean(inputs, axis=self.axis, keepdims=True)
        centred = inputs - mean
        variance = tf.reduce_mean(centred * centred, axis=self.axis, keepdims=True)
        outputs = centred * tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * self.gamma
        if self.center:
            outputs = outputs + self.beta
        return tf.cast(outputs, self.compute_dtype)

    return _patched(keras.layers.LayerNormalization, "call", call)


@contextlib.contextmanager
def stem_on_int8_grid(model):
    """While writing: the stem's kernel rounded to the grid the converter quantizes it to.

    The converter folds the ``[-1, 1]`` pixel scaling into the stem convolution,
    its offset into the bias with the *float* kernel, then quantizes the kernel
    (int8, per output channel, symmetric): the rounding error then meets 0-255
    pixels instead of centred ones, and alone cost ~0.9% top-1 agreement on a
    CIFAR Mixer. With the kernel already on that grid, the bias is computed from the
    same rounded kernel and the quantizer's rounding is exact.
    """
    kernel = model.get_layer("stem").proj.kernel
    original = np.asarray(kernel.numpy())
    scale = np.abs(original).max(axis=(0, 1, 2), keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    kernel.assign(np.clip(np.round(original / scale), -127, 127) * scale)
    try:
        yield
    finally:
        kernel.assign(original)


def write_mobile_saved_model(model, path, stem_int8_grid=False):
    """The SavedModel that is converted: ``serving_default(images (1, H, W, 3)) -> probabilities``
    (``stem_int8_grid``: for modes that quantize the stem's weights, :func:`stem_on_int8_grid`)."""
    import keras
    import tensorflow as tf

    height, width = model.config.image_size
    served = signatures.probability_model(model)
    archive = keras.export.ExportArchive()
    archive.track(served)
    grid = stem_on_int8_grid(model) if stem_int8_grid else contextlib.nullcontext()
    with integer_friendly_layer_norm(), token_mixing_as_dense(), grid:
        archive.add_endpoint(
            signatures.SERVING_DEFAULT,
            lambda images: {"probabilities": served(images, training=False)},
            input_signature=[tf.TensorSpec((1, height, width, 3), tf.float32,
                                           name=signatures.IMAGES_INPUT)])
        archive.write_out(path, verbose=False)
    return path


def converter_for(saved_model_dir, mode, representative_images=None):
    """A ``TFLiteConverter`` set up for ``mode`` (``mixed``: as ``int8`` with float input and ops)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[signatures.SERVING_DEFAULT])
    if mode == "float32":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode in CALIBRATED_MODES:
        converter.representative_dataset = lambda: ([image[None]] for image in representative_images)
    if mode == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8  # raw pixels, as a camera gives them
    if mode == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return converter


# Checked in this order: the converter fuses a LayerNorm's scale and shift into the
# channel-mixing Dense that follows, and names that op after both.
LAYER_KINDS = ("token_mixing", "channel_mixing", "stem", "head", "norm")


def _layer_kind(tensor, op=None):
    """The Mixer part an op output tensor belongs to: one of ``LAYER_KINDS`` (the final softmax
    is the head's), ``add`` (a residual add) or None."""
    if op == "SOFTMAX":
        return "head"
    for kind in LAYER_KINDS:
        if kind in tensor:
            if kind == "channel_mixing" and re.search(r"mixer_block_0(_\d+)?/", tensor):
                return "channel_mixing_0"  # the first block's
            return kind
    return "add" if tensor.split(";")[0].rsplit("/", 1)[-1].startswith("add") else None


def mixed_float_tensors(debugger_layers, kinds=MIXED_FLOAT_LAYERS):
    """The debugger's layers of the given kinds (worst first): what `mixed` keeps float
    (``channel_mixing`` includes ``channel_mixing_0``, the first block's)."""
    kinds = set(kinds) | ({"channel_mixing_0"} if "channel_mixing" in kinds else set())
    return [layer["tensor"] for layer in debugger_layers
            if _layer_kind(layer["tensor"], layer["op"]) in kinds]


def convert(saved_model_dir, mode, representative_images=None, mixed_float_layers=MIXED_FLOAT_LAYERS):
    """``(tflite bytes, report)``; the report holds the debugger's layers (int8, mixed)."""
    report = dict(mode=mode)
    if mode in ("int8", "mixed"):
        # Calibrated once: the debugger's int8 model (float where an op has no int8
        # kernel) ranks the layers; `mixed` is that model with the worst ones kept float.
        debugger = layer_report.quiet_debugger(
            converter_for(saved_model_dir, "mixed", representative_images),
            lambda: ([image[None]] for image in representative_images))
        report["debugger"] = layer_report.debugger_layers(debugger)
        if mode == "mixed":
            report["float_layers"] = mixed_float_tensors(report["debugger"], mixed_float_layers)
            layer_report.deny(debugger, report["float_layers"])
            with litert.tf_lite_interpreter_inside():
                return debugger.get_nondebug_quantized_model(), report
    with litert.tf_lite_interpreter_inside():
        return converter_for(saved_model_dir, mode, representative_images).convert(), report


def write_tflite(model, export_dir, name, modes=TFLITE_MODES, representative_images=None,
                 eval_images=None, num_threads=1, labels=None, mixed_float_layers=MIXED_FLOAT_LAYERS,
                 max_calibration_images=256, max_eval_images=1000, threads=(1, 2)):
    """The conversion itself (TensorFlow backend); returns one row per mode."""
    height, width = model.config.image_size
    representative_images, _, _ = _images_for(model, representative_images, max_calibration_images)
    eval_images, eval_labels, class_names = _images_for(model, eval_images, max_eval_images, seed=1)
    if eval_images is None:
        eval_images = (representative_images[:16] if representative_images is not None else
                       np.random.default_rng(0).integers(0, 256, (16, height, width, 3)).astype("float32"))
    if labels is None and class_names is not None and len(class_names) == model.config.num_classes:
        labels = class_names
    expected = signatures.keras_probabilities(model, eval_images)
    os.makedirs(export_dir, exist_ok=True)
    labels_path = None
    if labels is not None:
        if len(labels) != model.config.num_classes:
            raise ValueError(f"Got {len(labels)} labels for {model.config.num_classes} classes.")
        labels_path = os.path.join(export_dir, name + LABELS_SUFFIX)
        write_text(labels_path, "".join(label + "\n" for label in labels))
    rows = []
    with tempfile.TemporaryDirectory(prefix="keras_mixer_tflite_") as work:
        saved_model_dir = write_mobile_saved_model(model, os.path.join(work, "saved_model"))
        grid_dir = None
        float_model = None
        for mode in modes:
            source = saved_model_dir
            if mode in QUANTIZED_MODES and not (mode == "mixed" and "stem" in mixed_float_layers):
                grid_dir = grid_dir or write_mobile_saved_model(
                    model, os.path.join(work, "saved_model_grid"), stem_int8_grid=True)
                source = grid_dir
            content, report = convert(source, mode, representative_images, mixed_float_layers)
            if mode == "float32":
                float_model = content
            final = os.path.join(export_dir, f"{name}.{mode}.tflite")
            row = check(content, mode, eval_images, expected, eval_labels, num_threads, threads)
            row.update(path=final, labels=labels_path and os.path.basename(labels_path))
            with atomic_output(final) as tmp:
                with open(tmp, "wb") as f:
                    f.write(content)
            if mode in QUANTIZED_MODES:
                if float_model is None:
                    float_model = convert(saved_model_dir, "float32")[0]
                report.update(quantized_layers=layer_report.quantized_ops(content),
                              accumulated=layer_report.accumulated_layers(
                                  float_model, content, eval_images[:REPORT_IMAGES]))
                row["report"], _ = layer_report.write_report(final, report)
                if "float_layers" in report:
                    row["float_layers"] = report["float_layers"]
            # Mobile code and `keras-mixer evaluate` read how images must be prepared from here.
            write_text(final + INFO_SUFFIX, json.dumps(dict(
                row, crop_fraction=model.config.crop_fraction, image_size=[height, width],
                num_classes=model.config.num_classes, signature=litert.signature(content),
                input=f"{signatures.IMAGES_INPUT}: (1, H, W, 3) RGB pixels 0-255, "
                + ("uint8" if mode == "int8" else "float32"),
                output="probabilities (1, classes) float32"), indent=2) + "\n")
            rows.append(row)
            print(f"TFLite {mode:>12}: {row['size_bytes'] / 1e6:8.3f} MB  max|err| {row['max_abs_error']:.2e}  "
                  f"top-1 agreement {row['top1_agreement']:.3f}  {row['latency_ms']:.3f} ms  -> {final}")
    return rows


def check(content, mode, images, expected, labels=None, num_threads=1, threads=(1, 2)):
    """The file's numbers against Keras' ``expected`` probabilities on ``images``."""
    got, latency = litert.run_tflite(content, images, num_threads)
    if not np.all(np.isfinite(got)):
        raise RuntimeError(f"TFLite {mode} model produced non-finite outputs; not publishing it.")
    error = np.abs(got - expected)
    row = dict(mode=mode, size_bytes=len(content), max_abs_error=float(error.max()),
               mean_abs_error=float(error.mean()),
               top1_agreement=float(np.mean(got.argmax(-1) == expected.argmax(-1))),
               top1_accuracy=None if labels is None else float(np.mean(got.argmax(-1) == labels)),
               keras_top1_accuracy=None if labels is None else float(np.mean(expected.argmax(-1) == labels)),
               latency_ms=latency, num_eval_images=len(images))
    for count in threads:
        row[f"latency_ms_{count}t"] = litert.latency_ms(content, images[0], count)
    return row


def markdown_table(rows):
    """The export's rows as the README's markdown table."""
    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    def ms(value):
        return "n/a" if value is None else f"{value:.3f} ms"

    lines = ["| mode | size | top-1 agreement with Keras | top-1 accuracy (Keras) | max abs error "
             "| mean abs error | latency 1 thread | latency 2 threads |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['mode']} | {row['size_bytes'] / 1e3:.0f} kB | {pct(row['top1_agreement'])} "
            f"| {pct(row['top1_accuracy'])} ({pct(row['keras_top1_accuracy'])}) "
            f"| {row['max_abs_error']:.2g} | {row['mean_abs_error']:.2g} "
            f"| {ms(row.get('latency_ms_1t'))} | {ms(row.get('latency_ms_2t'))} |")
    images = rows[0]["num_eval_images"] if rows else 0
    return "\n".join(lines) + (f"\n\n{images} held-out images; latency: median single-image "
                               "`invoke` in LiteRT (`ai_edge_litert`).\n")
