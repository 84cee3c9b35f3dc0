"""TF Serving SavedModels: ``<export_dir>/<name>/<version>/``, published atomically, checked first.

A version is written under a dot-name (``.tmp-*``, which TF Serving's poller
ignores), reloaded with plain TensorFlow and compared with the Keras model
through both signatures, and only then renamed into place. Dot-names that
killed exports left behind are removed first (:func:`keras_mixer.files.remove_stale_temps`).
When another export publishes the chosen version meanwhile, an export without
an explicit version takes the next free number; one with an explicit version
fails with :class:`FileExistsError`. The model name is one safe path component
(:func:`keras_mixer.files.check_name`), a model whose outputs are not finite is
never published, and nothing is left in the system's temporary folder.
"""

import errno
import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np

from keras_mixer import images as image_policy
from keras_mixer import models
from keras_mixer.deploy import runner, signatures
from keras_mixer.deploy.signatures import MAX_IMAGE_PIXELS, SERVING_BYTES, SERVING_DEFAULT
from keras_mixer.files import (check_name, disk_full_errors, remove_stale_temps, temp_prefix,
                               write_text)

REPORT_FILE = os.path.join("assets.extra", "export_report.json")
DTYPES = ("float32", "bfloat16")
# Default reload-check tolerance per dtype: bf16 rounds to ~3 significant digits, and the reloaded
# graph may fuse and order its bf16 operations differently from Keras' own.
TOLERANCES = {"float32": 1e-4, "bfloat16": 1e-2}
SAVED_MODEL_FILE = "saved_model.pb"


def export_saved_model(model, export_dir="saved_models", name="mixer", version=None,
                       labels=None, top_k=5, tolerance=None, dtype="float32", allow_new_task=False,
                       training_data=None, max_image_pixels=MAX_IMAGE_PIXELS):
    """Export a Mixer as a TF Serving SavedModel ``<export_dir>/<name>/<version>/``.

    Args:
        model: a ``.keras`` file saved on any backend (or, under the
            TensorFlow backend, an ``MlpMixer``).
        export_dir: base directory of the served models.
        name: model name (TF Serving's ``model_name``): one path component of
            letters, digits, ``_``, ``-`` and ``.`` (:func:`keras_mixer.files.check_name`).
        version: integer version; default the next free one.
        labels: class names (list of strings, or a text file with one per
            line); adds ``top_k_labels`` to the outputs.
        top_k: number of top classes returned.
        tolerance: largest accepted difference between the reloaded SavedModel
            and the Keras model (under ``dtype``) on sample inputs; default
            ``TOLERANCES[dtype]`` (1e-4 for float32, 1e-2 for bfloat16).
        dtype: ``"bfloat16"`` computes under Keras' ``bfloat16`` policy (matmuls
            in bf16: fast on CPUs with AMX); the signatures still take and return
            float32, and the report adds the drift against float32.
        allow_new_task: publish the model even when the newest version of
            ``name`` serves another task (other classes, image size or
            architecture); by default that is a ``ValueError``, since every
            client of ``name`` would get the new model's answers.
        training_data: what the model trained on (an image folder or a dataset
            name), recorded in the report for ``keras-mixer evaluate``'s overlap
            warning; default: the run directory's record, when ``model`` is a
            ``.keras`` file in one.
        max_image_pixels: both signatures refuse an image of more than this many
            pixels (``height * width``; encoded images are measured from their
            header, before decoding), so that TF Serving cannot be made to decode
            a 10000 x 10000 PNG. Recorded in the report.

    Returns:
        The path of the new version directory. The check's numbers are in its
        ``assets.extra/export_report.json`` (ignored by TF Serving).

    Raises:
        ValueError: a bad name, dtype or ``max_image_pixels``; ``name`` serves
            another task (without ``allow_new_task``); the model's outputs are
            not finite; the reloaded SavedModel differs by more than ``tolerance``.
        FileExistsError: ``version`` is already published.
        TypeError: an ``MlpMixer`` object under a backend other than TensorFlow
            (save it and pass the ``.keras`` file).

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=3)
        >>> folder = tempfile.mkdtemp()
        >>> model.save(os.path.join(folder, "tiny.keras"))
        >>> version_dir = keras_mixer.export_saved_model(
        ...     os.path.join(folder, "tiny.keras"), os.path.join(folder, "models"), name="tiny",
        ...     labels=["cat", "dog", "fox"])
        >>> os.path.relpath(version_dir, folder)
        'models/tiny/1'
        >>> sorted(os.listdir(version_dir))
        ['assets', 'assets.extra', 'fingerprint.pb', 'saved_model.pb', 'variables']

        TF Serving (``--model_base_path`` the ``models/tiny`` folder) or
        ``keras-mixer serve`` serves it; :class:`~keras_mixer.GrpcClient` asks it.
    """
    check_name(name)
    if dtype not in DTYPES:
        raise ValueError(f"Unknown SavedModel dtype {dtype!r}; choose from {DTYPES}.")
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int) \
            or max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be an integer >= 1, got {max_image_pixels!r}.")
    if version is not None and os.path.exists(os.path.join(export_dir, name, str(int(version)))):
        raise FileExistsError(
            f"Version directory already exists: {os.path.join(export_dir, name, str(version))}")
    if isinstance(model, (str, os.PathLike)):
        labels = labels_beside(model) if labels is None else labels
        training_data = run_training_data(model) if training_data is None else training_data
        if keras.backend.backend() != "tensorflow":  # refuse here, not in the export's subprocess
            config = models.keras_file_config(model)
            check_served_task(os.path.join(export_dir, name), task_of(config, labels), allow_new_task)
    with disk_full_errors("the SavedModel", "nothing was published: free some space and export "
                                            "again"):
        report = runner.on_tensorflow(
            "keras_mixer.deploy.saved_model:write_saved_model", model, export_dir=export_dir,
            name=name, version=version, labels=read_labels(labels), top_k=top_k,
            tolerance=tolerance, dtype=dtype, allow_new_task=allow_new_task,
            training_data=training_data, max_image_pixels=max_image_pixels)
    if "drift_vs_float32" in report:  # printed here: the export may run in a subprocess
        drift = report["drift_vs_float32"]
        print(f"{dtype} drift against float32 on {drift['num_images']} sample images: top-1 "
              f"agreement {drift['top1_agreement']:.2f}, relative error of the probabilities "
              f"{drift['relative_error']:.2e}")
    return report["path"]


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


