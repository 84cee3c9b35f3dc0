"""Token-mixing pictures (paper Fig. 5), prediction gallery, and the visualize/convert scripts."""

import os

import keras
import numpy as np
import pytest
from helpers import reference
from PIL import Image

import keras_mixer
from keras_mixer import MlpMixer, checkpoints, cli, visualize

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True


def tiny_model():
    model = MlpMixer(8, 2, 32, 16, 64, input_shape=(32, 32, 3), num_classes=1000)
    checkpoints.load_params(model, reference.random_params(8, 3, 32, 16, 16, 64, 2, num_classes=1000))
    return model


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def write_images(directory, n=3):
    paths = []
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, (40 + 8 * i, 50, 3), dtype=np.uint8)
        path = os.path.join(directory, f"image_{i}.png" if i % 2 else f"image_{i}.jpg")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_token_mixing_units_are_the_kernel_on_the_patch_grid():
    model = MlpMixer(8, 1, 16, 5, 32, input_shape=(16, 32, 3), num_classes=3)  # 2x4 tokens
    params = checkpoints.get_params(model)
    kernel = np.arange(8 * 5, dtype="float32").reshape(8, 5)
    params["MixerBlock_0/token_mixing/Dense_0/kernel"] = kernel
    checkpoints.load_params(model, params)
    units = visualize.token_mixing_units(model, 0, sort_by_frequency=False)
    assert units.shape == (5, 2, 4)
    np.testing.assert_array_equal(units[1], kernel[:, 1].reshape(2, 4))  # row-major tokens
    with pytest.raises(ValueError, match="out of range"):
        visualize.token_mixing_units(model, 3)


def test_units_sorted_from_smooth_to_high_frequency():
    model = MlpMixer(8, 1, 16, 3, 32, input_shape=(64, 64, 3), num_classes=3)  # 8x8 tokens
    params = checkpoints.get_params(model)
    x = np.arange(8)
    patterns = [np.cos(np.pi * f * x / 4)[None, :].repeat(8, 0) for f in (3, 1, 2)]
    params["MixerBlock_0/token_mixing/Dense_0/kernel"] = np.stack(patterns, -1).reshape(64, 3).astype("float32")
    checkpoints.load_params(model, params)
    units = visualize.token_mixing_units(model, 0)
    np.testing.assert_allclose(units, np.stack([patterns[1], patterns[2], patterns[0]]), atol=1e-6)


def test_plot_token_mixing_png(tmp_path):
    path = visualize.plot_token_mixing(tiny_model(), tmp_path / "tokens.png", blocks=(0, -1),
                                       num_units=8, columns=4)
    width, height = png_size(path)
    assert width > 100 and height > 100
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.png"]


def test_prediction_gallery(tmp_path):
    model = tiny_model()
    paths = write_images(str(tmp_path))
    predictions, images = visualize.predict_images(model, paths, top=2)
    assert images.shape == (3, 32, 32, 3) and len(predictions) == 3
    expected = keras_mixer.decode_predictions(
        keras.ops.convert_to_numpy(model(images, training=False)), top=2)
    assert [[p[0] for p in row] for row in predictions] == [[p[0] for p in row] for row in expected]
    png_size(visualize.plot_predictions(model, paths, tmp_path / "gallery.png", top=2))
    with pytest.raises(FileNotFoundError):
        visualize.predict_images(model, [str(tmp_path / "missing.jpg")])


def test_predictions_of_no_images_are_a_clear_error():
    model = tiny_model()
    for mode in ("mixer", "miil"):
        with pytest.raises(ValueError, match="No images given"):
            visualize.predict_images(model, [], mode=mode)


def run_main(command, prog, capsys, *args):
    """A command in this process, as its script runs it (``python scripts/PROG ARGS``)."""
    capsys.readouterr()
    assert cli.main(list(args), command=command, prog=prog) == 0
    return capsys.readouterr().out


def test_convert_and_visualize_scripts(tmp_path, capsys):
    params = reference.random_params(8, 3, 32, 16, 16, 64, 2, num_classes=1000)
    checkpoint = str(tmp_path / "official.npz")
    with open(checkpoint, "wb") as f:
        np.savez(f, **params)
    out = run_main("convert", "convert_weights.py", capsys, checkpoint, str(tmp_path / "m.keras"),
                   "--image-size", "64")
    assert "Loaded 30 tensors" in out and "Resolution transfer" in out
    assert out.splitlines()[-1] == f"Wrote {tmp_path / 'm.keras'}"
    out = run_main("convert", "convert_weights.py", capsys, checkpoint, str(tmp_path / "m.safetensors"),
                   "--num-classes", "10")
    assert "Skipped the checkpoint's head" in out
    model = keras.saving.load_model(str(tmp_path / "m.keras"))
    assert model.input.shape[1:3] == (64, 64)
    assert model.get_layer("mixer_block_0").tokens_mlp_dim == 64

    run_main("visualize", "visualize.py", capsys, "tokens", str(tmp_path / "m.keras"), "--blocks", "0", "1",
             "--units", "16", "--out", str(tmp_path / "tokens.png"))
    png_size(tmp_path / "tokens.png")
    images = write_images(str(tmp_path), 2)
    out = run_main("visualize", "visualize.py", capsys, "gallery", checkpoint,
                   "--out", str(tmp_path / "gallery.png"), *images)
    assert out == f"Wrote {tmp_path / 'gallery.png'}\n"
    png_size(tmp_path / "gallery.png")
