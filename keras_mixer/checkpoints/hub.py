"""Handles: a Mixer's files by preset name, local folder, ``hf://`` or ``kaggle://``, and what they hold.

A handle resolves to local files, downloaded (once, into the hub's own cache) by
the hub's own client:

- a full preset name (:data:`~keras_mixer.checkpoints.presets.NAMED_PRESETS`): the
  official ``.npz`` files go to the Keras cache and are checked
  (:func:`~keras_mixer.checkpoints.presets.download_preset`); timm's tags are
  their ``hf://timm/<tag>`` repositories;
- ``hf://OWNER/REPO`` (``@REVISION`` optional): ``huggingface_hub.snapshot_download``,
  the Hugging Face cache (``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` a warm cache
  is used without any network. Weights files stored with Git LFS are checked
  against the sha256 the Hub names them by;
- ``kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]``: ``kagglehub.model_download``
  (its cache, ``KAGGLEHUB_CACHE``; a versioned handle is served from a warm cache
  without asking Kaggle for the latest version);
- a local folder.

A folder holds one of two layouts, told apart by its ``config.json``:

- a keras-hub preset of a Mixer (:func:`keras_mixer.save_to_preset`, or keras-hub's
  ``save_to_preset`` on the classes of :mod:`keras_mixer.hub`): ``config.json``
  (the ``MixerBackbone`` config), ``model.weights.h5``, and for a classifier
  ``task.json`` + ``task.weights.h5`` (the head), ``preprocessor.json`` (the image
  converter: size, scaling, filter, crop) and ``labels.txt``;
- a timm Hugging Face repository (timm's ``save_for_hf`` / ``push_to_hf_hub``):
  ``config.json`` with ``architecture``, ``num_classes`` and ``pretrained_cfg``
  (``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``), weights in
  ``model.safetensors`` or ``pytorch_model.bin`` (``torch.load(weights_only=True)``).

Either is read as a :class:`Source`: official-layout params and the
:class:`~keras_mixer.config.ModelConfig` fields that make the model compute as its
publisher's (GELU form, input normalisation, eval crop and filter, head), so that
``keras_mixer.load_model(handle)`` needs no other argument.
"""

import dataclasses
import hashlib
import importlib
import json
import os
import re

import h5py  # installed with Keras
import numpy as np

from keras_mixer.checkpoints import formats, keys, presets
from keras_mixer.checkpoints.formats import CheckpointError
from keras_mixer.checkpoints.presets import DownloadError
from keras_mixer.config import INTERPOLATIONS, LAYER_NORM_EPSILON

HF_PREFIX, KAGGLE_PREFIX = presets.HF_PREFIX, "kaggle://"
# keras-hub's preset file names (keras_hub/src/utils/preset_utils.py).
CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_FILE = "model.weights.json"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
PREPROCESSOR_CONFIG_FILE = "preprocessor.json"
IMAGE_CONVERTER_CONFIG_FILE = "image_converter.json"
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.txt"  # ours: one class name per line, in class-index order
# timm's (timm/models/_hub.py: HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME).
TIMM_SAFETENSORS, TIMM_PICKLE = "model.safetensors", "pytorch_model.bin"
PRESET_FILES = (CONFIG_FILE, MODEL_WEIGHTS_FILE, TASK_CONFIG_FILE, TASK_WEIGHTS_FILE,
                PREPROCESSOR_CONFIG_FILE, IMAGE_CONVERTER_CONFIG_FILE, METADATA_FILE, LABELS_FILE,
                TIMM_SAFETENSORS)

# The classes of keras_mixer.hub, as keras-hub's config files name them.
PACKAGE = "keras_mixer"
BACKBONE_CLASS, CLASSIFIER_CLASS = "MixerBackbone", "MixerImageClassifier"
BACKBONE_FIELDS = ("patch_size", "num_blocks", "hidden_dim", "tokens_mlp_dim", "channels_mlp_dim",
                   "image_shape", "approximate_gelu", "layer_norm_epsilon", "drop_path_rate")