def write_labels(path, labels):
    """The class names, one per line, at ``path`` (atomically): the labels file that
    :func:`labels_beside` finds next to a model."""
    return write_text(path, "".join(f"{label}\n" for label in read_labels(labels)))


def labels_beside(model_path):
    """The class names recorded next to a ``.keras`` file (a run directory's ``labels.txt``,
    else its ``state.json``), or ``None``."""
    directory = os.path.dirname(os.path.abspath(os.fspath(model_path)))
    path = os.path.join(directory, "labels.txt")
    if os.path.isfile(path):
        return read_labels(path)
    state = _read_json(os.path.join(directory, "state.json"))
    return state.get("class_names") if state else None


def run_training_data(model_path):
    """The data that the run of a ``.keras`` file trained on (absolute path of an image
    folder, or a dataset name), from the run directory's ``config.json``; else ``None``."""
    config = _read_json(os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))),
                                     "config.json"))
    data = (config or {}).get("data")
    if not isinstance(data, str):
        return None
    return os.path.abspath(data) if os.path.isdir(data) else data


def run_export_name(model_path, default="mixer"):
    """The name a ``.keras`` file's run exports under (its ``config.json``), else ``default``."""
    config = _read_json(os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_path))),
                                     "config.json"))
    name = (config or {}).get("export_name")
    return name if isinstance(name, str) and name else default


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def task_of(config, labels=None):
    """What clients of a served model rely on: its classes, image size and architecture.

    ``config`` is a model's :class:`keras_mixer.ModelConfig`; ``labels`` its class names.
    """
    labels = read_labels(labels)
    return {"num_classes": int(config.num_classes), "labels": labels,
            "image_size": [int(side) for side in config.image_size],
            "architecture": {field: int(getattr(config, field)) for field in _ARCHITECTURE}}


_ARCHITECTURE = ("patch_size", "num_blocks", "hidden_dim", "tokens_mlp_dim", "channels_mlp_dim")


def served_task(base_dir):
    """``(version directory, task)`` of the newest version under ``base_dir``, or ``(None, None)``.

    Versions exported before the task was recorded give what they have: the number
    of classes (export report) and the labels (``assets/labels.txt``).
    """
    if not os.path.isdir(base_dir):
        return None, None
    versions = sorted((int(entry) for entry in os.listdir(base_dir)
                       if entry.isdigit() and os.path.isdir(os.path.join(base_dir, entry))), reverse=True)
    if not versions:
        return None, None
    version_dir = os.path.join(base_dir, str(versions[0]))
    report = _read_json(os.path.join(version_dir, REPORT_FILE)) or {}
    task = dict(report.get("task") or {})
    if "num_classes" not in task and "num_classes" in report:
        task["num_classes"] = report["num_classes"]
    labels_file = os.path.join(version_dir, "assets", "labels.txt")
    if task.get("labels") is None and os.path.isfile(labels_file):
        task["labels"] = read_labels(labels_file)
    return version_dir, task


