"""Export Mixer models for deployment: TF Serving SavedModels, TFLite and ONNX files.

Works from any Keras backend: the export itself runs under the TensorFlow
backend, in a subprocess (``python -m keras_mixer.export``) when the caller
runs JAX or PyTorch. Everything is written atomically (temporary name next to
the target, then ``os.rename``), so TF Serving's file-system poller never sees
a half-written version, and every artifact is checked numerically against the
Keras model before it is published.

Signatures of the SavedModel (tag ``serve``):

* ``serving_default``: ``images`` float32 ``(batch, H, W, 3)`` pixels in
  0-255, any ``H, W`` (resized in the graph to the model size);
* ``serving_bytes``: ``image_bytes`` string ``(batch,)`` of encoded JPEG/PNG/
  GIF/BMP images, decoded and resized in the graph.

Both return ``probabilities`` ``(batch, classes)``, ``top_k_classes`` (int32)
and ``top_k_scores`` ``(batch, k)``, plus ``top_k_labels`` (string) when labels
are known; the labels ship as the asset ``labels.txt``.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from keras_mixer.files import atomic_output

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
TFLITE_MODES = ("float32", "float16", "dynamic_int8", "int8")
REPORT_FILE = os.path.join("assets.extra", "export_report.json")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- public API


def export_saved_model(model_path, export_dir="saved_models", name="mixer", version=None,
                       labels=None, top_k=5, tolerance=1e-4):
    """Export a Mixer as a TF Serving SavedModel ``<export_dir>/<name>/<version>/``.

    Args:
        model_path: a ``.keras`` file saved on any backend (or, under the
            TensorFlow backend, a ``keras.Model``).
        export_dir: base directory of the served models.
        name: model name (TF Serving's ``model_name``).
        version: integer version; default the next free one.
        labels: class names (list of strings, or a text file with one per
            line); adds ``top_k_labels`` to the outputs.
        top_k: number of top classes returned.
        tolerance: largest accepted difference between the reloaded SavedModel
            and the Keras model on sample inputs.

    Returns:
        The path of the new version directory. The check's numbers are in its
        ``assets.extra/export_report.json`` (ignored by TF Serving).
    """
    if version is not None and os.path.exists(os.path.join(export_dir, name, str(int(version)))):
        raise FileExistsError(f"Version directory already exists: {os.path.join(export_dir, name, str(version))}")
    options = dict(export_dir=export_dir, name=name, version=version, labels=labels,
                   top_k=top_k, tolerance=tolerance)
    return _run_under_tensorflow("saved-model", model_path, options)["path"]


def export_tflite(model_path, export_dir="saved_models", name="mixer", modes=TFLITE_MODES,
                  representative_images=None, eval_images=None, num_threads=1):
    """Convert a Mixer to TFLite files ``<export_dir>/<name>.<mode>.tflite`` and check them.

    Args:
        model_path: a ``.keras`` file (or a ``keras.Model`` under TensorFlow).
        export_dir: output directory.
        name: file-name prefix.
        modes: any of ``"float32"``, ``"float16"``, ``"dynamic_int8"``
            (int8 weights, float activations) and ``"int8"`` (full integer:
            int8 weights and activations, uint8 input, float32 output).
        representative_images: ``(n, H, W, 3)`` 0-255 images for calibrating
            ``"int8"`` (needed for that mode), e.g. training images; or a
            ``.npy`` file / image folder (see :func:`load_images`).
        eval_images: held-out ``(n, H, W, 3)`` 0-255 images (or file / folder) on which every
            file is compared with the Keras model (default: the first 16
            representative images, else random pixels).
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
    options = dict(export_dir=export_dir, name=name, modes=list(modes),
                   representative_images=representative_images, eval_images=eval_images,
                   num_threads=num_threads)
    return _run_under_tensorflow("tflite", model_path, options)["tflite"]


def export_onnx(model_path, export_dir="saved_models", name="mixer", tolerance=1e-4):
    """Export a Mixer to ``<export_dir>/<name>.onnx`` (Keras' exporter via ``tf2onnx``).

    The graph takes ``images`` ``(batch, H, W, 3)`` float32 at the model size and
    returns the model's outputs. Checked with ``onnxruntime`` against Keras when
    it is installed. Needs the ``onnx`` extra (``onnx``, ``tf2onnx``; ``onnxruntime``).

    Returns:
        ``{"path", "size_bytes", "max_abs_diff"}`` (``max_abs_diff`` is ``None``
        without onnxruntime).
    """
    options = dict(export_dir=export_dir, name=name, tolerance=tolerance)
    return _run_under_tensorflow("onnx", model_path, options)["onnx"]


def benchmark(config, image_size, batch_size, log=print, modes=("float32", "float16", "dynamic_int8")):
    """Measure exported artifacts of a random-weight Mixer (the ``--exports`` part of
    ``scripts/benchmark.py``): SavedModel ``serving_default`` img/s at ``batch_size``
    and single-thread TFLite latency per mode (int8 needs calibration data: left out).

    Returns a list of JSON-serializable dicts, one per artifact.
    """
    import dataclasses

    import tensorflow as tf

    from keras_mixer.models import MlpMixer

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as work:
        model_path = os.path.join(work, "model.keras")
        MlpMixer(**dataclasses.asdict(config), input_shape=(image_size, image_size, 3)).save(model_path)
        log("exports: SavedModel")
        serve = tf.saved_model.load(export_saved_model(model_path, export_dir=work, name="bench"))
        serve = serve.signatures[SERVING_DEFAULT]
        serve(images=tf.constant(images))  # trace and warm up
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            serve(images=tf.constant(images))
            seconds.append(time.perf_counter() - start)
        rows = [dict(artifact="saved_model", batch=batch_size,
                     images_per_second=batch_size / min(seconds))]
        log(f"exports: SavedModel {rows[0]['images_per_second']:.3g} img/s at batch {batch_size}")
        for row in export_tflite(model_path, export_dir=work, name="bench", modes=modes,
                                 eval_images=images):
            rows.append(dict(artifact=f"tflite_{row['mode']}", latency_ms=row["latency_ms"],
                             size_bytes=row["size_bytes"], max_abs_error=row["max_abs_error"]))
    return rows


def load_model(model_path=None, variant=None, weights=None, num_classes=1000,
               image_size=224, include_preprocessing=True):
    """Load a ``.keras`` file, or build a paper ``variant`` and load ``weights`` into it."""
    import keras

    import keras_mixer

    if (model_path is None) == (variant is None):
        raise ValueError("Give either model_path (a .keras file) or variant (+ weights).")
    if model_path is not None:
        if not str(model_path).endswith(".keras"):
            raise ValueError(f"Expected a '.keras' model file, got {model_path!r}.")
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"Model file not found: {model_path}")
        return keras.saving.load_model(model_path, safe_mode=True)
    return keras_mixer.get_model(variant, weights=weights, num_classes=num_classes,
                                 input_shape=(image_size, image_size, 3),
                                 include_preprocessing=include_preprocessing)


