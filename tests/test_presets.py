"""Loading any Mixer by handle (a preset name, a folder, hf://, kaggle://) and saving one as a preset.

Everything is offline: timm's Hugging Face layout is written by the test (what timm's
``save_for_hf`` writes: config.json + model.safetensors / pytorch_model.bin), put into a
Hugging Face cache laid out as ``huggingface_hub`` keeps it, and read with the hub client
in offline mode (``HF_HUB_OFFLINE``); Kaggle handles come from a kagglehub cache likewise.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.presets import (
    COMMIT,
    GOOG,
    MIIL,
    NUM_CLASSES,
    REPO,
    SIZE,
    hf_cache,
    offline_hub,
    predict,
    tiny_mixer,
    tiny_params,
    timm_reference,
    write_timm_repository,
)
from helpers.processes import run_worker, worker_env
from helpers.tiny import TINY, tiny_images

import keras_mixer
from keras_mixer import checkpoints, cli, images
from keras_mixer.checkpoints import CheckpointError, DownloadError, presets
from keras_mixer.training import TrainConfig, recipe

@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    return offline_hub(tmp_path, monkeypatch)


# ----------------------------------------------------------------------------- timm repositories


@pytest.mark.parametrize("pretrained, weights", [(GOOG, "safetensors"), (MIIL, "bin")],
                         ids=["goog-safetensors", "miil-pytorch_model.bin"])
def test_timm_repository_loads_as_timm_computes(tmp_path, pretrained, weights):
    """No argument but the folder: the variant, head, exact GELU and input scaling come from config.json."""
    params = tiny_params()
    folder = write_timm_repository(tmp_path / "repo", params, pretrained, weights)
    model = keras_mixer.load_model(folder)
    config = model.config
    assert (config.approximate_gelu, config.num_classes, config.image_shape) == (
        False, NUM_CLASSES, (SIZE, SIZE, 3))
    assert (config.crop_fraction, config.interpolation) == (0.875, pretrained["interpolation"])
    assert (config.input_mean, config.input_std) == (tuple(pretrained["mean"]), tuple(pretrained["std"]))
    pixels = tiny_images(3, SIZE)
    logits = predict(keras_mixer.load_model(folder, classifier_activation=None), pixels)
    np.testing.assert_allclose(logits, timm_reference(params, pixels, pretrained), rtol=1e-5, atol=1e-5)
    assert np.allclose(predict(model, pixels).sum(-1), 1.0)  # the default softmax on top


def test_hf_handle_loads_from_the_offline_hub_cache(tmp_path, offline_hf):
    params = tiny_params()
    folder = write_timm_repository(tmp_path / "repo", params, label_names=list("abcde"))
    hf_cache(offline_hf, REPO, folder)
    pixels = tiny_images(2, SIZE)
    from_hub, summary = keras_mixer.model_from_checkpoint(f"hf://{REPO}")
    np.testing.assert_array_equal(predict(from_hub, pixels), predict(keras_mixer.load_model(folder), pixels))
    assert summary.class_names == list("abcde")
    assert from_hub.config == keras_mixer.load_model(f"hf://{REPO}@main").config
    # weights= takes a handle too: the weights load into a model built to match.
    same = keras_mixer.MlpMixer(**TINY, input_shape=(SIZE, SIZE, 3), num_classes=NUM_CLASSES,
                                approximate_gelu=False, weights=f"hf://{REPO}")
    np.testing.assert_array_equal(predict(same, pixels), predict(from_hub, pixels))


def test_weights_handle_into_a_model_built_otherwise_warns(tmp_path, offline_hf):
    hf_cache(offline_hf, REPO, write_timm_repository(tmp_path / "repo", tiny_params(), MIIL))
    with pytest.warns(UserWarning, match=r"pixels in \[0, 1\].*approximate_gelu=False"):
        keras_mixer.MlpMixer(**TINY, input_shape=(SIZE, SIZE, 3), num_classes=NUM_CLASSES,
                             weights=f"hf://{REPO}")


def test_corrupt_hub_cache_file_is_refused(tmp_path, offline_hf):
    repo = hf_cache(offline_hf, REPO, write_timm_repository(tmp_path / "repo", tiny_params()))
    blob = os.path.realpath(os.path.join(repo, "snapshots", COMMIT, "model.safetensors"))
    with open(blob, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(DownloadError, match=r"cached model.safetensors of hf://timm/mixer_tiny_test "
                                            r"is corrupt \(its sha256 is"):
        keras_mixer.load_model(f"hf://{REPO}")


def test_offline_hub_without_the_files_says_how_to_get_them(offline_hf, capsys):
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE=1 the files come from the Hugging Face cache"):
        keras_mixer.load_model("hf://timm/not_downloaded")
    assert main_error(["convert", "hf://timm/not_downloaded", "x.keras"], capsys).startswith(
        "error: Could not get hf://timm/not_downloaded from the Hugging Face Hub")


def test_named_timm_preset_is_its_hub_repository(tmp_path, offline_hf):
    """A timm tag loads timm's repository of that name (here a tiny stand-in in the cache)."""
    tag = "mixer_b16_224.goog_in21k_ft_in1k"
    hf_cache(offline_hf, "timm/" + tag, write_timm_repository(tmp_path / "repo", tiny_params()))
    model = keras_mixer.load_model(tag)
    assert (model.config.crop_fraction, model.config.interpolation, model.config.approximate_gelu) == (
        0.875, "bicubic", False)