# Keras writes a task's weights (Task.save_task_weights: the layers outside the backbone)
# under the class names of its layers; the classifier's one Dense layer, the head:
TASK_HEAD_PATH = "layers/dense/vars"
# timm's MLP-Mixers: mixer_<size><patch>_<resolution> (timm/models/mlp_mixer.py).
TIMM_MIXER = re.compile(r"mixer_([sblh])(\d+)_(\d+)")
_LFS_SHA256 = re.compile(r"[0-9a-f]{64}")
_verified = set()  # (path, size, mtime) of hub files whose sha256 checked out in this process

WEIGHTS_FILE_SUFFIXES = formats.CHECKPOINT_SUFFIXES + formats.KERAS_WEIGHTS_SUFFIXES
OFFICIAL, KERAS_HUB, TIMM, CHECKPOINT = ("official checkpoint", "keras-hub preset", "timm repository",
                                        "checkpoint file")


@dataclasses.dataclass
class Source:
    """A Mixer's weights and how to build the model they belong to, read from a handle.

    Attributes:
        handle: what was asked for.
        path: the local folder (or file) it resolved to.
        kind: ``"keras-hub preset"``, ``"timm repository"``, ``"official checkpoint"``
            (a named official preset) or ``"checkpoint file"``.
        fields: :class:`~keras_mixer.config.ModelConfig` fields the source fixes
            (the architecture is read off ``params`` too, and checked).
        params: official-layout weights (``None`` when read with ``weights=False``).
        class_names: the head's class names, when the source names them.
    """

    handle: str
    path: str
    kind: str
    fields: dict
    params: dict = None
    class_names: list = None


def is_handle(source):
    """Whether ``source`` is a hub handle, a full preset name or an existing folder."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    return (text.startswith((HF_PREFIX, KAGGLE_PREFIX)) or presets.is_named_preset(text)
            or os.path.isdir(text))


def read_source(handle, weights=True):
    """Resolve ``handle`` (downloading what is missing) and read it as a :class:`Source`.

    Args:
        handle: a full preset name, ``hf://...``, ``kaggle://...``, a local folder, or
            a checkpoint file (``.npz``, ``.pth``, ``.safetensors``, ``.weights.h5``:
            weights only, no fields).
        weights: also read the weights (``False``: the config files only).

    Raises:
        DownloadError: the hub could not deliver the files (offline, unknown
            repository, a corrupt download).
        CheckpointError: the files are not a Mixer (another architecture, another
            layout, a file missing).

    Example:

    ```python
    source = keras_mixer.checkpoints.read_source("hf://timm/mixer_b16_224.goog_in21k_ft_in1k")
    source.kind, source.fields["interpolation"]  # ("timm repository", "bicubic")
    config = keras_mixer.checkpoints.source_config(source)  # the ModelConfig to build
    ```
    """
    text = os.fspath(handle)
    if os.path.isfile(text) or formats.has_suffix(text, WEIGHTS_FILE_SUFFIXES):
        return Source(text, text, CHECKPOINT, {}, formats.read_checkpoint(text) if weights else None)
    if presets.is_named_preset(text):
        preset = presets.named_preset(text)
        if preset.handle is None:  # an official .npz, from the Keras cache
            path = presets.download_preset(preset)
            params = formats.read_checkpoint(path) if weights else None
            return Source(text, path, OFFICIAL, preset.config_fields, params)
        folder = local_folder(preset.handle)
    else:
        folder = local_folder(text)
    return read_folder(folder, text, weights=weights)


def local_folder(handle):
    """The local folder of ``handle``: downloaded by its hub's client, or the folder itself."""
    if handle.startswith(HF_PREFIX):
        return _huggingface_folder(handle)
    if handle.startswith(KAGGLE_PREFIX):
        return _kaggle_folder(handle)
    if not os.path.isdir(handle):
        raise FileNotFoundError(
            f"No Mixer at {handle!r}: not a folder, a preset name ({', '.join(presets.NAMED_PRESETS)}), "
            f"an {HF_PREFIX}OWNER/REPO or a {KAGGLE_PREFIX}OWNER/MODEL/FRAMEWORK/VARIATION handle.")
    return handle


def _client(module, handle):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"Loading {handle} needs `pip install {module}` (or keras-mixer[hub]).") \
            from error