def read_labels(labels):
    """Class names from a list or a text file (one per line); ``None`` stays ``None``."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        with open(labels, encoding="utf-8") as f:
            labels = [line.rstrip("\r\n") for line in f if line.strip()]
    labels = [str(label) for label in labels]
    if any("\n" in label or "\r" in label for label in labels):
        raise ValueError("Labels must not contain line breaks.")
    return labels


def next_version(base_dir):
    """The next free integer version under ``base_dir`` (1 when empty)."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(entry) for entry in os.listdir(base_dir) if entry.isdigit()]
    return max(versions, default=0) + 1


# ----------------------------------------------------------------------------- subprocess


def _run_under_tensorflow(command, model, options):
    """Run ``command`` here if the backend is TensorFlow, else in a TensorFlow subprocess."""
    import keras

    if keras.backend.backend() == "tensorflow":
        model = model if isinstance(model, keras.Model) else load_model(os.fspath(model))
        return _COMMANDS[command](model, **options)
    if isinstance(model, keras.Model):
        raise TypeError(
            f"Under the {keras.backend.backend()} backend pass a saved '.keras' file, "
            "not a Model: the export runs under TensorFlow in a subprocess."
        )
    with tempfile.TemporaryDirectory(prefix="keras_mixer_export_") as work:
        argv = [command, os.path.abspath(model), "--result-json", os.path.join(work, "r.json")]
        for key, value in options.items():
            if value is None:
                continue
            if key.endswith("_images") and isinstance(value, (str, os.PathLike)):
                value = os.path.abspath(value)
            elif key.endswith("_images"):
                value = os.path.join(work, f"{key}.npy")
                np.save(value, np.asarray(options[key], dtype="float32"))
            elif key == "labels" and not isinstance(value, (str, os.PathLike)):
                value = os.path.join(work, "labels.txt")
                _write_lines(value, read_labels(options["labels"]))
            elif key == "export_dir":
                value = os.path.abspath(value)
            argv.append("--" + key.replace("_", "-"))
            argv.extend(map(str, value) if isinstance(value, list) else [str(value)])
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, "-m", "keras_mixer.export", *argv], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"Export subprocess (KERAS_BACKEND=tensorflow) failed with exit code "
                f"{proc.returncode}:\n{proc.stdout[-4000:]}"
            )
        with open(os.path.join(work, "r.json")) as f:
            return json.load(f)


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


