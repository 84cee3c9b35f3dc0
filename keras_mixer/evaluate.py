"""Accuracy of any artifact of ours on a labelled image folder, through the path it is used by.

:func:`evaluate` takes

- a ``.keras`` model: the training evaluation pipeline
  (:func:`keras_mixer.data.make_dataset` with ``training=False``), then the model
  with the exported interface (:func:`keras_mixer.deploy.signatures.probability_model`),
  computed as training's evaluation computes it (:func:`keras_mixer.fast.inference`);
- a TF Serving SavedModel (a version directory ``NAME/VERSION/``, or ``NAME/`` for
  its highest version): the files' bytes through its ``serving_bytes`` signature,
  loaded with plain TensorFlow, i.e. exactly what the server computes;
- a ``.tflite`` file: the files prepared by :func:`keras_mixer.images.load_files`,
  then the LiteRT interpreter (:func:`keras_mixer.deploy.litert.run_tflite`).

All three prepare pixels by the one image policy (:mod:`keras_mixer.images`), so
they agree image by image. The images scored are the folder's held-out split, as
training makes it (:func:`keras_mixer.data.split_files`): its ``test`` split
(also ``val`` / ``validation``) when ``root`` has ``train``/``test`` folders, else
every 10th image of ``root/<class>/<image>``; ``split="all"`` scores every image
of such a folder. The split is named in the first line printed, and a warning
says how many of the images scored are ones the model trained on, when its run
recorded its data. Classes are the sorted class folder names.
"""

import csv
import io
import json
import os

import numpy as np
import tensorflow as tf

from keras_mixer import data as datasets
from keras_mixer import fast, image_check, images, models
from keras_mixer.config import INTERPOLATIONS
from keras_mixer.deploy import litert, saved_model, signatures, tflite
from keras_mixer.files import write_text

KERAS, SAVED_MODEL, TFLITE = "keras", "saved_model", "tflite"
KIND_NAMES = {KERAS: "Model", SAVED_MODEL: "SavedModel", TFLITE: "TFLite model"}  # for messages
CSV_HEADER = ("path", "label", "prediction", "score")
TOP_K = 5
TFLITE_CHUNK = 256  # images prepared at a time for the TFLite interpreter


SPLITS = ("test", "train", "all")


def evaluate(artifact, data, crop_fraction=None, out=None, batch_size=32, log=print,
             interpolation=None, split="test"):
    """Top-1 / top-5 accuracy of ``artifact`` on the labelled image folder ``data``.

    Args:
        artifact: a ``.keras`` file, a SavedModel directory (``NAME/VERSION`` or
            ``NAME``) or a ``.tflite`` file.
        data: ``root/<class>/<image>``, or a folder with ``train``/``test`` splits of those.
        crop_fraction: central-square crop before resizing (:mod:`keras_mixer.images`).
            Default: the ``.keras`` model's ``config.crop_fraction``; a SavedModel's
            crop is baked into its signature and a ``.tflite`` file's is recorded
            beside it (``NAME.MODE.tflite.json``): a different value is refused.
        out: optional CSV path (written atomically): ``path,label,prediction,score``,
            one row per image, class names, score = probability of the prediction.
        batch_size: images per model call.
        log: where the summary lines go (``None``: nowhere).
        interpolation: the resize filter (``"bilinear"``, ``"bicubic"``, ``"nearest"``);
            default the model's ``config.interpolation``, recorded like the crop.
        split: ``"test"`` (the held-out split, as training makes it), ``"train"``,
            or ``"all"`` (every image of a folder without split folders).

    Returns:
        A dict: ``top1``, ``top5``, ``num_images``, ``kind`` (``"keras"``,
        ``"saved_model"`` or ``"tflite"``), ``artifact`` (the path evaluated),
        ``crop_fraction``, ``interpolation``, ``class_names``, ``probabilities`` ``(n, classes)``,
        ``rows`` (one dict per image: ``path``, ``label``, ``prediction``, ``score``),
        ``top_k`` (the k of ``top5``: 5, or the number of classes when fewer),
        ``split`` (what was scored, in words) and ``training_overlap`` (how many
        of the images the model trained on; ``None`` when its data is unknown).

    Raises:
        ValueError: settings out of range, a crop or filter that differs from the
            one an export recorded, classes that do not fit the model, or images
            that cannot be decoded (named).
        FileNotFoundError: the artifact or the folder does not exist.

    Examples:
        A ``.keras`` file scored on every image of a small labelled folder:

        >>> from keras_mixer.evaluate import evaluate
        >>> folder = tempfile.mkdtemp()
        >>> rng = np.random.default_rng(0)
        >>> for name in ("cat", "dog"):                      # images/<class>/<image>
        ...     os.makedirs(os.path.join(folder, "images", name))
        ...     for i in range(3):
        ...         keras.utils.save_img(os.path.join(folder, "images", name, f"{i}.png"),
        ...                              rng.uniform(0, 255, (40, 48, 3)))
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=2)
        >>> model.save(os.path.join(folder, "tiny.keras"))
        >>> result = evaluate(os.path.join(folder, "tiny.keras"), os.path.join(folder, "images"),
        ...                   split="all", log=None)
        >>> result["kind"], result["num_images"], result["class_names"], result["top_k"]
        ('keras', 6, ['cat', 'dog'], 2)
        >>> result["probabilities"].shape, 0.0 <= result["top1"] <= 1.0
        ((6, 2), True)
    """
    log = log or (lambda *_: None)
    kind, path = artifact_kind(artifact)
    if crop_fraction is not None:
        images.check_crop_fraction(crop_fraction, "--crop-fraction")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                         f"got {interpolation!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    folder, paths, labels, class_names, described = labelled_files(data, split)
    run = {KERAS: _keras_probabilities, SAVED_MODEL: _saved_model_probabilities,
           TFLITE: _tflite_probabilities}[kind]
    log(f"evaluating {kind} {path} on {described}: {len(paths)} images of {len(class_names)} "
        f"classes in {folder}")
    overlap = training_overlap(paths, trained_on(kind, path))
    if overlap:
        log(f"warning: {overlap} of these {len(paths)} images are images the model trained on "
            f"(its run trained on {trained_on(kind, path)}): the score overstates its accuracy on "
            f"new images. Score its held-out split (leave out --split) or a folder it never saw.")
    try:
        probabilities, crop_fraction, interpolation = run(
            path, paths, labels, class_names, crop_fraction, batch_size, interpolation)
    except (tf.errors.OpError, images.UnreadableImageError) as error:  # an image is refused
        raise _refused_images(kind, path, paths, folder, error) from None
    signatures.check_finite(probabilities, f"{KIND_NAMES[kind]} {path}")
    result = scores(probabilities, labels, paths, class_names)
    result.update(kind=kind, artifact=path, crop_fraction=crop_fraction, interpolation=interpolation,
                  split=described, training_overlap=overlap)
    if out is not None:
        write_predictions(out, result["rows"])
        log(f"predictions: {out}")
    log(summary_line(result))
    return result