def _huggingface_folder(handle):
    repo_id, _, revision = handle[len(HF_PREFIX):].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"A Hugging Face handle is {HF_PREFIX}OWNER/REPO[@REVISION], got {handle!r}.")
    hub = _client("huggingface_hub", handle)
    revision = revision or None
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(PRESET_FILES))
        config = _read_json(folder, CONFIG_FILE, handle) if _exists(folder, CONFIG_FILE) else {}
        if "architecture" in config and not _exists(folder, TIMM_SAFETENSORS):
            folder = hub.snapshot_download(repo_id, revision=revision, allow_patterns=[TIMM_PICKLE])
    except Exception as error:  # the client raises HTTP, offline and validation errors of its own
        raise DownloadError(
            f"Could not get {handle} from the Hugging Face Hub: {error}\nOffline? With "
            "HF_HUB_OFFLINE=1 the files come from the Hugging Face cache (HF_HUB_CACHE, by default "
            "~/.cache/huggingface/hub) when they were downloaded there once."
        ) from error
    for name in (MODEL_WEIGHTS_FILE, TASK_WEIGHTS_FILE, TIMM_SAFETENSORS, TIMM_PICKLE):
        if _exists(folder, name):
            _check_lfs_file(hub, repo_id, revision, folder, name, handle)
    return folder


def _check_lfs_file(hub, repo_id, revision, folder, name, handle):
    """Check a cached Git LFS file against the sha256 the Hub named it by; download it again once if not."""
    path = os.path.join(folder, name)
    problem = _lfs_problem(path)
    if problem is None:
        return
    if hub.is_offline_mode():
        raise DownloadError(f"The cached {name} of {handle} is corrupt ({problem}); delete "
                            f"{os.path.realpath(path)} and load it again online.")
    hub.hf_hub_download(repo_id, name, revision=revision, force_download=True)
    problem = _lfs_problem(path)
    if problem is not None:
        raise DownloadError(f"Downloaded {name} of {handle} again, but it is corrupt ({problem}).")


def _lfs_problem(path):
    """What is wrong with a Hugging Face cache file stored as ``blobs/<sha256>``, or ``None``.

    Files whose blob name is not a sha256 (small files kept in git, named by their git
    hash) are not checked here.
    """
    real = os.path.realpath(path)
    expected = os.path.basename(real)
    if not _LFS_SHA256.fullmatch(expected):
        return None
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return None
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        return f"its sha256 is {digest.hexdigest()}, the Hub's is {expected}"
    _verified.add(key)
    return None


def _kaggle_folder(handle):
    kaggle_handle = handle[len(KAGGLE_PREFIX):]
    if len(kaggle_handle.split("/")) not in (4, 5):
        raise ValueError(f"A Kaggle handle is {KAGGLE_PREFIX}OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION], "
                         f"got {handle!r}.")
    kagglehub = _client("kagglehub", handle)
    try:
        return kagglehub.model_download(kaggle_handle)
    except Exception as error:  # the client raises HTTP and credential errors of its own
        raise DownloadError(
            f"Could not get {handle} from Kaggle: {error}\nOffline? A handle with its version "
            "(.../VARIATION/VERSION) is served from the kagglehub cache (KAGGLEHUB_CACHE, by default "
            "~/.cache/kagglehub) when it was downloaded there once."
        ) from error


# ----------------------------------------------------------------------------- reading a folder


def read_folder(folder, handle=None, weights=True):
    """A folder in either layout (module docstring) as a :class:`Source`."""
    handle = folder if handle is None else handle
    if not _exists(folder, CONFIG_FILE):
        raise CheckpointError(
            f"{handle} is not a Mixer preset: {folder} has no {CONFIG_FILE} (a keras-hub preset "
            "written by keras_mixer.save_to_preset, or a timm Hugging Face repository, has one).")
    config = _read_json(folder, CONFIG_FILE, handle)
    if "registered_name" in config:
        return _read_keras_hub_preset(folder, config, handle, weights)
    if "architecture" in config:
        return _read_timm_repository(folder, config, handle, weights)
    raise CheckpointError(f"{handle}: its {CONFIG_FILE} is neither a keras-hub preset's (no "
                          "registered_name) nor a timm model's (no architecture).")


