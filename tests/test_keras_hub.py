"""keras-hub's API on Mixers (keras_mixer.hub): its own test helpers, and presets written either way.

keras-hub's ``TestCase`` helpers (``run_backbone_test``, ``run_task_test``,
``run_preset_test``) run on the classes as they run on keras-hub's own models, all
their checks included (mixed precision is skipped by keras-hub itself on torch CPU).
"""

import json
import os

import h5py
import keras
import numpy as np
import pytest
from helpers.presets import (
    NUM_CLASSES,
    hf_cache,
    SIZE,
    offline_hub,
    predict,
    tiny_mixer,
    tiny_params,
    write_timm_repository,
)
from helpers.tiny import TINY, tiny_images

keras_hub = pytest.importorskip("keras_hub")
test_case = pytest.importorskip("keras_hub.src.tests.test_case")  # needs grain

import keras_mixer  # noqa: E402
from keras_mixer import checkpoints, images  # noqa: E402
from keras_mixer.hub import (  # noqa: E402
    MixerBackbone,
    MixerImageClassifier,
    MixerImageClassifierPreprocessor,
    MixerImageConverter,
)

BACKBONE = dict(TINY, image_shape=(SIZE, SIZE, 3))


def scaled(model, pixels):
    """0-255 pixels as the model's preprocessing layer (and the image converter) scale them."""
    scale, offset = model.config.pixel_scaling
    return (pixels * np.asarray(scale, "float32") + np.asarray(offset, "float32")).astype("float32")


class MixerHubTest(test_case.TestCase):
    """keras-hub's helpers on the Mixer classes."""

    def setUp(self):
        super().setUp()
        self.pixels = tiny_images(2, SIZE)  # NumPy; keras-hub's helpers take backend tensors

    def test_backbone_basics(self):
        self.run_backbone_test(cls=MixerBackbone, init_kwargs=BACKBONE,
                               input_data=keras.ops.convert_to_tensor(self.pixels),
                               expected_output_shape=(2, 16, TINY["hidden_dim"]))

    def test_classifier_basics(self):
        converter = MixerImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0,
                                        crop_fraction=0.875)
        self.run_task_test(
            cls=MixerImageClassifier,
            init_kwargs=dict(backbone=MixerBackbone(**BACKBONE), num_classes=NUM_CLASSES,
                             preprocessor=MixerImageClassifierPreprocessor(converter)),
            train_data=(tiny_images(2, 40), np.array([0, 3])),
            expected_output_shape=(2, NUM_CLASSES))

    def test_saved_preset(self):
        model = tiny_mixer()
        preset = keras_mixer.save_to_preset(model, os.path.join(self.get_temp_dir(), "preset"))
        self.run_preset_test(cls=MixerImageClassifier, preset=str(preset),
                             input_data=scaled(model, self.pixels),
                             expected_output=predict(model, self.pixels))
        self.run_preset_test(cls=MixerBackbone, preset=str(preset),
                             input_data=scaled(model, self.pixels),
                             expected_output_shape=(2, 16, TINY["hidden_dim"]))


def test_base_classes_build_mixers_from_a_preset(tmp_path):
    """Backbone.from_preset / ImageClassifier.from_preset, keras-hub's own loader on our folder."""
    model = tiny_mixer(crop_fraction=0.875, interpolation="bilinear")
    path = str(keras_mixer.save_to_preset(model, tmp_path / "preset"))
    classifier = keras_hub.models.ImageClassifier.from_preset(path)
    backbone = keras_hub.models.Backbone.from_preset(path)
    assert type(classifier) is MixerImageClassifier and type(backbone) is MixerBackbone
    assert isinstance(backbone, keras_mixer.MlpMixer)  # one model definition
    photos = tiny_images(2, 40)  # not the model's size: the converter crops and resizes
    prepared = images.resize(photos, (SIZE, SIZE), 0.875, "bilinear").numpy()
    np.testing.assert_allclose(classifier.predict(photos, verbose=0), predict(model, prepared),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predict(backbone, scaled(model, prepared)),
                               predict(_features(model), prepared), rtol=1e-5, atol=1e-5)


def _features(model):
    """The Mixer's normalised tokens (what the backbone returns), pixel scaling included."""
    return keras.Model(model.input, model.pre_head_norm.output)