def test_timm_repository_of_another_architecture_is_refused(tmp_path):
    folder = write_timm_repository(tmp_path / "repo", tiny_params())
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["architecture"] = "resmlp_12_224"
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(CheckpointError, match="timm's 'resmlp_12_224', which is not an MLP-Mixer"):
        keras_mixer.load_model(folder)


def test_folder_that_is_no_preset_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="is not a Mixer preset: .* has no config.json"):
        keras_mixer.load_model(str(tmp_path))


# ----------------------------------------------------------------------------- presets by name


def test_named_presets_carry_source_resolution_and_preprocessing():
    named = presets.NAMED_PRESETS
    assert keras_mixer.preset_names() == tuple(named)
    for tag in ("mixer_b16_224.goog_in21k_ft_in1k", "mixer_b16_224.goog_in21k",
                "mixer_l16_224.goog_in21k_ft_in1k", "mixer_l16_224.goog_in21k"):
        preset = named[tag]
        assert preset.handle == f"hf://timm/{tag}" and preset.image_size == 224
        assert (preset.crop_fraction, preset.interpolation, preset.mean, preset.std) == (
            0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        assert preset.approximate_gelu is False
        assert preset.num_classes == (21843 if tag.endswith("in21k") else 1000)
    for tag, classes in (("mixer_b16_224.miil_in21k", 11221), ("mixer_b16_224.miil_in21k_ft_in1k", 1000)):
        assert (named[tag].interpolation, named[tag].mean, named[tag].std, named[tag].num_classes) == (
            "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), classes)
    official = {name: p for name, p in named.items() if p.handle is None}
    assert sorted(official) == sorted(
        f"mixer_{v.lower().replace('/', '')}_{name}" for v, name in presets.PRESETS
        if not name.startswith("miil"))
    for name, preset in official.items():
        assert preset.url.startswith("https://storage.googleapis.com/mixer_models/")
        assert (preset.crop_fraction, preset.interpolation, preset.approximate_gelu) == (
            1.0, "bilinear", True)


def test_named_official_preset_loads_through_the_keras_cache(tmp_path, monkeypatch):
    """load_model("mixer_s32_gsam"): the gsam S/32 .npz from the Keras cache, as weights="gsam" does."""
    params = tiny_params(num_classes=1000)
    npz = tmp_path / "gsam.npz"
    with open(npz, "wb") as f:
        np.savez(f, **params)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    origins = []

    def fake_get_file(fname, origin, cache_subdir, file_hash=None):
        origins.append(origin)
        target = os.path.join(cache_subdir, fname)
        with open(npz, "rb") as f, open(target, "wb") as out:
            out.write(f.read())
        return target

    monkeypatch.setattr("keras.utils.get_file", fake_get_file)
    model = keras_mixer.load_model("mixer_s32_gsam")
    assert origins == ["https://storage.googleapis.com/mixer_models/gsam/Mixer-S_32.npz"]
    assert (model.config.approximate_gelu, model.config.interpolation, model.config.num_classes) == (
        True, "bilinear", 1000)
    np.testing.assert_array_equal(checkpoints.get_params(model)["head/bias"], params["head/bias"])


def test_weights_defaults_of_a_preset():
    """MixerB16(weights="miil_in21k") builds the model the weights were trained as."""
    defaults = checkpoints.weights_defaults("miil_in21k", "B/16")
    assert defaults == dict(approximate_gelu=False, crop_fraction=0.875, interpolation="bilinear",
                            input_mean=(0.0, 0.0, 0.0), input_std=(1.0, 1.0, 1.0), num_classes=11221)
    assert checkpoints.weights_defaults("model.weights.h5", "B/16") == {}


# ----------------------------------------------------------------------------- saving presets


def test_save_to_preset_round_trip(tmp_path):
    model = tiny_mixer()
    names = ["ant", "bee", "cat", "dog", "eel"]
    path = keras_mixer.save_to_preset(model, tmp_path / "preset", class_names=names)
    assert sorted(os.listdir(path)) == sorted([
        "config.json", "model.weights.h5", "task.json", "task.weights.h5", "preprocessor.json",
        "image_converter.json", "metadata.json", "labels.txt"])
    loaded, summary = keras_mixer.model_from_checkpoint(str(path))
    assert loaded.config == model.config and summary.class_names == names
    pixels = tiny_images(3, SIZE)
    np.testing.assert_array_equal(predict(loaded, pixels), predict(model, pixels))
    # weights= of a model built alike; a head of another size stays fresh, as for any checkpoint.
    same = keras_mixer.MlpMixer(**model.config.to_kwargs(), weights=str(path))
    np.testing.assert_array_equal(predict(same, pixels), predict(model, pixels))
    with pytest.warns(UserWarning, match="Skipped the checkpoint's head: 5 classes"):
        other_head = keras_mixer.load_model(str(path), num_classes=3)
    np.testing.assert_array_equal(checkpoints.get_params(other_head)["stem/kernel"],
                                  checkpoints.get_params(model)["stem/kernel"])


def test_headless_model_saves_a_backbone_preset(tmp_path):
    model = tiny_mixer(include_top=False, pooling="avg")
    path = keras_mixer.save_to_preset(model, tmp_path / "preset")
    assert "task.json" not in os.listdir(path)
    loaded = keras_mixer.load_model(str(path))
    assert loaded.config.include_top is False
    np.testing.assert_array_equal(checkpoints.get_params(loaded)["stem/kernel"],
                                  checkpoints.get_params(model)["stem/kernel"])


def test_save_to_preset_refuses_what_must_not_be_published(tmp_path, monkeypatch):
    model = tiny_mixer()
    with pytest.raises(ValueError, match="Got 2 class names for a model with 5 classes"):
        keras_mixer.save_to_preset(model, tmp_path / "labels", class_names=["a", "b"])
    broken = tiny_mixer()
    broken.head.bias.assign(np.full(NUM_CLASSES, np.nan, "float32"))
    with pytest.raises(ValueError, match="NaN or infinite weights \\(head/bias\\)"):
        keras_mixer.save_to_preset(broken, tmp_path / "broken")
    keras_mixer.save_to_preset(model, tmp_path / "taken")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        keras_mixer.save_to_preset(model, tmp_path / "taken")
    keras_mixer.save_to_preset(tiny_mixer(num_classes=3), tmp_path / "taken", overwrite=True)
    assert keras_mixer.load_model(str(tmp_path / "taken")).config.num_classes == 3

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of writing the weights
    monkeypatch.setattr(keras.Model, "save_weights", killed)
    with pytest.raises(KeyboardInterrupt):
        keras_mixer.save_to_preset(model, tmp_path / "killed")
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # nothing half-written, no temporary left
    with pytest.raises(KeyboardInterrupt):
        keras_mixer.save_to_preset(model, tmp_path / "taken", overwrite=True)
    assert keras_mixer.load_model(str(tmp_path / "taken")).config.num_classes == 3  # the old one


def test_preset_shared_on_the_hub_loads_by_handle(tmp_path, offline_hf):
    """A preset uploaded to the Hugging Face Hub (upload_preset / upload_folder) loads by hf://."""
    model = tiny_mixer()
    hf_cache(offline_hf, "someone/tiny_mixer", keras_mixer.save_to_preset(model, tmp_path / "preset"))
    loaded = keras_mixer.load_model("hf://someone/tiny_mixer")
    pixels = tiny_images(2, SIZE)
    assert loaded.config == model.config
    np.testing.assert_array_equal(predict(loaded, pixels), predict(model, pixels))


def test_kaggle_handle_from_the_kagglehub_cache(tmp_path, monkeypatch):
    """kaggle://OWNER/MODEL/FRAMEWORK/VARIATION/VERSION: served by kagglehub from its cache."""
    pytest.importorskip("kagglehub")
    model = tiny_mixer()
    cache = tmp_path / "kagglehub"
    keras_mixer.save_to_preset(model, cache / "models/someone/mixer/keras/tiny/2")
    (cache / "models/someone/mixer/keras/tiny/2.complete").write_text("")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    loaded = keras_mixer.load_model("kaggle://someone/mixer/keras/tiny/2")
    pixels = tiny_images(2, SIZE)
    np.testing.assert_array_equal(predict(loaded, pixels), predict(model, pixels))


def test_preset_saved_here_loads_under_another_backend(tmp_path):
    """A preset written on this backend: the same outputs from keras-mixer (and keras-hub) on another."""
    backend = keras.backend.backend()
    other = {"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}[backend]
    model = tiny_mixer(interpolation="bilinear", crop_fraction=1.0, classifier_activation="softmax")
    path = keras_mixer.save_to_preset(model, tmp_path / "preset", class_names=list("abcde"))
    pixels = tiny_images(3, SIZE)
    result = run_worker(other, "workers.hub_worker:load_preset", str(path), pixels, timeout=600)
    assert result["backend"] == other
    expected = predict(model, pixels)
    np.testing.assert_allclose(result["mixer"], expected, rtol=1e-5, atol=1e-6)
    if "keras_hub" in result:
        assert result["classes"] == ["MixerImageClassifier", "MixerBackbone"]
        np.testing.assert_allclose(result["keras_hub"], expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- commands and training


def main_error(argv, capsys):
    """The one ``error:`` line a command prints for a user mistake."""
    assert cli.main(argv) == 2
    return capsys.readouterr().err.strip()


def test_convert_to_and_from_a_preset(tmp_path, capsys):
    model = tiny_mixer()
    keras_path = str(tmp_path / "tiny.keras")
    model.save(keras_path)
    cli.main(["convert", keras_path, str(tmp_path / "preset")])
    assert "Wrote" in capsys.readouterr().out
    cli.main(["convert", str(tmp_path / "preset"), str(tmp_path / "back.keras")])
    back = keras_mixer.load_model(str(tmp_path / "back.keras"))
    pixels = tiny_images(2, SIZE)
    assert back.config == model.config
    np.testing.assert_array_equal(predict(back, pixels), predict(model, pixels))


def test_train_init_from_a_timm_repository(tmp_path):
    """--init with a handle: the model takes the weights' GELU and input scaling, keeps its own head."""
    params = tiny_params()
    folder = write_timm_repository(tmp_path / "repo", params, MIIL)
    config = TrainConfig(init=folder, image_size=SIZE, patch_size=TINY["patch_size"],
                         num_blocks=TINY["num_blocks"], hidden_dim=TINY["hidden_dim"],
                         tokens_mlp_dim=TINY["tokens_mlp_dim"], channels_mlp_dim=TINY["channels_mlp_dim"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = recipe.build_model(config, num_classes=3)
    assert not [w for w in caught if "trained with" in str(w.message) or "expect" in str(w.message)]
    assert (model.config.approximate_gelu, model.config.input_mean, model.config.input_std) == (
        False, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert model.config.interpolation == "bilinear" and model.config.num_classes == 3
    np.testing.assert_array_equal(checkpoints.get_params(model)["stem/kernel"], params["stem/kernel"])


# ----------------------------------------------------------------------------- the image policy


def test_the_image_policy_uses_the_models_filter(tmp_path):
    """Files are prepared with the model's crop and filter: bicubic differs from bilinear."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3)).astype("uint8")
    path = str(tmp_path / "photo.png")
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(pixels).numpy())
    bicubic = images.load_files([path], (SIZE, SIZE), 0.875, "bicubic")
    bilinear = images.load_files([path], (SIZE, SIZE), 0.875)
    expected = tf.image.resize(pixels[2:37, 6:41].astype("float32"), (SIZE, SIZE),
                                      method="bicubic", antialias=True)
    np.testing.assert_allclose(bicubic[0], np.clip(expected, 0, 255), atol=1e-4)
    assert np.abs(bicubic - bilinear).max() > 1.0
    assert bicubic.min() >= 0 and bicubic.max() <= 255


def test_model_config_defaults_keep_todays_models():
    model = keras_mixer.MlpMixer(**TINY, input_shape=(SIZE, SIZE, 3), num_classes=3)
    config = model.config
    assert (config.interpolation, config.input_mean, config.input_std) == (
        "bilinear", (0.5,) * 3, (0.5,) * 3)
    assert config.pixel_scaling == (1.0 / 127.5, -1.0)
    assert model.get_layer("preprocessing").get_config()["scale"] == 1.0 / 127.5
    with pytest.raises(ValueError, match="interpolation must be one of bilinear, bicubic, nearest"):
        keras_mixer.MlpMixer(**TINY, input_shape=(SIZE, SIZE, 3), interpolation="lanczos")
    with pytest.raises(ValueError, match="input_std needs one value per channel"):
        keras_mixer.MlpMixer(**TINY, input_shape=(SIZE, SIZE, 3), input_std=(0.2, 0.3))
    gray = keras_mixer.MlpMixer(**TINY, input_shape=(SIZE, SIZE, 1), num_classes=3)
    assert gray.config.input_mean == (0.5,)


@pytest.mark.backend_independent  # subprocesses; the guide and the install, not the backend
def test_everything_but_keras_mixer_hub_works_without_keras_hub(tmp_path):
    """keras-hub is an extra: ``import keras_mixer`` does not import it, and presets are saved
    and loaded without it (here made unimportable)."""
    script = f"""
import sys
sys.modules["keras_hub"] = None  # as if not installed
import keras_mixer
assert "keras_hub" not in sys.modules or sys.modules["keras_hub"] is None
model = keras_mixer.MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3), num_classes=5)
keras_mixer.save_to_preset(model, {str(tmp_path / "preset")!r})
assert keras_mixer.load_model({str(tmp_path / "preset")!r}).config == model.config
try:
    import keras_mixer.hub
except ImportError:
    print("no keras_mixer.hub without keras-hub")
"""
    done = subprocess.run([sys.executable, "-c", script], env=worker_env(keras.backend.backend()),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "no keras_mixer.hub without keras-hub"


@pytest.mark.backend_independent  # subprocesses; the guide and the install, not the backend
def test_guide_examples_run_as_written(tmp_path):
    """The `docs: run` blocks of docs/guides/presets.md, in order, each in a fresh interpreter."""
    guide = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "docs", "guides", "presets.md")
    with open(guide, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"<!-- docs: (run[^>]*?) -->\n```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for marker, code in blocks:
        if "keras_hub" in code and importlib.util.find_spec("keras_hub") is None:
            continue
        done = subprocess.run([sys.executable, "-c", code], env=worker_env(keras.backend.backend()),
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{marker}:\n{done.stderr[-3000:]}"
    assert os.path.isdir(tmp_path / "my_mixer")