def _read_keras_hub_preset(folder, config, handle, weights):
    if config.get("class_name") != BACKBONE_CLASS:
        raise CheckpointError(f"{handle} is a keras-hub preset of {config.get('class_name')!r}, "
                              f"not of a Mixer ({BACKBONE_CLASS}).")
    backbone = config.get("config", {})
    fields = {key: backbone[key] for key in BACKBONE_FIELDS if key in backbone}
    fields["image_shape"] = tuple(fields.get("image_shape", ()))
    if backbone.get("name"):
        fields["name"] = backbone["name"]
    task = _read_json(folder, TASK_CONFIG_FILE, handle) if _exists(folder, TASK_CONFIG_FILE) else None
    preprocessor = None
    if task is not None:
        fields.update(_classifier_fields(task, handle))
        preprocessor = task.get("config", {}).get("preprocessor")
    for name, key in ((PREPROCESSOR_CONFIG_FILE, "image_converter"), (IMAGE_CONVERTER_CONFIG_FILE, None)):
        if preprocessor is None and _exists(folder, name):
            preprocessor = _read_json(folder, name, handle)
            preprocessor = preprocessor.get("config", {}).get(key) if key else preprocessor
    if preprocessor is not None and "image_converter" in preprocessor.get("config", {}):
        preprocessor = preprocessor["config"]["image_converter"]
    if preprocessor:
        fields.update(converter_fields(preprocessor.get("config", {}), handle))
    else:  # a backbone preset: the model's features
        fields["include_top"] = False
    params = None
    if weights:
        if not _exists(folder, MODEL_WEIGHTS_FILE):
            sharded = _exists(folder, SHARDED_WEIGHTS_FILE)
            raise CheckpointError(f"{handle} has no {MODEL_WEIGHTS_FILE}" + (
                " (its weights are sharded, which keras-mixer does not read: keras-hub loads it)."
                if sharded else "."))
        params = formats.read_keras_weights(os.path.join(folder, MODEL_WEIGHTS_FILE))
        if task is not None and _exists(folder, TASK_WEIGHTS_FILE):  # else a fresh head, as keras-hub
            params.update(read_task_head(os.path.join(folder, TASK_WEIGHTS_FILE)))
    return Source(handle, folder, KERAS_HUB, fields, params, _read_labels(folder, handle))


def _classifier_fields(task, handle):
    if task.get("class_name") != CLASSIFIER_CLASS:
        raise CheckpointError(f"{handle}: its {TASK_CONFIG_FILE} is a {task.get('class_name')!r}, "
                              f"not a {CLASSIFIER_CLASS}.")
    config = task.get("config", {})
    activation = config.get("activation")
    if activation is not None and not isinstance(activation, str):
        raise CheckpointError(f"{handle}: the classifier's activation {activation!r} is not a "
                              "Keras activation name.")
    if config.get("pooling", "avg") != "avg":
        raise CheckpointError(f"{handle}: the classifier pools with {config['pooling']!r}; a Mixer's "
                              "head averages its tokens (pooling='avg').")
    return dict(include_top=True, num_classes=int(config["num_classes"]),
                classifier_activation=activation, dropout=float(config.get("dropout", 0.0)))


def converter_fields(converter, handle="the image converter"):
    """``ModelConfig`` fields of a keras-hub image converter's config: its scaling as mean/std, filter, crop."""
    scale = converter.get("scale")
    offset = converter.get("offset")
    scale = np.atleast_1d(np.asarray(1.0 if scale is None else scale, dtype="float64"))
    offset = np.atleast_1d(np.asarray(0.0 if offset is None else offset, dtype="float64"))
    if np.any(scale <= 0):
        raise CheckpointError(f"{handle}: image converter scale {converter.get('scale')!r} is not positive.")
    std = 1.0 / (255.0 * scale)  # x * scale + offset == (x / 255 - mean) / std
    mean, std = np.broadcast_arrays(-offset * std, std)
    # Rounded: the float round trip through scale and offset would leave 0.5000000000000001.
    fields = dict(input_mean=tuple(_rounded(mean)), input_std=tuple(_rounded(std)))
    if converter.get("interpolation") is not None:
        fields["interpolation"] = _interpolation(converter["interpolation"], handle)
    if converter.get("crop_fraction") is not None:
        fields["crop_fraction"] = float(converter["crop_fraction"])
    return fields