# ----------------------------------------------------------------------------- SavedModel (TF backend)


def _model_facts(model):
    """Input size, whether the model rescales 0-255 itself, whether it ends in softmax."""
    height, width, channels = model.input_shape[1:]
    if channels != 3 or height is None or width is None:
        raise ValueError(f"Expected a model on fixed-size RGB images, got input {model.input_shape}.")
    names = {layer.name for layer in model.layers}
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    num_classes = model.output_shape[-1]
    return dict(size=(height, width), rescales="preprocessing" in names,
                softmax=activation == "softmax", num_classes=num_classes)


def _serving_functions(model, labels, top_k):
    """The two signature functions and the resources they use (TensorFlow)."""
    import tensorflow as tf

    facts = _model_facts(model)
    height, width = facts["size"]
    k = min(top_k, facts["num_classes"])
    table = None
    if labels is not None:
        if len(labels) != facts["num_classes"]:
            raise ValueError(f"Got {len(labels)} labels for {facts['num_classes']} classes.")
        labels_file = os.path.join(tempfile.mkdtemp(prefix="keras_mixer_labels_"), "labels.txt")
        _write_lines(labels_file, labels)
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                labels_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE),
            default_value="")

    def classify(images):
        tf.debugging.assert_positive(tf.shape(images)[0], message="empty batch: send at least one image")
        images = tf.cast(images, tf.float32)
        same_size = tf.reduce_all(tf.equal(tf.shape(images)[1:3], [height, width]))
        images = tf.cond(same_size, lambda: images,
                         lambda: tf.image.resize(images, (height, width), antialias=True))
        images = tf.ensure_shape(images, (None, height, width, 3))
        if not facts["rescales"]:
            images = images / 127.5 - 1.0
        probabilities = tf.cast(model(images, training=False), tf.float32)
        if not facts["softmax"]:
            probabilities = tf.nn.softmax(probabilities)
        scores, classes = tf.math.top_k(probabilities, k=k)
        outputs = {"probabilities": probabilities, "top_k_classes": classes, "top_k_scores": scores}
        if table is not None:
            outputs["top_k_labels"] = table.lookup(tf.cast(classes, tf.int64))
        return outputs

    def decode(image_bytes):
        tf.debugging.assert_positive(tf.size(image_bytes), message="empty batch: send at least one image")

        def one(data):
            image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
            return tf.image.resize(tf.cast(image, tf.float32), (height, width), antialias=True)

        return classify(tf.map_fn(one, image_bytes,
                                  fn_output_signature=tf.TensorSpec((height, width, 3), tf.float32)))

    return classify, decode, table


