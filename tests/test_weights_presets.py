"""Preset names resolve to the published files; loading a preset goes through the Keras cache."""

import numpy as np
import pytest

import keras_mixer
from keras_mixer import MixerS32, checkpoints
from keras_mixer.checkpoints import presets

GCS = "https://storage.googleapis.com/mixer_models/"
TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-tresnet/"
# Written out by hand from the vision_transformer README (gs://mixer_models) and timm's mlp_mixer.py.
EXPECTED = {
    ("B/16", "imagenet1k"): (GCS + "imagenet1k/Mixer-B_16.npz", "imagenet1k_Mixer-B_16.npz", 1000),
    ("L/16", "imagenet1k"): (GCS + "imagenet1k/Mixer-L_16.npz", "imagenet1k_Mixer-L_16.npz", 1000),
    ("B/16", "imagenet21k"): (GCS + "imagenet21k/Mixer-B_16.npz", "imagenet21k_Mixer-B_16.npz", 21843),
    ("L/16", "imagenet21k"): (GCS + "imagenet21k/Mixer-L_16.npz", "imagenet21k_Mixer-L_16.npz", 21843),
    ("B/16", "sam"): (GCS + "sam/Mixer-B_16.npz", "sam_Mixer-B_16.npz", 1000),
    ("B/32", "sam"): (GCS + "sam/Mixer-B_32.npz", "sam_Mixer-B_32.npz", 1000),
    ("S/16", "gsam"): (GCS + "gsam/Mixer-S_16.npz", "gsam_Mixer-S_16.npz", 1000),
    ("S/32", "gsam"): (GCS + "gsam/Mixer-S_32.npz", "gsam_Mixer-S_32.npz", 1000),
    ("B/16", "gsam"): (GCS + "gsam/Mixer-B_16.npz", "gsam_Mixer-B_16.npz", 1000),
    ("B/32", "gsam"): (GCS + "gsam/Mixer-B_32.npz", "gsam_Mixer-B_32.npz", 1000),
    ("B/16", "miil_in21k"): (TIMM + "mixer_b16_224_miil_in21k-2a558a71.pth",
                             "mixer_b16_224_miil_in21k-2a558a71.pth", 11221),
    ("B/16", "miil_in21k_ft_in1k"): (TIMM + "mixer_b16_224_miil-9229a591.pth",
                                     "mixer_b16_224_miil-9229a591.pth", 1000),
}


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_preset_resolves_to_published_file(key):
    url, file_name, classes = EXPECTED[key]
    for spelling in (key[0], "Mixer-" + key[0].replace("/", "_"), key[0].replace("/", "").lower()):
        preset = presets.get_preset(spelling, key[1].upper())
        assert (preset.url, preset.file_name, preset.num_classes) == (url, file_name, classes)


def test_every_preset_is_listed():
    assert set(presets.PRESETS) == set(EXPECTED)
    assert keras_mixer.available_presets("B/16") == (
        "imagenet1k", "imagenet21k", "sam", "gsam", "miil_in21k", "miil_in21k_ft_in1k")
    assert keras_mixer.available_presets("L/32") == ()


def test_unknown_preset_lists_what_exists():
    with pytest.raises(ValueError, match="Unknown weights preset 'jft300m'.*imagenet1k, imagenet21k"):
        presets.get_preset("B/16", "jft300m")


def test_variant_without_that_preset_lists_alternatives():
    with pytest.raises(ValueError, match=r"No 'imagenet21k' weights were published for Mixer-S/32 "
                                         r"\(they exist for Mixer-B/16, Mixer-L/16\)\. "
                                         r"Presets for Mixer-S/32: gsam"):
        presets.get_preset("S/32", "imagenet21k")
    with pytest.raises(ValueError, match="Presets for Mixer-H/14: none"):
        presets.get_preset("H/14", "sam")


def test_presets_need_a_paper_variant():
    model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3))
    assert model.config.variant is None and MixerS32(input_shape=(64, 64, 3)).config.variant == "S/32"
    with pytest.raises(ValueError, match="paper variants only"):
        keras_mixer.load_weights(model, "gsam")


def test_preset_loads_through_the_keras_cache(tmp_path, monkeypatch):
    """weights='gsam' on Mixer-S/32 asks get_file for the gsam S/32 file, then loads it."""
    source = MixerS32(input_shape=(32, 32, 3), num_classes=1000)
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(v.shape).astype("float32") * 0.01
              for k, v in checkpoints.get_params(source).items()}
    checkpoints.load_params(source, params)
    checkpoint = checkpoints.save_weights(source, tmp_path / "gsam_Mixer-S_32.npz")
    calls = []

    def fake_get_file(fname, origin, cache_subdir):
        calls.append((fname, origin, cache_subdir))
        return checkpoint

    monkeypatch.setattr("keras.utils.get_file", fake_get_file)
    model = MixerS32(input_shape=(32, 32, 3), weights="gsam")
    assert calls == [("gsam_Mixer-S_32.npz", GCS + "gsam/Mixer-S_32.npz", "keras_mixer")]
    loaded = checkpoints.get_params(model)
    for key in params:
        np.testing.assert_array_equal(loaded[key], params[key], err_msg=key)


class StopBeforeDownload(Exception):
    pass


def test_miil_preset_warns_about_input_scaling(monkeypatch):
    def stop(preset):
        raise StopBeforeDownload(preset.url)

    monkeypatch.setattr(presets, "download_preset", stop)
    # B/16's patch, depth and width (how presets recognise the variant), tiny MLPs.
    model = keras_mixer.MlpMixer(16, 12, 768, 8, 8, input_shape=(16, 16, 3))
    with pytest.warns(UserWarning, match=r"pixels in \[0, 1\].*approximate_gelu=False"):
        with pytest.raises(StopBeforeDownload, match="miil_in21k-2a558a71.pth"):
            checkpoints.load_weights(model, "miil_in21k")
