"""TFLite (LiteRT) files ``<export_dir>/<name>.<mode>.tflite``, each checked against Keras in LiteRT.

The probability model (:func:`signatures.probability_model`) is written as a
SavedModel with one signature, ``serving_default``: input ``images``
``(1, H, W, 3)`` 0-255 pixels (uint8 for ``int8``, else float32), output
``probabilities``; ``TFLiteConverter.from_saved_model`` converts it. The graph is the
plain model's (no fast path applies to a direct call): its MLPs are ``Dense`` layers
(``FULLY_CONNECTED``, per-channel int8 weights) and its LayerNorm is the paper's formula
(:class:`keras_mixer.layers.LayerNorm`), in ops that every integer kernel set supports.
Calibration and check
images go through the image policy (:mod:`keras_mixer.images`). Beside each file:
``.json`` (crop, size, the check), ``.layers.json``/``.png`` for quantized modes
(:mod:`.layer_report`), and ``NAME.labels.txt`` when labels are known.
"""

import contextlib
import json
import os
import tempfile

import numpy as np

from keras_mixer import data as datasets
from keras_mixer import images as image_policy
from keras_mixer import startup
from keras_mixer.deploy import layer_report, litert, runner, signatures
from keras_mixer.deploy.saved_model import labels_beside, read_labels, run_training_data
from keras_mixer.files import atomic_output, check_name, disk_full_errors, write_text

TFLITE_MODES = ("float32", "float16", "dynamic_int8", "int8", "int16x8", "mixed")
CALIBRATED_MODES = ("int8", "int16x8", "mixed")  # need representative images
QUANTIZED_MODES = ("dynamic_int8",) + CALIBRATED_MODES  # get a per-layer report
INFO_SUFFIX = ".json"  # beside each file: NAME.MODE.tflite.json (crop, image size, the check's numbers)
LABELS_SUFFIX = ".labels.txt"  # NAME.labels.txt, one class name per line, shared by every mode
# `mixed`: int8 except the layers that MIXED_TARGET top-1 agreement with the float model needs
# float, measured on images held out of the calibration images (:func:`convert_mixed`), with
# MIXED_MARGIN above the target for their sampling noise; at most MIXED_MAX_FLOAT_LAYERS.
MIXED_TARGET = 0.995
MIXED_MARGIN = 0.001
MIXED_MAX_FLOAT_LAYERS = 16
MIXED_SELECTION_IMAGES = 2000  # held out of calibration (an array keeps >= 256 or half to calibrate)
REPORT_IMAGES = 32  # eval images for the accumulated per-layer errors


def read_info(path):
    """The sidecar ``PATH.json`` that :func:`export_tflite` writes beside a ``.tflite`` file, or ``None``.

    A sidecar that is not a JSON object, or whose ``crop_fraction`` is not a
    number in (0, 1], raises a ``ValueError`` naming the file: the images would
    otherwise be prepared wrongly.

    Example:
        >>> read_info("saved_models/mixer.float32.tflite")["crop_fraction"]
        0.875
    """
    info_path = os.fspath(path) + INFO_SUFFIX
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"Cannot read {info_path}: it is not valid JSON ({error}). Export the "
                         "model again to rewrite it.") from None
    if not isinstance(info, dict):
        raise ValueError(f"Cannot read {info_path}: expected a JSON object, got "
                         f"{type(info).__name__}.")
    if info.get("crop_fraction") is not None:
        image_policy.check_crop_fraction(info["crop_fraction"], info_path)
    return info