def _refused_images(kind, path, paths, folder, error):
    """A ``ValueError`` naming the images that cannot be decoded, else quoting ``error``."""
    unreadable = image_check.find_unreadable(paths)
    if unreadable:
        return ValueError(f"{datasets.describe_unreadable(unreadable, len(paths), folder)}\n"
                          "Remove or replace them to evaluate the folder.")
    if isinstance(error, images.UnreadableImageError):
        return error
    message = (getattr(error, "message", "") or str(error)).strip().splitlines()
    reason = next((line for line in message if line.strip() and "Graph execution" not in line
                   and not line.startswith("Detected at node")), type(error).__name__)
    return ValueError(f"{KIND_NAMES[kind]} {path} refused an image of {folder}: "
                      f"{reason.strip()[:300]}")


def summary_line(result):
    """``top-1 0.9650 top-5 1.0000 on 200 images``: the line scripts grep for (``top-3`` for a
    3-class model: k is ``result["top_k"]``, at most 5)."""
    return (f"top-1 {result['top1']:.4f} top-{result.get('top_k', TOP_K)} {result['top5']:.4f} "
            f"on {result['num_images']} images")


def artifact_kind(artifact):
    """``(kind, path)`` of an artifact; a SavedModel ``NAME/`` resolves to its highest version."""
    path = os.fspath(artifact)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Artifact not found: {path}")
    if os.path.isfile(path) and path.endswith(".keras"):
        return KERAS, path
    if os.path.isfile(path) and path.endswith(".tflite"):
        return TFLITE, path
    if os.path.isdir(path):
        if _is_saved_model(path):
            return SAVED_MODEL, path
        versions = [int(entry) for entry in os.listdir(path)
                    if entry.isdigit() and os.path.isdir(os.path.join(path, entry))]
        if versions:
            version_dir = os.path.join(path, str(max(versions)))
            if not _is_saved_model(version_dir):
                raise ValueError(f"Highest version {version_dir} of {path!r} is not a SavedModel "
                                 "(no saved_model.pb).")
            return SAVED_MODEL, version_dir
    raise ValueError(
        f"Cannot evaluate {path!r}: expected a .keras model file, a .tflite file, or a SavedModel "
        "directory (NAME/VERSION with saved_model.pb, or NAME with integer versions).")


