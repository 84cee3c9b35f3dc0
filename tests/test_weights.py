"""Loading and saving checkpoints: official .npz (Linen and legacy), timm, Keras, and the loading rules."""

import io
import os
import subprocess
import sys
import time
import warnings
import zipfile

import keras
import numpy as np
import pytest
from helpers import reference
from helpers.tiny import TESTS_DATA

import keras_mixer
from keras_mixer import MlpMixer, checkpoints, files
from keras_mixer.checkpoints import CheckpointError

RTOL = 1e-5
# B/16-shaped blocks (224 px, patch 16: 196 tokens, C=768, D_S=384, D_C=3072) at reduced depth.
B16_SHAPED = dict(size=224, patch=16, hidden=768, tokens_mlp=384, channels_mlp=3072, depth=1)
TINY = dict(size=32, patch=8, hidden=32, tokens_mlp=16, channels_mlp=64, depth=2)

def run(model, inputs):
    """Inference outputs as NumPy (a direct call: no per-shape compilation as in predict)."""
    return keras.ops.convert_to_numpy(model(inputs, training=False))



def official_params(cfg, num_classes=7, seed=0):
    tokens = (cfg["size"] // cfg["patch"]) ** 2
    return reference.random_params(cfg["patch"], 3, cfg["hidden"], tokens, cfg["tokens_mlp"],
                                   cfg["channels_mlp"], cfg["depth"], num_classes, seed=seed)


def build(cfg, **kwargs):
    kwargs.setdefault("num_classes", 7)
    kwargs.setdefault("classifier_activation", None)
    kwargs.setdefault("include_preprocessing", False)
    return MlpMixer(cfg["patch"], cfg["depth"], cfg["hidden"], cfg["tokens_mlp"],
                    cfg["channels_mlp"], input_shape=(cfg["size"], cfg["size"], 3), **kwargs)


def save_npz(path, params):
    with open(path, "wb") as f:
        np.savez(f, **params)
    return str(path)


def images_for(cfg, n=2, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, cfg["size"], cfg["size"], 3)).astype("float32")


def assert_params_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


def to_legacy(params):
    """The pre-Linen layout as big_vision describes it, with squeezable unit axes on the MLPs."""
    legacy = {}
    for key, value in params.items():
        parts = key.split("/")
        if parts[0] == "stem":
            legacy["embedding/" + parts[1]] = value
        elif parts[0] == "pre_head_layer_norm":
            legacy["Mixer/encoder_norm/" + parts[1]] = value
        elif parts[0].startswith("MixerBlock_"):
            block = "Mixer/encoderblock_" + parts[0].split("_")[1]
            if parts[1] in ("token_mixing", "channel_mixing"):
                index = int(parts[2].split("_")[1]) + 1
                legacy[f"{block}/{parts[1]}_phase_0/{parts[3]}{index}"] = value[None]
            else:
                legacy[f"{block}/{'/'.join(parts[1:])}"] = value
        else:
            legacy[key] = value
    return legacy


@pytest.mark.parametrize("cfg", [TINY, B16_SHAPED], ids=["tiny", "b16_shaped"])
def test_official_npz_matches_numpy_reference(tmp_path, cfg):
    params = official_params(cfg)
    model = build(cfg)
    summary = keras_mixer.load_weights(model, save_npz(tmp_path / "ckpt.npz", params))
    assert len(summary.loaded) == len(params)
    images = images_for(cfg)
    expected = reference.forward(params, images)
    assert reference.rel_error(run(model, images), expected) <= RTOL


def test_weights_argument_of_the_constructor_loads_npz(tmp_path):
    params = official_params(TINY)
    path = save_npz(tmp_path / "ckpt.npz", params)
    model = build(TINY, weights=path)
    assert_params_equal(checkpoints.get_params(model), params)


def test_legacy_layout_loads_like_linen(tmp_path):
    params = official_params(TINY)
    legacy = to_legacy(params)
    assert any(k.startswith("Mixer/encoderblock_1/token_mixing_phase_0/kernel1") for k in legacy)
    linen_model, legacy_model = build(TINY), build(TINY)
    keras_mixer.load_weights(linen_model, save_npz(tmp_path / "linen.npz", params))
    keras_mixer.load_weights(legacy_model, save_npz(tmp_path / "legacy.npz", legacy))
    assert_params_equal(checkpoints.get_params(legacy_model), checkpoints.get_params(linen_model))
    images = images_for(TINY)
    np.testing.assert_array_equal(run(legacy_model, images),
                                  run(linen_model, images))


