"""keras-hub classes for the Mixer: a backbone, an image classifier, its preprocessor and image converter.

``import keras_mixer.hub`` (keras-hub installed: ``pip install keras-mixer[hub]``)
registers them with Keras, after which keras-hub's own API builds Mixers::

    import keras_hub
    import keras_mixer.hub

    classifier = keras_hub.models.ImageClassifier.from_preset("path/to/preset")
    backbone = keras_hub.models.Backbone.from_preset("hf://USER/mixer_preset")

``import keras_mixer`` alone does not import keras-hub. Presets are the folders
:func:`keras_mixer.save_to_preset` writes, or keras-hub's ``save_to_preset`` on
these classes (the same files). ``MixerBackbone.from_preset`` and
``MixerImageClassifier.from_preset`` also take what :func:`keras_mixer.load_model`
takes beyond keras-hub presets: timm's Hugging Face repositories
(``"hf://timm/mixer_b16_224.goog_in21k_ft_in1k"``) and keras-mixer's preset names,
converted on the fly. keras-hub's own ``Backbone.from_preset`` and
``ImageClassifier.from_preset`` reach them for timm repositories too: keras-hub's timm
loader has no Mixer converter, so it hands ``mixer_*`` repositories to these classes
(:func:`keras_mixer.compat.route_timm_architecture`).

One model definition: ``MixerBackbone`` *is* a :class:`keras_mixer.MlpMixer`
(built without head and pixel scaling, which keras-hub puts in the task and the
image converter), so it has the same layers, config and weights as
``keras_mixer.MixerB16()`` and works with every keras-mixer function that takes
a model (weights files, resolution transfer, export).
"""

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from keras_mixer import checkpoints, compat, images, sharing
from keras_mixer.checkpoints import hub as handles
from keras_mixer.config import LAYER_NORM_EPSILON
from keras_mixer.models import MlpMixer, load_model