def export_tflite(model, export_dir="saved_models", name="mixer", modes=TFLITE_MODES,
                  representative_images=None, eval_images=None, num_threads=1, labels=None,
                  max_calibration_images=256, max_eval_images=1000, threads=(1, 2),
                  mixed_target=MIXED_TARGET, mixed_max_float_layers=MIXED_MAX_FLOAT_LAYERS,
                  mixed_selection_images=MIXED_SELECTION_IMAGES, mixed_margin=MIXED_MARGIN,
                  training_data=None):
    """Convert a Mixer to TFLite files ``<export_dir>/<name>.<mode>.tflite`` and check them in LiteRT.

    Args:
        model: a ``.keras`` file (or an ``MlpMixer`` under TensorFlow).
        export_dir: output directory.
        name: file-name prefix: one path component of letters, digits, ``_``,
            ``-`` and ``.`` (:func:`keras_mixer.files.check_name`).
        modes: any of ``"float32"``, ``"float16"``, ``"dynamic_int8"`` (int8
            weights, float activations), ``"int8"`` (full integer: int8 weights
            and activations, uint8 input, float32 output), ``"int16x8"`` (int16
            activations, int8 weights, float32 input and output) and ``"mixed"``
            (int8, except the layers that keep ``mixed_target`` top-1 agreement
            with the float model, plus ``mixed_margin``, on
            ``mixed_selection_images`` held out of the representative images;
            each layer's harm measured alone; at most ``mixed_max_float_layers``
            float: :func:`convert_mixed`).
        representative_images: calibration images for the ``int8``, ``int16x8``
            and ``mixed`` modes (required for them): training images, as a folder
            of image files (``max_calibration_images`` drawn at random), a
            ``.npy`` file or an ``(n, H, W, 3)`` 0-255 array.
        eval_images: held-out images on which every file is compared with Keras
            (folder, ``.npy`` or array; default: the first 16 representative
            images, else random pixels). A labelled folder (``class/*.jpg``, or
            its ``test/`` split) also gives top-1 accuracy.
        num_threads: interpreter threads for ``latency_ms``.
        max_calibration_images: at most this many images are drawn from a
            folder of ``representative_images`` (seeded, at random).
        max_eval_images: at most this many images are drawn from an
            ``eval_images`` folder.
        labels: class names (list or text file) written to ``NAME.labels.txt``
            (default: the run directory's ``labels.txt`` when ``model`` is a
            ``.keras`` file in one, else a labelled ``eval_images`` folder's class names).
        training_data: what the model trained on, recorded in each file's
            ``.json`` for ``keras-mixer evaluate``'s overlap warning (default:
            the run directory's record).
        threads: thread counts of the ``latency_ms_<n>t`` figures.
        mixed_target: ``mixed``: the top-1 agreement with the float model that the float
            layers must keep, on images held out of the calibration images.
        mixed_margin: ``mixed``: agreement kept above ``mixed_target``, for the held-out
            images' sampling noise.
        mixed_max_float_layers: ``mixed``: at most this many layers stay float.
        mixed_selection_images: ``mixed``: training images held out of calibration to
            choose the float layers on.

    Returns:
        One dict per mode: ``mode``, ``path``, ``size_bytes``, ``max_abs_error``
        and ``mean_abs_error`` (probabilities), ``top1_agreement``,
        ``top1_accuracy`` (labelled eval images), ``latency_ms`` and
        ``latency_ms_<n>t`` (median single-image ``invoke``), ``integer_ops`` of
        ``ops`` and ``integer_macs`` of ``macs`` (:func:`layer_report.integer_coverage`),
        ``float_layers`` (``mixed``) and ``report`` (quantized modes: the per-layer JSON).

    Raises:
        ValueError: an unknown mode or name, settings out of range, or a
            calibrated mode without ``representative_images``.
        TypeError: an ``MlpMixer`` object under a backend other than TensorFlow
            (save it and pass the ``.keras`` file).

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=3)
        >>> folder = tempfile.mkdtemp()
        >>> model.save(os.path.join(folder, "tiny.keras"))
        >>> results = keras_mixer.export_tflite(os.path.join(folder, "tiny.keras"), folder,
        ...                                     name="tiny", modes=("float32",))
        >>> [(r["mode"], os.path.basename(r["path"]), r["top1_agreement"]) for r in results]
        [('float32', 'tiny.float32.tflite', 1.0)]
    """
    check_name(name)
    unknown = set(modes) - set(TFLITE_MODES)
    if unknown:
        raise ValueError(f"Unknown TFLite modes {sorted(unknown)}; known: {TFLITE_MODES}.")
    calibrated = [mode for mode in modes if mode in CALIBRATED_MODES]
    if not 0 < mixed_target <= 1:
        raise ValueError(f"mixed_target (--mixed-target) is a top-1 agreement in (0, 1], got {mixed_target}.")
    if not 0 <= mixed_margin < 1:
        raise ValueError(f"mixed_margin (--mixed-margin) is a top-1 agreement in [0, 1), got {mixed_margin}.")
    if calibrated and representative_images is None:
        raise ValueError(
            f"TFLite mode(s) {', '.join(calibrated)} need representative_images for calibration: "
            "pass a folder of training images (CLI: --representative-images DIR) or a .npy "
            "(n, H, W, 3) 0-255 array.")
    for images in (representative_images, eval_images):
        if isinstance(images, (str, os.PathLike)):
            check_image_source(images)
    if isinstance(model, (str, os.PathLike)):  # a run's model: its labels and data are recorded
        labels = labels_beside(model) if labels is None else labels
        training_data = run_training_data(model) if training_data is None else training_data
    with disk_full_errors("the TFLite files", "each file is written atomically, so those written "
                                              "are whole: free some space and export again"):
        return runner.on_tensorflow(
            "keras_mixer.deploy.tflite:write_tflite", model, export_dir=export_dir, name=name,
            modes=list(modes), representative_images=_as_input(representative_images),
            eval_images=_as_input(eval_images), num_threads=num_threads,
            labels=read_labels(labels), max_calibration_images=max_calibration_images,
            max_eval_images=max_eval_images, threads=list(threads), mixed_target=mixed_target,
            mixed_max_float_layers=mixed_max_float_layers,
            mixed_selection_images=mixed_selection_images, mixed_margin=mixed_margin,
            training_data=training_data)


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