def describe_task(task):
    """``"10 classes (0, 1, 2, ..., 9), 16x16 px, Mixer patch 4, 4 blocks, C 64"``, from what is known."""
    parts = []
    labels = task.get("labels")
    if task.get("num_classes") is not None:
        names = ""
        if labels:
            shown = labels if len(labels) <= 4 else labels[:3] + ["...", labels[-1]]
            names = f" ({', '.join(shown)})"
        parts.append(f"{task['num_classes']} classes{names}")
    if task.get("image_size"):
        parts.append(f"{'x'.join(map(str, task['image_size']))} px")
    architecture = task.get("architecture")
    if architecture:
        parts.append(f"Mixer patch {architecture['patch_size']}, {architecture['num_blocks']} blocks, "
                     f"C {architecture['hidden_dim']}")
    return ", ".join(parts) or "an unrecorded task"


def task_differences(served, new):
    """The fields (``classes``, ``image size``, ``architecture``) in which two tasks differ,
    comparing only what both record."""
    differ = []
    if served.get("num_classes") is not None and served["num_classes"] != new["num_classes"]:
        differ.append("classes")
    elif served.get("labels") and new.get("labels") and list(served["labels"]) != list(new["labels"]):
        differ.append("classes")
    for key, what in (("image_size", "image size"), ("architecture", "architecture")):
        if served.get(key) and served[key] != new[key]:
            differ.append(what)
    return differ


def check_served_task(base_dir, task, allow_new_task=False, how=None):
    """Refuse (``ValueError``) to publish ``task`` under ``base_dir`` when its newest version
    serves another task: every client of that name would get the new model's answers.

    ``how`` says what to do instead (default: the export command's flags).
    """
    version_dir, served = served_task(base_dir)
    if version_dir is None or allow_new_task:
        return
    differ = task_differences(served, task)
    if not differ:
        return
    how = how or "export it under a name of its own (--name NAME), or pass --allow-new-task " \
                 "to replace the served model on purpose"
    raise ValueError(
        f"{version_dir} serves another model ({', '.join(differ[:-1]) + ' and ' if differ[1:] else ''}"
        f"{differ[-1]} differ{'s' if len(differ) == 1 else ''}): it has "
        f"{describe_task(served)}; this one {describe_task(task)}. Publishing it as the next "
        f"version of {os.path.basename(base_dir)!r} would give every client of that name its "
        f"answers: {how}.")