def test_write_official_npz_round_trip(tmp_path):
    params = official_params(TINY)
    model = build(TINY)
    checkpoints.load_params(model, params)
    out = checkpoints.save_weights(model, tmp_path / "out.npz")
    with np.load(out, allow_pickle=False) as data:
        written = {k: data[k] for k in data.files}
    assert_params_equal(written, params)
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]  # no temp file left behind


def test_keras_weights_h5_still_load(tmp_path):
    model = build(TINY)
    checkpoints.load_params(model, official_params(TINY))
    path = checkpoints.save_weights(model, tmp_path / "m.weights.h5")
    other = build(TINY, weights=path)
    assert_params_equal(checkpoints.get_params(other), checkpoints.get_params(model))


@pytest.mark.parametrize("kwargs", [
    dict(dropout=0.1, drop_path_rate=0.2, include_preprocessing=True, classifier_activation="softmax"),
    dict(include_top=False, pooling="max"),
], ids=["regularised", "headless"])
def test_weights_h5_reads_into_the_official_layout(tmp_path, kwargs):
    """Keras' own save_weights file, read without building its model, is the model's official params."""
    cfg = dict(TINY, depth=3)
    model = build(cfg, **kwargs)
    params = {k: np.random.default_rng(0).standard_normal(v.shape).astype("float32")
              for k, v in checkpoints.get_params(model).items()}
    checkpoints.load_params(model, params)
    model.save_weights(str(tmp_path / "keras.weights.h5"))  # Keras itself, not our writer
    assert_params_equal(checkpoints.read_checkpoint(tmp_path / "keras.weights.h5"), params)


def test_weights_h5_head_of_other_size_is_skipped(tmp_path):
    source = build(TINY, num_classes=10)
    checkpoints.load_params(source, official_params(TINY, num_classes=10))
    path = checkpoints.save_weights(source, tmp_path / "ten.weights.h5")
    model = build(TINY)
    with pytest.warns(UserWarning, match="Skipped the checkpoint's head: 10 classes, the model has 7"):
        summary = keras_mixer.load_weights(model, path)
    assert summary.skipped == list(checkpoints.HEAD_KEYS)
    assert not checkpoints.get_params(model)["head/kernel"].any()


def test_weights_h5_of_other_width_assigns_nothing(tmp_path):
    """A wider file used to fail only after the stem and earlier layers were overwritten."""
    cfg = dict(TINY, channels_mlp=96)
    source = build(cfg)
    checkpoints.load_params(source, official_params(cfg))
    path = checkpoints.save_weights(source, tmp_path / "wide.weights.h5")
    _load_fails(build(TINY), path, r"wrong shape for 'MixerBlock_0/channel_mixing/Dense_0/kernel': "
                                   r"checkpoint \(32, 96\), model \(32, 64\)")


# ------------------------------------------------------------------ another architecture, every format


def save_as(tmp_path, cfg, suffix):
    source = build(cfg)
    checkpoints.load_params(source, official_params(cfg))
    return checkpoints.save_weights(source, tmp_path / f"other{suffix}")


@pytest.mark.parametrize("change", [dict(depth=3), dict(hidden=48)], ids=["deeper", "wider"])
def test_other_architecture_fails_the_same_way_in_every_format(tmp_path, change):
    """.npz, .safetensors, .pth and .weights.h5 from a deeper/wider model: same error, nothing assigned."""
    pytest.importorskip("torch")
    cfg = dict(TINY, **change)
    theirs = checkpoints.config_from_params(official_params(cfg)).architecture.describe()
    ours = build(TINY).config.architecture.describe()
    errors = {}
    for suffix in (".npz", ".safetensors", ".pth", ".weights.h5"):
        model = build(TINY)
        before = checkpoints.get_params(model)
        with pytest.raises(CheckpointError) as info:
            keras_mixer.load_weights(model, save_as(tmp_path, cfg, suffix))
        assert_params_equal(checkpoints.get_params(model), before)  # nothing assigned
        errors[suffix] = info.value
    for suffix, error in errors.items():
        first_line = str(error).splitlines()[0]
        assert f"The checkpoint is a {theirs} trained at 32x32; the model is a {ours}" in first_line
        assert "nothing was loaded" in str(error), suffix
        assert str(error) == str(errors[".npz"]), suffix  # the same message, whatever the format
        assert sorted(error.problems) == sorted(errors[".npz"].problems), suffix


# ------------------------------------------------------------------ timm layout