def _images_for(model, images, max_images=256, seed=0, split="test"):
    """``(images, labels or None, class names or None)`` at the model's size (from a folder with
    split folders, its ``split`` one)."""
    if images is None:
        return None, None, None
    config = model.config
    labels = class_names = None
    if isinstance(images, str):
        folder = images
        if os.path.isdir(images) and not images.endswith(".npy"):
            with contextlib.suppress(ValueError, OSError):
                folder, _ = datasets.split_root(images, split)
                paths, labels, class_names = datasets.scan_folder(folder)
        if labels is not None:
            pick = np.sort(np.random.default_rng(seed).permutation(len(paths))[:max_images])
            images = image_policy.load_files([paths[i] for i in pick], config.image_size,
                                             config.crop_fraction, config.interpolation)
            labels = np.asarray(labels)[pick]
        else:
            images = image_policy.load_images(images, config.image_size, config.crop_fraction,
                                              max_images=max_images, seed=seed,
                                              interpolation=config.interpolation)
    images = np.asarray(images, dtype="float32")
    expected = tuple(config.image_size) + (3,)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"Expected images of shape (n, {expected[0]}, {expected[1]}, 3) for this "
                         f"model, got {images.shape}.")
    return images, labels, class_names


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
    with grid:
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


def convert(saved_model_dir, mode, representative_images=None):
    """``(tflite bytes, report)``; the report holds the debugger's layers (int8)."""
    report = dict(mode=mode)
    if mode == "int8":
        # The debugger's int8 model (float where an op has no int8 kernel) ranks the layers.
        report["debugger"] = layer_report.debugger_layers(layer_report.quiet_debugger(
            converter_for(saved_model_dir, "mixed", representative_images),
            lambda: ([image[None]] for image in representative_images)))
    with litert.tf_lite_interpreter_inside():
        return converter_for(saved_model_dir, mode, representative_images).convert(), report