def test_keras_hub_save_to_preset_writes_what_save_to_preset_writes(tmp_path):
    """The same folder either way: keras-mixer reads keras-hub's, keras-hub reads keras-mixer's."""
    model = tiny_mixer()
    ours = str(keras_mixer.save_to_preset(model, tmp_path / "ours"))
    classifier = MixerImageClassifier.from_mixer(model)
    classifier.save_to_preset(str(tmp_path / "theirs"))
    theirs = str(tmp_path / "theirs")
    for name in ("config.json", "task.json", "preprocessor.json", "image_converter.json"):
        with open(os.path.join(ours, name)) as a, open(os.path.join(theirs, name)) as b:
            assert json.load(a) == json.load(b), name
    for name in ("model.weights.h5", "task.weights.h5"):
        assert weight_paths(os.path.join(ours, name)) == weight_paths(os.path.join(theirs, name)), name
    pixels = tiny_images(2, SIZE)
    loaded = keras_mixer.load_model(theirs)
    assert loaded.config == model.config
    np.testing.assert_array_equal(predict(loaded, pixels), predict(model, pixels))
    assert classifier.to_mixer().config == model.config


def weight_paths(path):
    """The weights in a Keras ``.weights.h5`` file, ``{path: shape}`` (optimizer state left out)."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: found.__setitem__(name, item.shape)
                     if isinstance(item, h5py.Dataset) and not name.startswith("optimizer") else None)
    return found


def test_timm_repository_through_keras_hub_classes(tmp_path, monkeypatch):
    """MixerImageClassifier.from_preset takes timm's Hugging Face repositories (keras-hub cannot)."""
    params = tiny_params()
    folder = write_timm_repository(tmp_path / "repo", params)
    hf_cache(offline_hub(tmp_path, monkeypatch), "timm/mixer_tiny_test", folder)
    classifier = MixerImageClassifier.from_preset("hf://timm/mixer_tiny_test")
    model = keras_mixer.load_model(folder)
    photos = tiny_images(2, 40)
    prepared = images.resize(photos, (SIZE, SIZE), 0.875, "bicubic").numpy()
    # keras' bicubic Resizing leaves the overshoot that the image policy clips: close, not equal.
    np.testing.assert_allclose(classifier.predict(photos, verbose=0), predict(model, prepared),
                               atol=1e-3)
    # keras-hub's own API: its timm loader hands the Mixer repository to these classes.
    for preset in ("hf://timm/mixer_tiny_test", str(folder)):
        hub_classifier = keras_hub.models.ImageClassifier.from_preset(preset)
        assert isinstance(hub_classifier, MixerImageClassifier)
        np.testing.assert_allclose(hub_classifier.predict(photos, verbose=0),
                                   classifier.predict(photos, verbose=0), atol=1e-6)
    backbone = keras_hub.models.Backbone.from_preset("hf://timm/mixer_tiny_test")
    assert isinstance(backbone, MixerBackbone) and backbone.config.grid == model.config.grid
    head = keras_hub.models.ImageClassifier.from_preset("hf://timm/mixer_tiny_test", num_classes=3)
    assert head.output_dense.units == 3  # a fresh head, as keras-hub gives one


def test_keras_hub_still_has_no_timm_mixer_converter(tmp_path):
    """compat.route_timm_architecture patches keras-hub's TimmPresetLoader for Mixers; fails once
    keras-hub converts timm Mixers itself (then its converter may replace the route)."""
    import inspect

    from keras_hub.src.utils.timm import preset_loader

    source = inspect.getsource(preset_loader.TimmPresetLoader.__init__)
    assert "mixer" not in source and "no converter for timm models" in source
    assert preset_loader.TimmPresetLoader.__dict__["_keras_mixer_routes"] == {
        "mixer_": keras_mixer.hub._TimmMixerLoader}
    with pytest.raises(ValueError, match="no converter for timm models"):  # others: keras-hub's
        preset_loader.TimmPresetLoader(str(tmp_path), {"architecture": "gmixer_24_224"})


def test_from_mixer_and_back(tmp_path):
    model = tiny_mixer(classifier_activation="softmax")
    classifier = MixerImageClassifier.from_mixer(model)
    back = classifier.to_mixer()
    pixels = tiny_images(2, SIZE)
    np.testing.assert_array_equal(predict(back, pixels), predict(model, pixels))
    assert checkpoints.get_params(back).keys() == checkpoints.get_params(model).keys()
