"""Preset names resolve to the published files; loading a preset goes through the Keras cache."""

import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys
import urllib.error

import keras
import numpy as np
import pytest

import keras_mixer
from keras_mixer import MixerS32, checkpoints, files
from keras_mixer.checkpoints import presets

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

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
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    calls = []

    def fake_get_file(fname, origin, cache_subdir, file_hash=None):
        calls.append((origin, cache_subdir, file_hash))
        assert fname.startswith(files.TEMP_PREFIX) and fname.endswith("-gsam_Mixer-S_32.npz")
        target = os.path.join(cache_subdir, fname)
        with open(checkpoint, "rb") as f, open(target, "wb") as out:
            out.write(f.read())
        return target

    monkeypatch.setattr("keras.utils.get_file", fake_get_file)
    model = MixerS32(input_shape=(32, 32, 3), weights="gsam")
    cache = str(tmp_path / "keras_home" / "keras_mixer")
    assert calls == [(GCS + "gsam/Mixer-S_32.npz", cache, None)]
    assert os.listdir(cache) == ["gsam_Mixer-S_32.npz"]
    loaded = checkpoints.get_params(model)
    for key in params:
        np.testing.assert_array_equal(loaded[key], params[key], err_msg=key)
    MixerS32(input_shape=(32, 32, 3), weights="gsam")  # from the cache: no second download
    assert len(calls) == 1


# ------------------------------------------------------------------ downloads that go wrong


def small_npz(path, seed=0):
    """A small valid .npz (a zip archive: what the official files are)."""
    arrays = {"a": np.random.default_rng(seed).standard_normal(4096).astype("float32")}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """KERAS_HOME in tmp_path; get_file's default cache too (whatever calls it)."""
    home = tmp_path / "keras_home"
    home.mkdir()  # get_file falls back to /tmp/.keras when it does not exist
    monkeypatch.setenv("KERAS_HOME", str(home))
    real_get_file = keras.utils.get_file

    def get_file(*args, **kwargs):
        return real_get_file(*args, **dict(kwargs, cache_dir=str(home)))

    monkeypatch.setattr("keras.utils.get_file", get_file)
    return home / "keras_mixer"


def local_preset(monkeypatch, path, name="gsam", variant="S/32", **changes):
    """The ``name`` preset of ``variant``, served from ``path`` through a file:// URL."""
    preset = dataclasses.replace(presets.PRESETS[(variant, name)],
                                 url=pathlib.Path(path).absolute().as_uri(), **changes)
    monkeypatch.setitem(presets.PRESETS, (variant, name), preset)
    return preset


class Killed(BaseException):
    """Stands for SIGKILL: no `except Exception` or KeyboardInterrupt clean-up runs."""


def test_killed_download_does_not_poison_the_cache(tmp_path, monkeypatch, cache):
    source = small_npz(tmp_path / "Mixer-S_32.npz")
    preset = local_preset(monkeypatch, source)
    data = source.read_bytes()

    def killed_halfway(url, filename, reporthook=None):
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise Killed()

    with monkeypatch.context() as patch:
        patch.setattr("keras.src.utils.file_utils.urlretrieve", killed_halfway)
        with pytest.raises(Killed):
            presets.download_preset(preset)
    assert not (cache / preset.file_name).exists()  # no partial file under the real name
    path = presets.download_preset(preset)
    assert path == str(cache / preset.file_name)
    assert open(path, "rb").read() == data


def test_corrupt_cached_file_is_downloaded_again(tmp_path, monkeypatch, cache):
    """A partial file left by an older keras-mixer (it downloaded in place) is noticed and replaced."""
    source = small_npz(tmp_path / "Mixer-S_32.npz")
    preset = local_preset(monkeypatch, source)
    data = source.read_bytes()
    cache.mkdir(parents=True)
    (cache / preset.file_name).write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=f"cached file {cache / preset.file_name} of the 'gsam' "
                                         "weights is corrupt .*truncated or corrupt zip"):
        path = presets.download_preset(preset)
    assert open(path, "rb").read() == data