def convert_mixed(source, calibration, selection, expected, target=MIXED_TARGET,
                  max_float_layers=MIXED_MAX_FLOAT_LAYERS, margin=MIXED_MARGIN):
    """``(tflite bytes, report)`` of ``mixed``: int8 except the layers that ``target`` needs float.

    Each layer's harm is measured: the file with only that layer int8 against ``expected`` (the
    float model's probabilities) on ``selection`` (images held out of calibration): its top-1
    agreement, then its mean absolute probability error; the debugger's SNR
    (:func:`layer_report.rank_layers`, all-int8 model calibrated on ``calibration``) breaks ties
    and is reported. Starting all float, the layers with multiply-accumulates (least harmful
    first), then the others, go to int8 one at a time, each kept int8 if top-1 agreement on
    ``selection`` stays at least ``target + margin``. At most ``max_float_layers`` stay float
    (beyond that the least harmful go int8 anyway). 2 x layers + 1 conversions.
    ``source(stem_int8_grid)`` gives the SavedModel directory (:func:`write_mobile_saved_model`):
    the stem's kernel is on the int8 grid only while the stem is int8.
    """
    debuggers = {}

    def debugger(grid):
        if grid not in debuggers:
            debuggers[grid] = layer_report.quiet_debugger(
                converter_for(source(grid), "mixed", calibration),
                lambda: ([image[None]] for image in calibration))
        return debuggers[grid]

    ops = layer_report.debugger_layers(debugger(True))
    ranked = layer_report.rank_layers(ops)
    tensors = {group["layer"]: group["tensors"] for group in ranked}
    steps = []

    def trial(float_layers, record=True):  # (agreement and error on `selection`, file)
        float_layers = [layer for layer in tensors if layer in float_layers]  # in rank order
        content = layer_report.quantized_without(
            debugger("stem" not in float_layers), [t for layer in float_layers for t in tensors[layer]])
        got, _ = litert.run_tflite(content, selection)
        result = dict(float_layers=float_layers,
                      agreement=float(np.mean(got.argmax(-1) == expected.argmax(-1))),
                      mean_abs_error=float(np.mean(np.abs(got - expected))))
        if record:
            steps.append(result)
        return result, content

    current, content = trial(list(tensors))  # all float
    macs = layer_report.layer_macs(content)
    for group in ranked:  # harm: only this layer int8
        alone, _ = trial([layer for layer in tensors if layer != group["layer"]], record=False)
        group.update(macs=macs.get(group["layer"], 0), alone_int8_agreement=alone["agreement"],
                     alone_int8_mean_abs_error=alone["mean_abs_error"])
    order = sorted(ranked, key=lambda group: (not group["macs"], -group["alone_int8_agreement"],
                                              group["alone_int8_mean_abs_error"], -group["snr_db"]))
    for group in order:
        candidate = trial([layer for layer in current["float_layers"] if layer != group["layer"]])
        if candidate[0]["agreement"] >= target + margin:
            current, content = candidate
    if len(current["float_layers"]) > max_float_layers:
        keep = [group["layer"] for group in order if group["layer"] in current["float_layers"]]
        current, content = trial(keep[len(keep) - max_float_layers:])
    report = dict(mode="mixed", debugger=ops, layers=ranked, float_layers=current["float_layers"],
                  selection=dict(target=target, margin=margin, max_float_layers=max_float_layers,
                                 images=len(selection), agreement=current["agreement"],
                                 target_met=current["agreement"] >= target, steps=steps))
    return content, report


def write_tflite(model, export_dir, name, **options):
    """The conversion itself (TensorFlow backend; options as :func:`export_tflite`'s); returns
    one row per mode. The converter's and the interpreter's C++ lines are muted unless the
    command line has ``--verbose``."""
    check_name(name)
    with startup.native_logs_muted():
        return _write_tflite(model, export_dir, name, **options)


