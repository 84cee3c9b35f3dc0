"""Save a Mixer as a preset: keras-hub's folder layout, written without keras-hub.

:func:`save_to_preset` writes what keras-hub's ``save_to_preset`` writes for the
classes of :mod:`keras_mixer.hub` (``MixerImageClassifier`` with its backbone and
preprocessor), so that one folder loads everywhere:

- ``keras_mixer.load_model(DIR)``, ``MixerB16(weights=DIR)``, ``keras-mixer train
  --init DIR``, ``keras-mixer convert DIR ...`` (:mod:`keras_mixer.checkpoints.hub`
  reads it, no keras-hub needed);
- ``keras_hub.models.Backbone.from_preset(DIR)`` and
  ``keras_hub.models.ImageClassifier.from_preset(DIR)`` after ``import keras_mixer.hub``.

The files:

- ``config.json``: the ``MixerBackbone``: architecture, image shape, GELU form,
  LayerNorm epsilon, stochastic depth, dtype policy;
- ``model.weights.h5``: the backbone's weights (the Mixer without its head and
  pixel scaling), written by Keras;
- ``task.json`` + ``task.weights.h5`` (models with a head): the
  ``MixerImageClassifier``: classes, activation, dropout; the head's weights;
- ``preprocessor.json`` + ``image_converter.json``: the image converter: size,
  the input normalisation as ``scale``/``offset`` of 0-255 pixels, the resize
  filter, and keras-mixer's eval ``crop_fraction``;
- ``metadata.json``: Keras, keras-hub and keras-mixer versions, parameter count, date;
- ``labels.txt``: the class names, one per line, when given.

Upload the folder with keras-hub's ``keras_hub.upload_preset("hf://USER/NAME", DIR)``
(or ``kaggle://USER/MODEL/keras/VARIATION``), or ``huggingface_hub.upload_folder``.
"""

import datetime
import importlib.metadata
import json
import os

import keras
import numpy as np

from keras_mixer import checkpoints
from keras_mixer.checkpoints import hub
from keras_mixer.files import atomic_directory
from keras_mixer.models import MlpMixer

MODULE = "keras_mixer.hub"  # where the keras-hub classes are defined
POOLINGS = {"avg": keras.layers.GlobalAveragePooling1D, "max": keras.layers.GlobalMaxPooling1D}


def backbone_arguments(config):
    """``MixerBackbone`` constructor arguments (besides name and dtype) of a ``ModelConfig``."""
    arguments = {field: getattr(config, field) for field in hub.BACKBONE_FIELDS}
    arguments["image_shape"] = list(config.image_shape)
    return arguments


def converter_arguments(config):
    """``MixerImageConverter`` arguments (besides name and dtype): the image policy of a ``ModelConfig``.

    Resize to the model's size with its filter, antialiased (as :mod:`keras_mixer.images`),
    crop ``crop_fraction`` of the shorter side first, and scale to the model's inputs.
    """
    scale, offset = config.pixel_scaling
    return dict(image_size=list(config.image_size), scale=scale, offset=offset,
                interpolation=config.interpolation, antialias=True, crop_to_aspect_ratio=True,
                pad_to_aspect_ratio=False, bounding_box_format="yxyx",
                crop_fraction=config.crop_fraction)