PACKAGE = handles.PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class MixerBackbone(MlpMixer, keras_hub.models.Backbone):
    """An MLP-Mixer backbone: images (already scaled) to the normalised tokens ``(batch, S, C)``.

    Args:
        patch_size: side ``P`` of the square patches.
        num_blocks: number of Mixer blocks.
        hidden_dim: token width ``C``.
        tokens_mlp_dim: hidden width ``D_S`` of the token-mixing MLPs.
        channels_mlp_dim: hidden width ``D_C`` of the channel-mixing MLPs.
        image_shape: ``(height, width, channels)``; multiples of ``patch_size``.
        approximate_gelu: tanh GELU (official weights) or exact erf (timm's).
        layer_norm_epsilon: LayerNorm epsilon (official: 1e-6).
        drop_path_rate: stochastic depth of the last block.
        name: model name.
        dtype: a Keras dtype policy.
        **kwargs: ``keras_mixer.MlpMixer`` arguments (``trainable``, ...).

    Call arguments:
        - inputs: images ``(batch, height, width, channels)`` of ``image_shape``,
          already scaled as the weights expect (the image converter does that;
          official weights: ``[-1, 1]``).
        - training: stochastic depth is active only when ``True``.

    Returns:
        Called on images: the normalised tokens ``(batch, S, hidden_dim)``.

    Examples:
        >>> import keras_mixer.hub
        >>> backbone = keras_mixer.hub.MixerBackbone(8, 2, 32, 16, 64, image_shape=(32, 32, 3))
        >>> tuple(backbone(np.zeros((2, 32, 32, 3))).shape)      # 16 tokens of width 32
        (2, 16, 32)
    """

    def __init__(self, patch_size, num_blocks, hidden_dim, tokens_mlp_dim, channels_mlp_dim,
                 image_shape=(224, 224, 3), approximate_gelu=True,
                 layer_norm_epsilon=LAYER_NORM_EPSILON, drop_path_rate=0.0, name="mixer_backbone",
                 dtype=None, **kwargs):
        super().__init__(patch_size, num_blocks, hidden_dim, tokens_mlp_dim, channels_mlp_dim,
                         include_top=False, input_shape=image_shape, include_preprocessing=False,
                         approximate_gelu=approximate_gelu, layer_norm_epsilon=layer_norm_epsilon,
                         drop_path_rate=drop_path_rate, name=name, dtype=dtype, **kwargs)

    def get_config(self):
        config = keras_hub.models.Backbone.get_config(self)
        config.update(sharing.backbone_arguments(self.config))
        return config

    @classmethod
    def from_config(cls, config):
        return keras_hub.models.Backbone.from_config.__func__(cls, config)

    @classmethod
    def from_mixer(cls, model):
        """The backbone of a :class:`keras_mixer.MlpMixer`, with its weights (its head is left out).

        Args:
            model: a ``keras_mixer.MlpMixer``, with or without its head.

        Returns:
            A :class:`MixerBackbone` with the model's architecture, image shape,
            GELU form, name, dtype policy and weights.

        Examples:
            >>> import keras_mixer.hub
            >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
            >>> backbone = keras_mixer.hub.MixerBackbone.from_mixer(model)
            >>> images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3))  # scaled pixels
            >>> tuple(backbone(images).shape), backbone.count_params() < model.count_params()
            ((2, 16, 32), True)
        """
        backbone = cls(**sharing.backbone_arguments(model.config), name=model.name,
                       dtype=model.dtype_policy)
        checkpoints.load_params(backbone, checkpoints.get_params(model), verbose=False)
        return backbone

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's ``from_preset``; also timm repositories and keras-mixer's preset names."""
        if _foreign(preset):
            return cls.from_mixer(load_model(preset, **kwargs) if load_weights
                                  else _unloaded(preset, **kwargs))
        return super().from_preset(preset, load_weights=load_weights, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MixerImageConverter(keras_hub.layers.ImageConverter):
    """keras-hub's image converter with keras-mixer's eval crop.

    Args:
        crop_fraction: before resizing, crop the central square of this fraction of
            the shorter side (:func:`keras_mixer.images.center_crop`); 1 crops nothing.
        **kwargs: ``keras_hub.layers.ImageConverter`` arguments (``image_size``,
            ``scale``, ``offset``, ``interpolation``, ...).

    Call arguments:
        - inputs: images ``(batch, height, width, channels)`` (or one image) of
          any size, 0-255 pixels.

    Returns:
        Called on images: the images cropped, resized to ``image_size`` and
        scaled (``x * scale + offset``), float32.

    Raises:
        ValueError: ``crop_fraction`` is outside ``(0, 1]``.

    Examples:
        >>> import keras_mixer.hub
        >>> converter = keras_mixer.hub.MixerImageConverter(
        ...     crop_fraction=0.875, image_size=(32, 32), scale=1 / 127.5, offset=-1.0)
        >>> x = keras.ops.convert_to_numpy(converter(np.full((1, 48, 64, 3), 255.0)))
        >>> x.shape, float(x.min()), float(x.max())
        ((1, 32, 32, 3), 1.0, 1.0)
    """

    backbone_cls = MixerBackbone

    def __init__(self, crop_fraction=1.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
        self.crop_fraction = crop_fraction

    def call(self, inputs):
        if self.crop_fraction < 1.0:
            inputs = self._center_crop(inputs)
        return super().call(inputs)

    def _center_crop(self, inputs):
        if isinstance(inputs, dict):
            raise ValueError("crop_fraction < 1 crops images, not images with bounding boxes.")
        if tf.is_tensor(inputs):  # a tf.data pipeline (keras-hub's TensorFlow path)
            return images.center_crop(inputs, self.crop_fraction)
        array = np.asarray(keras.ops.convert_to_numpy(inputs))
        return images.center_crop(tf.convert_to_tensor(array), self.crop_fraction).numpy()

    def get_config(self):
        config = super().get_config()
        config["crop_fraction"] = self.crop_fraction
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MixerImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """keras-hub's image classifier preprocessor with a :class:`MixerImageConverter`.

    Args:
        image_converter: a :class:`MixerImageConverter` (``None``: images pass
            through unchanged).
        **kwargs: ``keras_hub.models.ImageClassifierPreprocessor`` arguments.

    Call arguments:
        - x: images ``(batch, height, width, channels)``, 0-255 pixels.
        - y: optional labels, passed through.
        - sample_weight: optional sample weights, passed through.

    Returns:
        Called on images: the converted images (with ``y`` and
        ``sample_weight``, when given, packed as Keras' ``(x, y, sample_weight)``).

    Examples:
        >>> import keras_mixer.hub
        >>> converter = keras_mixer.hub.MixerImageConverter(
        ...     image_size=(32, 32), scale=1 / 127.5, offset=-1.0)
        >>> preprocessor = keras_mixer.hub.MixerImageClassifierPreprocessor(converter)
        >>> tuple(preprocessor(np.zeros((2, 40, 40, 3))).shape)
        (2, 32, 32, 3)
    """

    backbone_cls = MixerBackbone
    image_converter_cls = MixerImageConverter


@keras.saving.register_keras_serializable(package=PACKAGE)
class MixerImageClassifier(keras_hub.models.ImageClassifier):
    """A Mixer image classifier: :class:`MixerBackbone`, token pooling, dropout, a dense head.

    Args:
        backbone: a :class:`MixerBackbone`.
        num_classes: classes of the head.
        preprocessor: a :class:`MixerImageClassifierPreprocessor`, or ``None``.
        pooling: ``"avg"`` (the Mixer's) or ``"max"`` over the tokens.
        activation: of the head; ``None`` returns logits.
        dropout: before the head.
        head_dtype: dtype policy of the head (default: the backbone's).
        **kwargs: ``keras_hub.models.ImageClassifier`` arguments (``name``, ...).

    Call arguments:
        - inputs: images scaled for the backbone ``(batch, height, width,
          channels)``. ``predict``, ``fit`` and ``evaluate`` run the preprocessor
          first, so they take 0-255 images of any size.

    Returns:
        Called on images: scores ``(batch, num_classes)`` (logits without ``activation``).

    Examples:
        >>> import keras_mixer.hub
        >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
        ...                              num_classes=2)
        >>> preset = keras_mixer.save_to_preset(model, os.path.join(tempfile.mkdtemp(), "tiny"))
        >>> classifier = keras_mixer.hub.MixerImageClassifier.from_preset(preset)
        >>> images = np.random.default_rng(0).uniform(0, 255, (2, 48, 40, 3))
        >>> classifier.predict(images, verbose=0).shape     # resized and scaled by the preprocessor
        (2, 2)
    """

    backbone_cls = MixerBackbone
    preprocessor_cls = MixerImageClassifierPreprocessor

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="avg", activation=None,
                 dropout=0.0, head_dtype=None, **kwargs):
        head_dtype = head_dtype or backbone.dtype_policy
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.pooler, self.output_dropout, self.output_dense = sharing.head_layers(
            num_classes, pooling, activation, dropout, head_dtype)
        # === Functional Model === (keras-hub's ImageClassifier pools 2D feature maps: skip it)
        inputs = backbone.input
        outputs = self.output_dense(self.output_dropout(self.pooler(backbone(inputs))))
        keras_hub.models.Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)
        # === Config ===
        self.num_classes = num_classes
        self.activation = activation
        self.pooling = pooling
        self.dropout = dropout

    def load_task_weights(self, filepath):
        """The head's weights from ``task.weights.h5`` (an optimizer state there is not restored)."""
        skip = [self.backbone] + ([self.optimizer] if self.optimizer is not None else [])
        keras.saving.load_weights(self, filepath, objects_to_skip=skip)

    @classmethod
    def from_mixer(cls, model):
        """The classifier of a :class:`keras_mixer.MlpMixer` with a head: same weights, preprocessing.

        Args:
            model: a ``keras_mixer.MlpMixer`` with its head.

        Returns:
            A :class:`MixerImageClassifier` whose preprocessor prepares images
            by the model's image policy (crop, filter, input normalisation).

        Raises:
            ValueError: the model has no head.

        Examples:
            >>> import keras_mixer.hub
            >>> model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3),
            ...                              num_classes=3, classifier_activation=None)
            >>> classifier = keras_mixer.hub.MixerImageClassifier.from_mixer(model)
            >>> images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))
            >>> bool(np.allclose(classifier.predict(images, verbose=0),
            ...                  model.predict(images, verbose=0), atol=1e-5))
            True
        """
        config = model.config
        if not config.include_top:
            raise ValueError(f"Model {model.name!r} has no head (include_top=False): use "
                             "MixerBackbone.from_mixer.")
        preprocessor = MixerImageClassifierPreprocessor(
            image_converter=MixerImageConverter(**sharing.converter_arguments(config)))
        classifier = cls(MixerBackbone.from_mixer(model), config.num_classes, preprocessor,
                         activation=config.classifier_activation,
                         dropout=config.dropout)
        head = checkpoints.get_params(model)
        classifier.output_dense.set_weights([head["head/kernel"], head["head/bias"]])
        return classifier

    def to_mixer(self):
        """This classifier as a :class:`keras_mixer.MlpMixer` taking 0-255 pixels (for keras-mixer's exports).

        Returns:
            A ``keras_mixer.MlpMixer`` with the backbone's and the head's weights
            and the image converter's input normalisation, crop and filter.

        Raises:
            ValueError: the classifier max-pools its tokens (a Mixer averages them).

        Examples:
            >>> import keras_mixer.hub
            >>> backbone = keras_mixer.hub.MixerBackbone(8, 2, 32, 16, 64, image_shape=(32, 32, 3))
            >>> classifier = keras_mixer.hub.MixerImageClassifier(backbone, num_classes=3)
            >>> model = classifier.to_mixer()
            >>> type(model).__name__, model.config.num_classes, model.config.include_preprocessing
            ('MlpMixer', 3, True)
        """
        if self.pooling != "avg":
            raise ValueError("A Mixer's head averages its tokens; this classifier max-pools.")
        converter = getattr(self.preprocessor, "image_converter", None)
        fields = handles.converter_fields(converter.get_config()) if converter is not None else {}
        config = self.backbone.config.replace(
            include_top=True, include_preprocessing=True, num_classes=self.num_classes,
            classifier_activation=self.activation, dropout=self.dropout, **fields)
        model = MlpMixer(**config.to_kwargs(), dtype=self.backbone.dtype_policy)
        params = checkpoints.get_params(self.backbone)
        params["head/kernel"], params["head/bias"] = self.output_dense.get_weights()
        checkpoints.load_params(model, params, verbose=False)
        return model

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's ``from_preset``; also timm repositories and keras-mixer's preset names.

        For those, ``kwargs`` are :func:`keras_mixer.load_model`'s (``num_classes=`` for a
        fresh head of another size, as keras-hub's).
        """
        if _foreign(preset):
            return cls.from_mixer(load_model(preset, **kwargs) if load_weights
                                  else _unloaded(preset, **kwargs))
        return super().from_preset(preset, load_weights=load_weights, **kwargs)


def _foreign(preset):
    """Whether ``preset`` is a Mixer keras-hub cannot load itself: a timm repository, a named preset."""
    if not isinstance(preset, str) or not checkpoints.is_handle(preset):
        return False
    try:
        kind = checkpoints.read_source(preset, weights=False).kind
    except checkpoints.CheckpointError:
        return False  # not a Mixer keras-mixer reads: keras-hub's loader says what it is
    return kind != handles.KERAS_HUB


def _unloaded(preset, **kwargs):
    """The model ``preset`` describes, with fresh weights."""
    source = checkpoints.read_source(preset)
    return MlpMixer(**checkpoints.source_config(source, **kwargs).to_kwargs())


class _TimmMixerLoader(compat.keras_hub_timm_loader_class()):
    """keras-hub's loader for a timm Mixer repository: the classes above read it (the same
    conversion as :func:`keras_mixer.load_model`), with the repository's preprocessing."""

    def __init__(self, preset, config):  # keras-hub's picks a converter; it has none for Mixers
        self.preset, self.config = preset, config

    def check_backbone_class(self):
        return MixerBackbone

    def load_backbone(self, cls, load_weights, **kwargs):
        return MixerBackbone.from_preset(self.preset, load_weights=load_weights, **kwargs)

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        return MixerImageClassifier.from_preset(self.preset, load_weights=load_weights, **kwargs)


compat.route_timm_architecture("mixer_", _TimmMixerLoader)