def _write_tflite(model, export_dir, name, modes=TFLITE_MODES, representative_images=None,
                  eval_images=None, num_threads=1, labels=None, max_calibration_images=256,
                  max_eval_images=1000, threads=(1, 2), mixed_target=MIXED_TARGET,
                  mixed_max_float_layers=MIXED_MAX_FLOAT_LAYERS,
                  mixed_selection_images=MIXED_SELECTION_IMAGES, mixed_margin=MIXED_MARGIN,
                  training_data=None):
    height, width = model.config.image_size
    held_out = mixed_selection_images if "mixed" in modes else 0
    representative_images, _, _ = _images_for(model, representative_images,
                                              max_calibration_images + held_out, split="train")
    calibration = selection = representative_images
    if representative_images is not None and held_out:
        # Shuffled (a labelled folder's images come class by class), then split.
        shuffled = representative_images[np.random.default_rng(2).permutation(len(representative_images))]
        held_out = min(held_out, max(len(shuffled) - max_calibration_images, len(shuffled) // 2))
        calibration, selection = shuffled[:len(shuffled) - held_out], shuffled[len(shuffled) - held_out:]
    eval_images, eval_labels, class_names = _images_for(model, eval_images, max_eval_images, seed=1)
    if eval_images is None:
        eval_images = (calibration[:16] if calibration is not None else
                       np.random.default_rng(0).integers(0, 256, (16, height, width, 3)).astype("float32"))
    if labels is None and class_names is not None and len(class_names) == model.config.num_classes:
        labels = class_names
    expected = signatures.keras_probabilities(model, eval_images)
    signatures.check_finite(expected, f"Model {model.name!r}")
    os.makedirs(export_dir, exist_ok=True)
    labels_path = None
    if labels is not None:
        if len(labels) != model.config.num_classes:
            raise ValueError(f"Got {len(labels)} labels for {model.config.num_classes} classes.")
        labels_path = os.path.join(export_dir, name + LABELS_SUFFIX)
        write_text(labels_path, "".join(label + "\n" for label in labels))
    rows = []
    with tempfile.TemporaryDirectory(prefix="keras_mixer_tflite_") as work:
        saved_models = {}

        def source(stem_int8_grid):
            if stem_int8_grid not in saved_models:
                saved_models[stem_int8_grid] = write_mobile_saved_model(
                    model, os.path.join(work, f"saved_model_{int(stem_int8_grid)}"), stem_int8_grid)
            return saved_models[stem_int8_grid]

        float_model = None
        for mode in modes:
            if mode == "mixed":
                content, report = convert_mixed(
                    source, calibration, selection, signatures.keras_probabilities(model, selection),
                    mixed_target, mixed_max_float_layers, mixed_margin)
            else:
                content, report = convert(source(mode in QUANTIZED_MODES), mode, calibration)
            if mode == "float32":
                float_model = content
            final = os.path.join(export_dir, f"{name}.{mode}.tflite")
            row = check(content, mode, eval_images, expected, eval_labels, num_threads, threads)
            coverage = layer_report.integer_coverage(content)
            row.update(path=final, labels=labels_path and os.path.basename(labels_path), **coverage)
            if mode in QUANTIZED_MODES:
                if float_model is None:
                    float_model = convert(source(False), "float32")[0]
                report.update(coverage=coverage,
                              quantized_layers=layer_report.quantized_ops(content),
                              accumulated=layer_report.accumulated_layers(
                                  float_model, content, eval_images[:REPORT_IMAGES]))
                row["report"], _ = layer_report.write_report(final, report)
                if "float_layers" in report:
                    row["float_layers"] = report["float_layers"]
                    row["mixed_selection"] = {key: value for key, value in report["selection"].items()
                                              if key != "steps"}
            # Mobile code and `keras-mixer evaluate` read how images must be prepared from here.
            write_text(final + INFO_SUFFIX, json.dumps(dict(
                row, crop_fraction=model.config.crop_fraction,
                interpolation=model.config.interpolation, image_size=[height, width],
                num_classes=model.config.num_classes, signature=litert.signature(content),
                input=f"{signatures.IMAGES_INPUT}: (1, H, W, 3) RGB pixels 0-255, "
                + ("uint8" if mode == "int8" else "float32"),
                output="probabilities (1, classes) float32", training_data=training_data),
                indent=2) + "\n")
            # The model last: a published .tflite always has its .json (and report) beside it.
            with atomic_output(final) as tmp:
                with open(tmp, "wb") as f:
                    f.write(content)
            rows.append(row)
            print(f"TFLite {mode:>12}: {row['size_bytes'] / 1e6:8.3f} MB  max|err| {row['max_abs_error']:.2e}  "
                  f"top-1 agreement {row['top1_agreement']:.3f}  {row['latency_ms']:.3f} ms  "
                  f"integer ops {row['integer_ops']}/{row['ops']}  -> {final}")
            if mode == "mixed" and not report["selection"]["target_met"]:
                print(f"TFLite mixed: {report['selection']['agreement']:.3f} agreement on held-out "
                      f"calibration images, below the target {mixed_target} with at most "
                      f"{mixed_max_float_layers} float layers.")
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
             "| mean abs error | latency 1 thread | latency 2 threads | integer ops (MACs) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        macs = row["integer_macs"] / row["macs"] if row.get("macs") else None
        lines.append(
            f"| {row['mode']} | {row['size_bytes'] / 1e3:.0f} kB | {pct(row['top1_agreement'])} "
            f"| {pct(row['top1_accuracy'])} ({pct(row['keras_top1_accuracy'])}) "
            f"| {row['max_abs_error']:.2g} | {row['mean_abs_error']:.2g} "
            f"| {ms(row.get('latency_ms_1t'))} | {ms(row.get('latency_ms_2t'))} "
            f"| {row['integer_ops']} of {row['ops']} ({pct(macs).replace('n/a', '-')}) |")
    images = rows[0]["num_eval_images"] if rows else 0
    return "\n".join(lines) + (f"\n\n{images} held-out images; latency: median single-image "
                               "`invoke` in LiteRT (`ai_edge_litert`); integer ops: ops with "
                               "integer outputs, MACs: share of multiply-accumulates on integer "
                               "activations.\n")