def _export_saved_model_tf(model, export_dir, name, version=None, labels=None, top_k=5,
                           tolerance=1e-4):
    import keras
    import tensorflow as tf

    labels = read_labels(labels)
    base = os.path.join(export_dir, name)
    os.makedirs(base, exist_ok=True)
    version = next_version(base) if version is None else int(version)
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"Version directory already exists: {final}")
    classify, decode, table = _serving_functions(model, labels, top_k)
    # A dot-name is not an integer: TF Serving's poller ignores it until the rename.
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        if table is not None:
            archive.track(table)
        archive.add_endpoint(SERVING_DEFAULT, classify, input_signature=[
            tf.TensorSpec((None, None, None, 3), tf.float32, name="images")])
        archive.add_endpoint(SERVING_BYTES, decode, input_signature=[
            tf.TensorSpec((None,), tf.string, name="image_bytes")])
        archive.write_out(tmp, verbose=False)
        report = _check_saved_model(tmp, model, labels, top_k)
        if report["max_abs_diff"] > tolerance:
            raise RuntimeError(
                f"Exported SavedModel differs from the Keras model by {report['max_abs_diff']:.3g} "
                f"(> tolerance {tolerance}); not publishing it."
            )
        report.update(name=name, version=version, keras_version=keras.__version__,
                      tensorflow_version=tf.__version__, exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the server may run as another user
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"Exported SavedModel {final} (signatures {SERVING_DEFAULT}, {SERVING_BYTES}); "
          f"max |SavedModel - Keras| = {report['max_abs_diff']:.2e}")
    report["path"] = final
    return report


def _check_saved_model(path, model, labels, top_k, num_images=4, seed=0):
    """Reload with plain TensorFlow and compare both signatures with the Keras model."""
    import tensorflow as tf

    height, width = _model_facts(model)["size"]
    images = np.random.default_rng(seed).integers(0, 256, (num_images, height, width, 3)).astype("float32")
    expected = _keras_probabilities(model, images)
    loaded = tf.saved_model.load(path, tags=["serve"])
    from_arrays = loaded.signatures[SERVING_DEFAULT](images=tf.constant(images))
    encoded = tf.stack([tf.io.encode_png(tf.constant(image, tf.uint8)) for image in images])
    from_bytes = loaded.signatures[SERVING_BYTES](image_bytes=encoded)
    diffs = [float(np.max(np.abs(out["probabilities"].numpy() - expected)))
             for out in (from_arrays, from_bytes)]
    k = min(top_k, expected.shape[-1])
    top = np.argsort(-expected, axis=-1)[:, :1]
    if not np.array_equal(from_arrays["top_k_classes"].numpy()[:, :1], top):
        raise RuntimeError("Exported SavedModel's top class differs from the Keras model's.")
    if labels is not None:
        got = from_arrays["top_k_labels"].numpy()[:, 0].astype(str)
        if list(got) != [labels[i] for i in top[:, 0]]:
            raise RuntimeError("Exported SavedModel's top_k_labels do not match the labels.")
    return dict(max_abs_diff=max(diffs), max_abs_diff_images=diffs[0], max_abs_diff_bytes=diffs[1],
                top_k=k, num_classes=int(expected.shape[-1]), labels=labels is not None,
                signatures=sorted(loaded.signatures.keys()))


def _keras_probabilities(model, images):
    """What the serving signatures compute, from the Keras model itself."""
    facts = _model_facts(model)
    inputs = images if facts["rescales"] else images / 127.5 - 1.0
    out = np.asarray(model.predict(inputs, verbose=0), dtype="float64")
    if not facts["softmax"]:
        out = np.exp(out - out.max(-1, keepdims=True))
        out /= out.sum(-1, keepdims=True)
    return out