def _rounded(values, digits=12):
    return [float(f"{v:.{digits}g}") for v in values]


def read_task_head(path):
    """``{"head/kernel", "head/bias"}`` from a keras-hub task's ``task.weights.h5``."""
    try:
        with h5py.File(path, "r") as f:
            if TASK_HEAD_PATH not in f:
                raise CheckpointError(f"{path} has no classification head ({TASK_HEAD_PATH}).")
            group = f[TASK_HEAD_PATH]
            return {"head/kernel": np.asarray(group["0"][()]), "head/bias": np.asarray(group["1"][()])}
    except (OSError, KeyError) as error:
        raise CheckpointError(f"Cannot read the classification head from {path}: {error}") from error


def _read_timm_repository(folder, config, handle, weights):
    architecture = str(config["architecture"])
    if not TIMM_MIXER.fullmatch(architecture):
        raise CheckpointError(
            f"{handle} holds timm's {architecture!r}, which is not an MLP-Mixer; keras-mixer builds "
            "timm's mixer_s32_224, mixer_b16_224, ... (patch, depth and width of the paper).")
    pretrained = config.get("pretrained_cfg") or {}
    fields = dict(approximate_gelu=False,  # timm's Mixers use exact (erf) GELU
                  layer_norm_epsilon=LAYER_NORM_EPSILON)
    num_classes = int(config.get("num_classes", pretrained.get("num_classes", 1000)))
    if num_classes:
        fields.update(include_top=True, num_classes=num_classes)
    else:
        fields["include_top"] = False
    if "input_size" in pretrained:
        channels, height, width = (int(d) for d in pretrained["input_size"])
        fields["image_shape"] = (height, width, channels)
    if "crop_pct" in pretrained:
        fields["crop_fraction"] = float(pretrained["crop_pct"])
    if "interpolation" in pretrained:
        fields["interpolation"] = _interpolation(pretrained["interpolation"], handle)
    for ours, theirs in (("input_mean", "mean"), ("input_std", "std")):
        if theirs in pretrained:
            fields[ours] = tuple(float(v) for v in pretrained[theirs])
    params = None
    if weights:
        if _exists(folder, TIMM_SAFETENSORS):
            state = formats.read_safetensors(os.path.join(folder, TIMM_SAFETENSORS))
        elif _exists(folder, TIMM_PICKLE):
            state = formats.read_torch(os.path.join(folder, TIMM_PICKLE))
        else:
            raise CheckpointError(f"{handle} has no weights: neither {TIMM_SAFETENSORS} nor "
                                  f"{TIMM_PICKLE}.")
        params = keys.from_timm(state)
        head = params.get("head/kernel")
        if num_classes and (head is None or head.shape[-1] != num_classes):
            raise CheckpointError(
                f"{handle}: {CONFIG_FILE} says {num_classes} classes, the weights have "
                + ("no head." if head is None else f"a head of {head.shape[-1]}."))
        if not num_classes:
            for key in keys.HEAD_KEYS:
                params.pop(key, None)
    names = config.get("label_names")
    if isinstance(names, dict):  # timm allows {index: name}
        names = [names.get(str(i), names.get(i, str(i))) for i in range(num_classes)]
    return Source(handle, folder, TIMM, fields, params, list(names) if names else None)


def _interpolation(name, handle):
    if name not in INTERPOLATIONS:
        raise CheckpointError(f"{handle}: interpolation {name!r} is not one of "
                              f"{', '.join(INTERPOLATIONS)}.")
    return name


def _read_labels(folder, handle):
    if not _exists(folder, LABELS_FILE):
        return None
    with open(os.path.join(folder, LABELS_FILE), encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def _exists(folder, name):
    return os.path.isfile(os.path.join(folder, name))


def _read_json(folder, name, handle):
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{handle}: cannot read {name}: {error}") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{handle}: {name} is not a JSON object.")
    return value