def test_timm_layout_transposes():
    params = official_params(TINY)
    state = checkpoints.to_timm(params)
    np.testing.assert_array_equal(state["stem.proj.weight"],
                                  params["stem/kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW
    np.testing.assert_array_equal(state["blocks.1.mlp_tokens.fc1.weight"],
                                  params["MixerBlock_1/token_mixing/Dense_0/kernel"].T)
    np.testing.assert_array_equal(state["blocks.0.mlp_channels.fc2.weight"],
                                  params["MixerBlock_0/channel_mixing/Dense_1/kernel"].T)
    np.testing.assert_array_equal(state["blocks.0.norm2.weight"],
                                  params["MixerBlock_0/LayerNorm_1/scale"])
    np.testing.assert_array_equal(state["head.weight"], params["head/kernel"].T)
    assert state["norm.bias"] is not None and len(state) == len(params)


def test_timm_layout_is_what_pytorch_computes():
    """A PyTorch forward on the timm-layout dict equals the official reference (checks the transposes)."""
    cfg = dict(TINY, size=24)  # 3x3 tokens, non-square weight matrices everywhere
    params = official_params(cfg)
    images = images_for(cfg)
    np.testing.assert_allclose(reference.timm_forward(checkpoints.to_timm(params), images),
                               reference.forward(params, images), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_round_trip(tmp_path, suffix):
    """official npz -> Keras -> timm file -> Keras: identical weights and outputs."""
    if suffix == ".pth":
        pytest.importorskip("torch")
    params = official_params(TINY)
    first = build(TINY, weights=save_npz(tmp_path / "official.npz", params))
    path = checkpoints.save_weights(first, tmp_path / f"timm{suffix}")
    second = build(TINY, weights=path)
    assert_params_equal(checkpoints.get_params(second), params)
    images = images_for(TINY)
    np.testing.assert_array_equal(run(second, images), run(first, images))


def test_torch_state_dict_file_written_by_torch(tmp_path):
    torch = pytest.importorskip("torch")
    params = official_params(TINY)
    state = {k: torch.from_numpy(v) for k, v in checkpoints.to_timm(params).items()}
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    model = build(TINY, weights=str(tmp_path / "wrapped.pth"))
    assert_params_equal(checkpoints.get_params(model), params)


# ------------------------------------------------------------------ head rules


def test_head_of_other_size_is_skipped_with_message(tmp_path):
    params = official_params(TINY, num_classes=21843 // 100)
    path = save_npz(tmp_path / "ckpt.npz", params)
    model = build(TINY, num_classes=10)
    with pytest.warns(UserWarning, match="Skipped the checkpoint's head: 218 classes"):
        summary = keras_mixer.load_weights(model, path)
    assert summary.skipped == list(checkpoints.HEAD_KEYS)
    loaded = checkpoints.get_params(model)
    assert not loaded["head/kernel"].any() and not loaded["head/bias"].any()  # zero init kept
    body = {k: v for k, v in params.items() if not k.startswith("head/")}
    assert_params_equal({k: v for k, v in loaded.items() if not k.startswith("head/")}, body)


def test_include_top_false_ignores_head(tmp_path):
    params = official_params(TINY)
    model = build(TINY, include_top=False, pooling="avg")
    keras_mixer.load_weights(model, save_npz(tmp_path / "ckpt.npz", params))
    images = images_for(TINY)
    expected = reference.forward(params, images, pre_logits=True)
    assert reference.rel_error(run(model, images), expected) <= RTOL


def test_headless_checkpoint_into_model_with_head(tmp_path):
    params = {k: v for k, v in official_params(TINY).items() if not k.startswith("head/")}
    model = build(TINY)
    with pytest.warns(UserWarning, match="no head"):
        keras_mixer.load_weights(model, save_npz(tmp_path / "ckpt.npz", params))
    assert not checkpoints.get_params(model)["head/kernel"].any()


# ------------------------------------------------------------------ errors


def _load_fails(model, path, match):
    before = checkpoints.get_params(model)
    with pytest.raises(ValueError, match=match):
        keras_mixer.load_weights(model, path)
    assert_params_equal(checkpoints.get_params(model), before)  # nothing partially loaded


def test_missing_key_is_an_error(tmp_path):
    params = official_params(TINY)
    del params["MixerBlock_1/channel_mixing/Dense_1/bias"]
    _load_fails(build(TINY), save_npz(tmp_path / "c.npz", params),
                r"missing key 'MixerBlock_1/channel_mixing/Dense_1/bias' \(model shape \(32,\)\)")


def test_extra_key_is_an_error(tmp_path):
    params = official_params(TINY)
    params["MixerBlock_2/LayerNorm_0/scale"] = np.ones(32, np.float32)
    _load_fails(build(TINY), save_npz(tmp_path / "c.npz", params),
                r"unexpected key 'MixerBlock_2/LayerNorm_0/scale' \(checkpoint shape \(32,\)\)")


def test_extra_timm_key_is_named(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    state = checkpoints.to_timm(official_params(TINY))
    state["blocks.0.gamma"] = np.ones(32, np.float32)
    save_file(state, str(tmp_path / "c.safetensors"))
    _load_fails(build(TINY), str(tmp_path / "c.safetensors"), "unexpected key 'blocks.0.gamma'")


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    params = official_params(TINY)
    params["MixerBlock_0/channel_mixing/Dense_0/kernel"] = np.zeros((32, 48), np.float32)
    params["MixerBlock_0/channel_mixing/Dense_0/bias"] = np.zeros(48, np.float32)
    _load_fails(build(TINY), save_npz(tmp_path / "c.npz", params),
                r"wrong shape for 'MixerBlock_0/channel_mixing/Dense_0/kernel': "
                r"checkpoint \(32, 48\), model \(32, 64\)")


def test_head_of_wrong_width_is_an_error(tmp_path):
    params = official_params(TINY)
    params["head/kernel"] = np.zeros((16, 7), np.float32)
    _load_fails(build(TINY), save_npz(tmp_path / "c.npz", params),
                r"wrong shape for 'head/kernel': checkpoint \(16, 7\), model \(32, 7\)")


def test_pickled_object_array_is_refused(tmp_path):
    params = official_params(TINY)
    params["stem/bias"] = np.array([{"not": "weights"}], dtype=object)
    path = str(tmp_path / "c.npz")
    with open(path, "wb") as f:
        np.savez(f, **params)  # savez pickles object arrays
    _load_fails(build(TINY), path, "pickled")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth"])
def test_truncated_file_is_an_error(tmp_path, suffix):
    if suffix == ".pth":
        pytest.importorskip("torch")
    model = build(TINY)
    checkpoints.load_params(model, official_params(TINY))
    full = checkpoints.save_weights(model, tmp_path / f"full{suffix}")
    data = open(full, "rb").read()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    _load_fails(build(TINY), str(truncated), "truncated or corrupt")


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"stem.proj.bias": torch.zeros(3), "evil": warnings.WarningMessage}, tmp_path / "x.pth")
    _load_fails(build(TINY), str(tmp_path / "x.pth"), "weights_only=True")


def test_unknown_file_type_and_missing_file(tmp_path):
    model = build(TINY)
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="Unsupported weights"):
        keras_mixer.load_weights(model, str(tmp_path / "w.ckpt"))
    with pytest.raises(FileNotFoundError):
        keras_mixer.load_weights(model, str(tmp_path / "nope.npz"))
    with pytest.raises(ValueError, match="not a preset"):
        keras_mixer.load_weights(model, "imagenet22k")


def test_config_from_params_and_model_from_checkpoint(tmp_path):
    params = official_params(TINY)
    config = checkpoints.config_from_params(params)
    assert config == keras_mixer.ModelConfig(
        patch_size=8, num_blocks=2, hidden_dim=32, tokens_mlp_dim=16, channels_mlp_dim=64,
        image_shape=(32, 32, 3), num_classes=7)
    model, summary = keras_mixer.model_from_checkpoint(
        save_npz(tmp_path / "c.npz", params), include_preprocessing=False,
        classifier_activation=None)
    images = images_for(TINY)
    assert reference.rel_error(run(model, images), reference.forward(params, images)) <= RTOL
    assert len(summary.loaded) == len(params)


@pytest.mark.skipif(os.name == "nt", reason="POSIX rename semantics")
def test_failed_save_leaves_no_file(tmp_path):
    model = build(TINY)
    with pytest.raises(ValueError, match="Unsupported output"):
        checkpoints.save_weights(model, tmp_path / "w.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_single_array_file_named_npz_is_an_error(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3, np.float32))
    _load_fails(build(TINY), str(path), "single array, not an .npz archive")


# ------------------------------------------------------------------ files that are not what they say


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth", ".weights.h5"])
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, suffix):
    if suffix == ".pth":
        pytest.importorskip("torch")
    model = build(TINY)
    text = tmp_path / f"notes{suffix}"
    text.write_text("hello world\nthese are not weights\n")
    _load_fails(model, str(text), r"is a text file \(it starts with 'hello world these are not")
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    _load_fails(model, str(empty), r"is empty \(0 bytes\)")
    page = tmp_path / f"page{suffix}"
    page.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    _load_fails(model, str(page), "is an HTML/XML page")


def test_text_file_named_npz_is_not_called_pickled(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_text("stem/kernel = 0.1, 0.2\n")
    with pytest.raises(CheckpointError) as info:
        keras_mixer.load_weights(build(TINY), str(path))
    assert "pickled" not in str(info.value)
    assert "is a text file (it starts with 'stem/kernel = 0.1, 0.2')" in str(info.value)


def test_truncated_npz_says_so(tmp_path):
    model = build(TINY)
    full = checkpoints.save_weights(model, tmp_path / "full.npz")
    data = open(full, "rb").read()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 3])
    _load_fails(model, str(tmp_path / "cut.npz"), "is a truncated or corrupt zip archive")


def npz_with_header(path, shape, descr="<f4", data=b"\0" * 64):
    """An .npz whose one array's header says ``shape`` but holds only ``data``."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": descr, "fortran_order": False,
                                                 "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("stem/kernel.npy", member.getvalue() + data)
    return str(path)


def test_npz_header_declaring_a_huge_array_is_a_corrupt_header(tmp_path):
    """4 TiB declared in a 64-byte member: reported before NumPy tries to allocate it."""
    path = npz_with_header(tmp_path / "huge.npz", (2**40,))
    _load_fails(build(TINY), path, r"array 'stem/kernel' declares an array of 4 TiB "
                                   r"\(shape \(1099511627776,\), float32\).*: corrupt header")


def test_truncated_keras_file_is_not_reported_as_missing(tmp_path):
    """--init and load_model read .keras files through models.load_keras_file."""
    data = open(os.path.join(TESTS_DATA, "mixer_v0_1_0_tiny.keras"), "rb").read()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.keras: the file is a truncated or corrupt zip "
                                         r"archive") as info:
        keras_mixer.load_model(str(cut))
    assert "not found" not in str(info.value)
    text = tmp_path / "notes.keras"
    text.write_text("a model\n")
    with pytest.raises(ValueError, match=r"the file is a text file \(it starts with 'a model'\)"):
        keras_mixer.models.load_keras_file(str(text))


def test_keras_file_with_a_damaged_member_says_so(tmp_path):
    source = os.path.join(TESTS_DATA, "mixer_v0_1_0_tiny.keras")
    damaged = tmp_path / "damaged.keras"
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("model.weights.h5")
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(open(source, "rb").read())
    for i in range(offset + 2000, offset + 2064):
        data[i] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged.keras: the file is corrupt \(its member "
                                         r"'model.weights.h5' fails its CRC check\)"):
        keras_mixer.load_model(str(damaged))


# ------------------------------------------------------------------ temporary files of killed writers


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def temp_name_of(pid, rest):
    """A temporary name as process ``pid`` on this host writes it."""
    return files.temp_prefix().replace(f"p{os.getpid()}h", f"p{pid}h") + rest


def test_stale_temps_of_killed_writers_are_removed(tmp_path):
    dead = dead_pid()
    (tmp_path / temp_name_of(dead, "abc-w.npz")).write_bytes(b"half")
    (tmp_path / temp_name_of(dead, "dir")).mkdir()
    (tmp_path / temp_name_of(dead, "dir") / "saved_model.pb").write_bytes(b"half")
    live = tmp_path / temp_name_of(os.getpid(), "abc-w.npz")  # a writer still at work
    live.write_bytes(b"busy")
    unknown_recent = tmp_path / ".tmp-3-xyz"  # an older name: the writer cannot be checked
    unknown_recent.mkdir()
    unknown_old = tmp_path / ".tmp-abcdef.npz"
    unknown_old.write_bytes(b"old")
    two_hours_ago = time.time() - 7200
    os.utime(unknown_old, (two_hours_ago, two_hours_ago))
    keep = tmp_path / "w.npz"
    keep.write_bytes(b"done")

    removed = files.remove_stale_temps(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == sorted(
        [temp_name_of(dead, "abc-w.npz"), temp_name_of(dead, "dir"), ".tmp-abcdef.npz"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, ".tmp-3-xyz", "w.npz"])


def test_saving_again_removes_what_a_killed_save_left(tmp_path):
    dead = dead_pid()
    orphan = tmp_path / temp_name_of(dead, "k3j2h1-w.npz")
    orphan.write_bytes(b"half a checkpoint")
    other_target = tmp_path / temp_name_of(dead, "k3j2h1-other.npz")
    other_target.write_bytes(b"left for a save of other.npz")
    checkpoints.save_weights(build(TINY), tmp_path / "w.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other_target.name, "w.npz"])