def head_layers(num_classes, pooling="avg", activation=None, dropout=0.0, dtype=None):
    """``(pooler, dropout, dense)``: the classifier head on the backbone's tokens.

    The layers of ``MixerImageClassifier`` (keras-hub's names); Keras names their
    weights in ``task.weights.h5`` by their classes.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}.")
    return (POOLINGS[pooling](dtype=dtype, name="pooler"),
            keras.layers.Dropout(dropout, dtype=dtype, name="output_dropout"),
            keras.layers.Dense(num_classes, activation=activation, dtype=dtype, name="predictions"))


def serialized(class_name, config, policy="float32"):
    """A keras-hub config file's content for one of :mod:`keras_mixer.hub`'s classes."""
    base = dict(name=config.pop("name"), trainable=True,
                dtype=keras.dtype_policies.serialize(keras.dtype_policies.get(policy)))
    return dict(module=MODULE, class_name=class_name, config={**base, **config},
                registered_name=f"{hub.PACKAGE}>{class_name}")


def preset_configs(config, policy="float32"):
    """``{file name: JSON content}`` of the preset of a ``ModelConfig``: backbone, converter, task."""
    backbone = serialized(hub.BACKBONE_CLASS, dict(name=config.name, **backbone_arguments(config)),
                          policy)
    converter = serialized("MixerImageConverter", dict(name="mixer_image_converter",
                                                       **converter_arguments(config)))
    preprocessor = serialized("MixerImageClassifierPreprocessor", dict(
        name="mixer_image_classifier_preprocessor", image_converter=converter,
        config_file=hub.PREPROCESSOR_CONFIG_FILE))
    files = {hub.CONFIG_FILE: backbone, hub.PREPROCESSOR_CONFIG_FILE: preprocessor,
             hub.IMAGE_CONVERTER_CONFIG_FILE: converter}
    if config.include_top:
        task = serialized(hub.CLASSIFIER_CLASS, dict(
            backbone=backbone, preprocessor=preprocessor, name="mixer_image_classifier",
            num_classes=config.num_classes, pooling="avg",
            activation=config.classifier_activation, dropout=config.dropout))
        del task["config"]["trainable"], task["config"]["dtype"]  # a task's config has neither
        files[hub.TASK_CONFIG_FILE] = task
    return files


def save_to_preset(model, preset_dir, class_names=None, overwrite=False):
    """Save ``model`` as a preset folder: keras-hub's layout (module docstring), without keras-hub.

    Args:
        model: a :class:`keras_mixer.MlpMixer` (with or without its head).
        preset_dir: the folder to write (written elsewhere, then renamed into place).
        class_names: the head's class names (``labels.txt``), one per class.
        overwrite: replace an existing non-empty ``preset_dir``.

    Returns:
        ``preset_dir``.

    Raises:
        TypeError: ``model`` is not a ``keras_mixer.MlpMixer``.
        ValueError: the model has NaN or infinite weights (a broken model is not
            published), or ``class_names`` do not fit the head.
        FileExistsError: ``preset_dir`` exists and is not empty, without ``overwrite``.

    Examples:
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=2)
        >>> preset = os.path.join(tempfile.mkdtemp(), "tiny_preset")
        >>> keras_mixer.save_to_preset(model, preset, class_names=["cat", "dog"]) == preset
        True
        >>> sorted(os.listdir(preset))   # doctest: +NORMALIZE_WHITESPACE
        ['config.json', 'image_converter.json', 'labels.txt', 'metadata.json',
         'model.weights.h5', 'preprocessor.json', 'task.json', 'task.weights.h5']
        >>> same = keras_mixer.load_model(preset)
        >>> images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))
        >>> bool(np.allclose(same.predict(images, verbose=0), model.predict(images, verbose=0),
        ...                  atol=1e-6))
        True
    """
    if not isinstance(model, MlpMixer):
        raise TypeError(f"save_to_preset takes a keras_mixer.MlpMixer, got {type(model).__name__} "
                        "(a keras-hub MixerImageClassifier has its own .save_to_preset(dir)).")
    config = model.config
    params = checkpoints.get_params(model)
    broken = sorted(key for key, value in params.items() if not np.all(np.isfinite(value)))
    if broken:
        raise ValueError(f"Model {model.name!r} has NaN or infinite weights ({', '.join(broken[:3])}"
                         f"{', ...' if len(broken) > 3 else ''}); not saving it as a preset.")
    labels = _check_labels(class_names, config)
    policy = model.dtype_policy.name
    with atomic_directory(preset_dir, overwrite=overwrite) as folder:
        for name, content in preset_configs(config, policy).items():
            _write_json(os.path.join(folder, name), content)
        backbone = MlpMixer(**config.replace(include_top=False, pooling=None,
                                             include_preprocessing=False).to_kwargs(), dtype=policy)
        checkpoints.load_params(backbone, params, verbose=False)  # the head is not the backbone's
        backbone.save_weights(os.path.join(folder, hub.MODEL_WEIGHTS_FILE))
        if config.include_top:
            _save_head(backbone, config, params, os.path.join(folder, hub.TASK_WEIGHTS_FILE))
        _write_json(os.path.join(folder, hub.METADATA_FILE), _metadata(backbone, config))
        if labels is not None:
            with open(os.path.join(folder, hub.LABELS_FILE), "w", encoding="utf-8") as f:
                f.writelines(label + "\n" for label in labels)
    return preset_dir


def _save_head(backbone, config, params, path):
    """The head's weights as ``MixerImageClassifier.save_task_weights`` writes them."""
    pooler, dropout, dense = head_layers(config.num_classes, activation=config.classifier_activation,
                                         dropout=config.dropout)
    task = keras.Model(backbone.input, dense(dropout(pooler(backbone(backbone.input)))))
    dense.set_weights([params["head/kernel"], params["head/bias"]])
    keras.saving.save_weights(task, path, objects_to_skip=[backbone])


def _metadata(backbone, config):
    return dict(keras_version=keras.version(), keras_hub_version=_version("keras-hub"),
                keras_mixer_version=_version("keras-mixer"),
                parameter_count=backbone.count_params(),
                date_saved=datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
                tasks=["ImageClassifier"] if config.include_top else [])


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_labels(class_names, config):
    if class_names is None:
        return None
    labels = [str(name) for name in class_names]
    if not config.include_top or len(labels) != config.num_classes:
        raise ValueError(f"Got {len(labels)} class names for a model with "
                         + (f"{config.num_classes} classes." if config.include_top else "no head."))
    if any("\n" in label or "\r" in label or not label.strip() for label in labels):
        raise ValueError("Class names must be non-empty single lines.")
    return labels


def _write_json(path, content):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(content, indent=4) + "\n")