# ----------------------------------------------------------------------------- TFLite (TF backend)


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


def _export_tflite_tf(model, export_dir, name, modes=TFLITE_MODES, representative_images=None,
                      eval_images=None, num_threads=1):
    import tensorflow as tf

    facts = _model_facts(model)
    height, width = facts["size"]
    representative_images = _as_images(representative_images, (height, width))
    eval_images = _as_images(eval_images, (height, width))
    if eval_images is None:
        eval_images = (representative_images[:16] if representative_images is not None else
                       np.random.default_rng(0).integers(0, 256, (16, height, width, 3)).astype("float32"))
    for what, images in (("representative_images", representative_images), ("eval_images", eval_images)):
        if images is not None and images.shape[1:] != (height, width, 3):
            raise ValueError(f"{what} must be (n, {height}, {width}, 3) for this model, got {images.shape}.")
    expected = _keras_probabilities(model, eval_images)
    os.makedirs(export_dir, exist_ok=True)
    rows = []
    for mode in modes:
        final = os.path.join(export_dir, f"{name}.{mode}.tflite")
        with atomic_output(final) as tmp:
            model.export(tmp, format="litert", verbose=False,
                         input_signature=[tf.TensorSpec((1, height, width, 3), tf.float32, name="images")],
                         **_converter_options(mode, representative_images))
            got, latency = _run_tflite(tmp, eval_images, num_threads)
            if not facts["softmax"]:
                got = np.exp(got - got.max(-1, keepdims=True))
                got /= got.sum(-1, keepdims=True)
            row = dict(mode=mode, path=final, size_bytes=os.path.getsize(tmp),
                       max_abs_error=float(np.max(np.abs(got - expected))),
                       top1_agreement=float(np.mean(got.argmax(-1) == expected.argmax(-1))),
                       latency_ms=latency, num_eval_images=len(eval_images))
            if not np.all(np.isfinite(got)):
                raise RuntimeError(f"TFLite {mode} model produced non-finite outputs.")
        rows.append(row)
        print(f"TFLite {mode:>12}: {row['size_bytes'] / 1e6:8.3f} MB  max|err| {row['max_abs_error']:.2e}  "
              f"top-1 agreement {row['top1_agreement']:.3f}  {latency:.3f} ms  -> {final}")
    return dict(tflite=rows)


def load_images(path, size, max_images=256, seed=0):
    """0-255 float32 images ``(n, H, W, 3)`` from a ``.npy`` file or a folder of image files.

    From a folder (searched recursively for JPEG/PNG/BMP/GIF), ``max_images``
    files are drawn at random (fixed ``seed``), decoded and resized to ``size``.
    """
    import tensorflow as tf

    from keras_mixer.data import IMAGE_EXTENSIONS

    path = os.fspath(path)
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False).astype("float32")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Expected a .npy file or a folder of images, got {path!r}.")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"No image files under {path!r}.")
    files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))[:max_images]]
    return np.stack([
        tf.image.resize(tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False),
                        size, antialias=True).numpy() for f in files]).astype("float32")


def _as_images(images, size):
    if images is None:
        return None
    if isinstance(images, (str, os.PathLike)):
        images = load_images(images, size)
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (n, H, W, 3), got {images.shape}.")
    return images


def _run_tflite(path, images, num_threads=1):
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


# ----------------------------------------------------------------------------- ONNX (TF backend)