def next_version(base_dir):
    """The next free integer version under ``base_dir`` (1 when empty)."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(entry) for entry in os.listdir(base_dir) if entry.isdigit()]
    return max(versions, default=0) + 1


def write_saved_model(model, export_dir, name, version=None, labels=None, top_k=5,
                      tolerance=None, dtype="float32", allow_new_task=False, training_data=None,
                      max_image_pixels=MAX_IMAGE_PIXELS):
    """The export itself (TensorFlow backend); returns the check's report with ``path``."""
    import keras
    import tensorflow as tf

    check_name(name)
    tolerance = TOLERANCES[dtype] if tolerance is None else tolerance
    reference = models.with_dtype(model, "float32")
    model = reference if dtype == "float32" else models.with_dtype(model, dtype)

    base = os.path.join(export_dir, name)
    task = task_of(model.config, labels)
    check_served_task(base, task, allow_new_task)
    os.makedirs(base, exist_ok=True)
    remove_stale_temps(base)  # versions that killed exports left half written
    explicit = version is not None
    version = next_version(base) if version is None else int(version)
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"Version directory already exists: {final}")
    # A dot-name is not an integer: TF Serving's poller ignores it until the rename.
    tmp = tempfile.mkdtemp(prefix=temp_prefix(), dir=base)
    labels_dir = tempfile.mkdtemp(prefix=temp_prefix(), dir=base) if labels is not None else None
    try:
        classify, decode, table = signatures.serving_functions(model, labels, top_k, labels_dir,
                                                               max_image_pixels)
        archive = keras.export.ExportArchive()
        archive.track(model)
        if table is not None:
            archive.track(table)
        archive.add_endpoint(SERVING_DEFAULT, classify, input_signature=[
            tf.TensorSpec((None, None, None, 3), tf.float32, name=signatures.IMAGES_INPUT)])
        archive.add_endpoint(SERVING_BYTES, decode, input_signature=[
            tf.TensorSpec((None,), tf.string, name=signatures.BYTES_INPUT)])
        archive.write_out(tmp, verbose=False)  # copies labels.txt into its assets/
        if labels_dir is not None:
            shutil.rmtree(labels_dir)
        report = check_saved_model(tmp, model, labels, top_k,
                                   reference=None if model is reference else reference)
        if not report["max_abs_diff"] <= tolerance:  # also refuses NaN
            raise RuntimeError(
                f"Exported SavedModel differs from the Keras model by {report['max_abs_diff']:.3g} "
                f"(> tolerance {tolerance}); not publishing it."
            )
        report.update(name=name, dtype=dtype, max_image_pixels=max_image_pixels,
                      keras_version=keras.__version__,
                      tensorflow_version=tf.__version__, crop_fraction=model.config.crop_fraction,
                      interpolation=model.config.interpolation,
                      task=task, training_data=training_data,
                      exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the server may run as another user
        final = publish_version(tmp, base, version, report, explicit)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if labels_dir is not None:
            shutil.rmtree(labels_dir, ignore_errors=True)
        raise
    print(f"Exported SavedModel {final} (signatures {SERVING_DEFAULT}, {SERVING_BYTES}); "
          f"max |SavedModel - Keras| = {report['max_abs_diff']:.2e}")
    report["path"] = final
    return report


def publish_version(tmp, base, version, report, explicit=False):
    """Rename the finished export ``tmp`` to ``base/<version>``, its report written first.

    If another export took ``version`` meanwhile (two exports started at once),
    the next free version is used; with ``explicit`` a clear
    :class:`FileExistsError` is raised instead. Returns the version directory.
    """
    for _ in range(1000):
        final = os.path.join(base, str(version))
        report["version"] = version
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
        if not os.path.exists(final):
            try:
                os.rename(tmp, final)
                return final
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        if explicit:
            raise FileExistsError(
                f"Version directory {final} was published by another export while this one "
                "ran; this export was not published. Pass another version, or none for the "
                "next free one."
            )
        version = next_version(base)
    raise RuntimeError(f"Could not find a free version under {base}.")


def check_saved_model(path, model, labels, top_k, num_images=4, seed=0, reference=None):
    """Reload with plain TensorFlow and compare both signatures with the Keras model.

    With a float32 ``reference`` model (for a reduced-precision ``model``) the
    report adds ``drift_vs_float32`` (:func:`keras_mixer.models.drift`).
    """
    import tensorflow as tf

    config = model.config
    height, width = config.image_size
    images = np.random.default_rng(seed).integers(0, 256, (num_images, height, width, 3)).astype("float32")
    # Both signatures prepare every image by the policy: with crop_fraction < 1 they crop
    # images that are already at the model's size too.
    prepared = image_policy.resize(images, config.image_size, config.crop_fraction,
                                   config.interpolation).numpy()
    expected = signatures.keras_probabilities(model, prepared)
    signatures.check_finite(expected, f"Model {model.name!r}")
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
    report = dict(max_abs_diff=max(diffs), max_abs_diff_images=diffs[0],
                  max_abs_diff_bytes=diffs[1], top_k=k, num_classes=int(expected.shape[-1]),
                  labels=labels is not None, signatures=sorted(loaded.signatures.keys()))
    if reference is not None:
        report["drift_vs_float32"] = models.drift(
            signatures.keras_probabilities(reference, prepared), from_arrays["probabilities"])
    return report


def load_saved_model(path):
    """``(loaded SavedModel, {signature name: SignatureDef})`` of a version directory (tag ``serve``).

    A missing, truncated or corrupt ``saved_model.pb`` raises a ``ValueError``
    naming the file, instead of a protobuf or TensorFlow traceback.

    Example:
        >>> loaded, signature_defs = load_saved_model("saved_models/mixer/1")
        >>> sorted(signature_defs)
        ['serving_bytes', 'serving_default']
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = os.path.join(path, SAVED_MODEL_FILE)
    if not os.path.isfile(pb_path):
        raise FileNotFoundError(f"Not a SavedModel: {pb_path} is missing.")
    proto = saved_model_pb2.SavedModel()
    try:
        with open(pb_path, "rb") as f:
            proto.ParseFromString(f.read())
        meta_graphs = [m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags]
        if len(meta_graphs) != 1:
            raise ValueError(f"{len(meta_graphs)} graphs with tag 'serve' (expected 1)")
        loaded = tf.saved_model.load(path, tags=["serve"])
    except (DecodeError, ValueError, RuntimeError, tf.errors.OpError) as error:
        reason = getattr(error, "message", None) or str(error) or type(error).__name__
        raise ValueError(f"Cannot load the SavedModel {path}: {pb_path} is truncated or corrupt "
                         f"({reason.strip().splitlines()[0][:200]}). Export the model "
                         "again.") from None
    return loaded, meta_graphs[0].signature_def