def test_timm_file_names_carry_a_sha256_prefix_that_is_checked(tmp_path, monkeypatch, cache):
    good = tmp_path / "good"
    good.mkdir()
    content = b"timm weights" * 100
    prefix = hashlib.sha256(content).hexdigest()[:8]
    (good / f"mixer_b16_224_miil-{prefix}.pth").write_bytes(content)
    preset = local_preset(monkeypatch, good / f"mixer_b16_224_miil-{prefix}.pth",
                          name="miil_in21k_ft_in1k", variant="B/16")
    assert preset.sha256 is None and preset.sha256_prefix == prefix
    assert open(presets.download_preset(preset), "rb").read() == content

    assert presets.PRESETS[("B/16", "miil_in21k")].sha256_prefix == "2a558a71"
    bad = tmp_path / "mixer_b16_224_miil_in21k-2a558a71.pth"
    bad.write_bytes(content)  # not the file that name promises
    preset = local_preset(monkeypatch, bad, name="miil_in21k", variant="B/16")
    with pytest.raises(presets.DownloadError, match=f"its sha256 starts with {prefix}, the "
                                                    "published file's with 2a558a71"):
        presets.download_preset(preset)
    assert sorted(os.listdir(cache)) == [f"mixer_b16_224_miil-{prefix}.pth"]  # nothing else kept


def test_known_sha256_is_given_to_get_file(tmp_path, monkeypatch, cache):
    source = small_npz(tmp_path / "Mixer-S_32.npz")
    preset = local_preset(monkeypatch, source, sha256="0" * 64)
    with pytest.raises(presets.DownloadError, match="file hash does not match"):
        presets.download_preset(preset)
    assert os.listdir(cache) == []
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    preset = local_preset(monkeypatch, source, sha256=digest)
    assert open(presets.download_preset(preset), "rb").read() == source.read_bytes()


def test_offline_download_names_the_url_and_the_cache_path(tmp_path, monkeypatch, cache):
    preset = presets.get_preset("S/32", "gsam")

    def offline(url, filename, reporthook=None):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    path = cache / "gsam_Mixer-S_32.npz"
    with pytest.raises(keras_mixer.DownloadError) as info:
        keras_mixer.load_weights(MixerS32(input_shape=(32, 32, 3)), "gsam")
    message = str(info.value)
    assert message.startswith("Could not download the 'gsam' weights of Mixer-S/32 from "
                              f"{GCS}gsam/Mixer-S_32.npz: URL fetch failure")
    assert f"copy the file to {path} (the Keras cache: $KERAS_HOME/keras_mixer/" in message
    assert os.listdir(cache) == []
    # A file put there by hand is picked up, with no download.
    small_npz(path)
    assert presets.download_preset(preset) == str(path)


def test_offline_preset_in_a_command_is_one_error_line(tmp_path, monkeypatch, cache, capsys):
    """`visualize gallery imagenet1k` offline: the download's message, no traceback."""
    from keras_mixer import cli

    def offline(url, filename, reporthook=None):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr("keras.src.utils.file_utils.urlretrieve", offline)
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG")
    status = cli.main(["gallery", "gsam", "--variant", "S/32", "--out", str(tmp_path / "g.png"),
                       str(image)], command="visualize", prog="visualize.py")
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert err.startswith("error: Could not download the 'gsam' weights of Mixer-S/32 from "), err


def test_download_removes_what_killed_downloads_left(tmp_path, monkeypatch, cache):
    source = small_npz(tmp_path / "Mixer-S_32.npz")
    preset = local_preset(monkeypatch, source)
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    prefix = files.temp_prefix().replace(f"p{os.getpid()}h", f"p{process.pid}h")
    cache.mkdir(parents=True)
    (cache / f"{prefix}0a1b2c3d-gsam_Mixer-S_32.npz").write_bytes(b"half")
    presets.download_preset(preset)
    assert os.listdir(cache) == ["gsam_Mixer-S_32.npz"]


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