def _is_saved_model(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def labelled_files(root, split="test"):
    """``(folder, paths, labels, class_names, description)`` of the images to evaluate:
    ``split`` of ``root`` (see :func:`keras_mixer.data.split_files`), and what it is in words."""
    root = os.fspath(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f"--data {root!r} is a file: give a folder of labelled images, "
                                 f"{root}/<class>/<image>.")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder not found: {root}")
    folder, paths, labels, class_names, held_out = datasets.split_files(root, split)
    if split == "all":
        description = f"every image of {root} (--split all)"
    elif held_out:
        rule = (f"every {datasets.HELD_OUT_EVERY}th image" if split == "test"
                else f"all but every {datasets.HELD_OUT_EVERY}th image")
        description = (f"the {split} split of {root} ({rule} of its class folders, as training "
                       f"splits a folder without train/ and test/; --split all scores every image)")
    else:
        description = f"the {split} split of {root}"
    if not paths:
        raise ValueError(f"No images to evaluate: {description} holds none.")
    return folder, paths, labels, class_names, description


def trained_on(kind, path):
    """The image folder the artifact's run trained on (absolute), when it was recorded."""
    if kind == KERAS:
        data = saved_model.run_training_data(path)
    elif kind == SAVED_MODEL:
        report_path = os.path.join(path, saved_model.REPORT_FILE)
        data = None
        if os.path.isfile(report_path):
            with open(report_path) as f:
                data = json.load(f).get("training_data")
    else:
        data = (tflite.read_info(path) or {}).get("training_data")
    return data if isinstance(data, str) and os.path.isdir(data) else None


def training_overlap(paths, training_folder):
    """How many of ``paths`` are in the training split of ``training_folder`` (``None``: unknown)."""
    if training_folder is None:
        return None
    try:
        trained = datasets.split_files(training_folder, "train")[1]
    except (OSError, ValueError):  # the folder changed since: nothing to compare
        return None
    trained = {os.path.realpath(p) for p in trained}
    return sum(os.path.realpath(p) in trained for p in paths)


def _check_classes(num_classes, class_names, what):
    if num_classes != len(class_names):
        raise ValueError(f"{what} has {num_classes} classes but the folder has {len(class_names)} "
                         f"({', '.join(class_names)}).")


def _keras_probabilities(path, paths, labels, class_names, crop_fraction, batch_size,
                         interpolation):
    model = models.load_keras_file(path, compile=False)
    config = model.config
    crop_fraction = config.crop_fraction if crop_fraction is None else crop_fraction
    interpolation = interpolation or config.interpolation
    probability_model = signatures.probability_model(model)
    _check_classes(config.num_classes, class_names, f"Model {path}")
    source = datasets.files_source(paths, labels, class_names)
    dataset = datasets.make_dataset(source, batch_size, config.image_size, training=False,
                                crop_fraction=crop_fraction, cache=False,
                                interpolation=interpolation)
    with fast.inference():  # as the model's own test step
        probabilities = probability_model.predict(dataset.map(lambda x, y: x), verbose=0)
    return np.asarray(probabilities, dtype="float64"), crop_fraction, interpolation


def saved_model_crop_fraction(version_dir):
    """The crop fraction baked into a SavedModel's signatures (its export report), or ``None``."""
    report_path = os.path.join(version_dir, saved_model.REPORT_FILE)
    if not os.path.isfile(report_path):
        return None
    try:
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read {report_path}: it is not valid JSON ({error}).") from None
    crop = report.get("crop_fraction") if isinstance(report, dict) else None
    return None if crop is None else images.check_crop_fraction(crop, report_path)


def _recorded_interpolation(recorded, requested, where):
    """The resize filter an export records (before it recorded one: bilinear); another is refused."""
    recorded = recorded or "bilinear"
    if requested is not None and requested != recorded:
        raise ValueError(f"{where} prepares images with {recorded!r} resizing; --interpolation "
                         f"{requested} would not be what the model expects. Leave it out.")
    return recorded


def _saved_model_probabilities(path, paths, labels, class_names, crop_fraction, batch_size,
                               interpolation):
    baked = saved_model_crop_fraction(path)
    report_path = os.path.join(path, saved_model.REPORT_FILE)
    recorded = None
    if os.path.isfile(report_path):
        with open(report_path) as f:
            recorded = json.load(f).get("interpolation")
    interpolation = _recorded_interpolation(recorded, interpolation, f"SavedModel {path}")
    if crop_fraction is not None and (baked is None or abs(crop_fraction - baked) > 1e-9):
        recorded = (f"crops {baked}" if baked is not None else
                    f"does not record its crop (no crop_fraction in {saved_model.REPORT_FILE})")
        raise ValueError(
            f"SavedModel {path} {recorded}: its crop is baked into its serving signature, so "
            f"--crop-fraction {crop_fraction} cannot apply. Leave it out to evaluate the SavedModel "
            "as it is served, or export the model again with the crop you want.")
    labels_file = os.path.join(path, "assets", "labels.txt")
    if os.path.isfile(labels_file):
        _check_labels(saved_model.read_labels(labels_file), class_names, labels_file)
    loaded, _ = saved_model.load_saved_model(path)
    if signatures.SERVING_BYTES not in loaded.signatures:
        raise ValueError(f"SavedModel {path} has no {signatures.SERVING_BYTES!r} signature "
                         f"(it has {', '.join(sorted(loaded.signatures))}).")
    serve = loaded.signatures[signatures.SERVING_BYTES]
    _check_classes(serve.structured_outputs["probabilities"].shape[-1], class_names,
                   f"SavedModel {path}")
    batches = []
    for start in range(0, len(paths), batch_size):
        encoded = tf.constant([_read_bytes(p) for p in paths[start:start + batch_size]])
        batches.append(serve(**{signatures.BYTES_INPUT: encoded})["probabilities"].numpy())
    return np.concatenate(batches).astype("float64"), baked, interpolation


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _check_labels(model_labels, class_names, labels_file):
    if model_labels == class_names:
        return
    missing, extra = datasets.class_differences(model_labels, class_names)
    details = []
    if missing:
        details.append(f"not in the folder: {', '.join(missing)}")
    if extra:
        details.append(f"not in the model: {', '.join(extra)}")
    if not details:
        details.append(f"same names in another order: model {', '.join(model_labels)}; "
                       f"folder {', '.join(class_names)}")
    raise ValueError(f"The model's classes ({labels_file}) differ from the folder's class "
                     f"folders: {'; '.join(details)}.")


def _tflite_probabilities(path, paths, labels, class_names, crop_fraction, batch_size,
                          interpolation):
    info = tflite.read_info(path) or {}
    interpolation = _recorded_interpolation(info.get("interpolation"), interpolation, path)
    recorded = info.get("crop_fraction")
    if crop_fraction is None and recorded is None:
        raise ValueError(
            f"{path} has no {os.path.basename(path)}{tflite.INFO_SUFFIX} beside it recording the crop "
            f"its model was evaluated with: pass --crop-fraction (the .keras model's "
            f"config.crop_fraction; 1.0 for no crop).")
    if crop_fraction is not None and recorded is not None and abs(crop_fraction - recorded) > 1e-9:
        raise ValueError(
            f"{path} was exported from a model evaluated with crop_fraction {recorded} "
            f"({os.path.basename(path)}{tflite.INFO_SUFFIX}); --crop-fraction {crop_fraction} "
            "would not be what the model expects. Leave it out.")
    crop_fraction = recorded if crop_fraction is None else crop_fraction
    interpreter = litert.interpreter(path)
    input_shape = tuple(interpreter.get_input_details()[0]["shape"])
    output_shape = tuple(interpreter.get_output_details()[0]["shape"])
    if len(input_shape) != 4 or input_shape[0] != 1 or input_shape[3] != 3:
        raise ValueError(f"TFLite model {path} takes input of shape {input_shape}; expected "
                         "(1, height, width, 3) images.")
    _check_classes(output_shape[-1], class_names, f"TFLite model {path}")
    size = input_shape[1:3]
    chunk = max(batch_size, TFLITE_CHUNK)  # run_tflite loads the file once per call
    batches = []
    for start in range(0, len(paths), chunk):
        prepared = images.load_files(paths[start:start + chunk], size, crop_fraction, interpolation)
        batches.append(litert.run_tflite(path, prepared)[0])
    return np.concatenate(batches), crop_fraction, interpolation


def scores(probabilities, labels, paths, class_names):
    """Top-1 / top-5 accuracy and one row per image from ``(n, classes)`` probabilities."""
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels)
    predictions = probabilities.argmax(-1)
    k = min(TOP_K, probabilities.shape[-1])
    top_k = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    rows = [dict(path=path, label=class_names[label], prediction=class_names[prediction],
                 score=float(row[prediction]))
            for path, label, prediction, row in zip(paths, labels, predictions, probabilities)]
    return dict(top1=float(np.mean(predictions == labels)),
                top5=float(np.mean((top_k == labels[:, None]).any(-1))), top_k=k,
                num_images=len(labels), class_names=list(class_names),
                probabilities=probabilities, rows=rows)


def write_predictions(path, rows):
    """The per-image CSV (``path,label,prediction,score``), written atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows([row["path"], row["label"], row["prediction"], f"{row['score']:.6f}"]
                     for row in rows)
    return write_text(path, text.getvalue())