def _export_onnx_tf(model, export_dir, name, tolerance=1e-4):
    import importlib.util

    import tensorflow as tf

    if importlib.util.find_spec("tf2onnx") is None:
        raise ImportError("ONNX export needs tf2onnx and onnx: pip install 'keras-mixer[onnx]'.")
    height, width = _model_facts(model)["size"]
    os.makedirs(export_dir, exist_ok=True)
    final = os.path.join(export_dir, f"{name}.onnx")
    with atomic_output(final) as tmp:
        model.export(tmp, format="onnx", verbose=False, input_signature=[
            tf.TensorSpec((None, height, width, 3), tf.float32, name="images")])
        max_diff = None
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime

            session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            images = np.random.default_rng(0).integers(0, 256, (4, height, width, 3)).astype("float32")
            got = session.run(None, {session.get_inputs()[0].name: images})[0]
            max_diff = float(np.max(np.abs(got - model.predict(images, verbose=0))))
            if max_diff > tolerance:
                raise RuntimeError(f"ONNX model differs from Keras by {max_diff:.3g} (> {tolerance}).")
    print(f"Exported ONNX {final}; max |ONNX - Keras| = "
          + ("not checked (no onnxruntime)" if max_diff is None else f"{max_diff:.2e}"))
    return dict(onnx=dict(path=final, size_bytes=os.path.getsize(final), max_abs_diff=max_diff))


_COMMANDS = {"saved-model": _export_saved_model_tf, "tflite": _export_tflite_tf, "onnx": _export_onnx_tf}


# ----------------------------------------------------------------------------- CLI


def build_parser(description=None):
    parser = argparse.ArgumentParser(
        prog="export.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=description or "Export a Mixer to a TF Serving SavedModel "
                    "(saved_models/NAME/VERSION/) and/or TFLite files (saved_models/NAME.MODE.tflite).")
    parser.add_argument("command", choices=["saved-model", "tflite", "onnx", "all"],
                        help="what to export ('all': SavedModel and TFLite)")
    parser.add_argument("model_path", nargs="?", help="a .keras model file (any backend)")
    parser.add_argument("--variant", help="paper variant instead of a .keras file, e.g. B/16")
    parser.add_argument("--weights", help="with --variant: a .weights.h5 file")
    parser.add_argument("--num-classes", type=int, default=1000, help="with --variant")
    parser.add_argument("--image-size", type=int, default=224, help="with --variant")
    parser.add_argument("--export-dir", default="saved_models", help="base directory")
    parser.add_argument("--name", default="mixer", help="model name")
    parser.add_argument("--version", type=int, help="SavedModel version (default: next free)")
    parser.add_argument("--labels", help="text file with one class name per line")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--modes", nargs="+", default=list(TFLITE_MODES), choices=TFLITE_MODES,
                        help="TFLite modes")
    parser.add_argument("--representative-images",
                        help="int8 calibration images: a folder of image files or a .npy "
                             "(n, H, W, 3) 0-255 array (e.g. training images)")
    parser.add_argument("--eval-images", help="held-out images (folder or .npy) for the TFLite check")
    parser.add_argument("--num-threads", type=int, default=1, help="TFLite latency threads")
    parser.add_argument("--result-json", help=argparse.SUPPRESS)
    return parser


def main(argv=None, description=None):
    """The export CLI (``scripts/export.py``); returns the result dict."""
    args = build_parser(description).parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("keras_mixer.export's CLI runs under KERAS_BACKEND=tensorflow.")
    model = load_model(args.model_path, args.variant, args.weights, args.num_classes, args.image_size)
    result = {}
    if args.command in ("saved-model", "all"):
        result.update(_export_saved_model_tf(model, args.export_dir, args.name, args.version,
                                             args.labels, args.top_k, args.tolerance))
    if args.command in ("tflite", "all"):
        modes = [m for m in args.modes if m != "int8" or args.representative_images]
        if len(modes) < len(args.modes):
            print("Skipping TFLite int8: it needs --representative-images.")
        result.update(_export_tflite_tf(model, args.export_dir, args.name, modes,
                                        args.representative_images, args.eval_images,
                                        args.num_threads))
    if args.command == "onnx":
        result.update(_export_onnx_tf(model, args.export_dir, args.name, args.tolerance))
    if args.result_json:
        with open(args.result_json, "w") as f:
            json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
