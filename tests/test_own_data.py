"""Training on your own folder of images: the traps a new user walked into (issue 24).

A run on other data exports under its own name and never becomes a new version of
another served model; evaluate says which split it scores and warns about training
images; folders train at a size that photos need; flags are never abbreviated; the
gallery names classes; a top-k is named by its k.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.processes import run_script
from helpers.tiny import tiny_classifier

from keras_mixer import cli, deploy, evaluate, visualize
from keras_mixer.training import TrainConfig, train

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

CLASSES = ("circle", "square")
TINY_RUN = dict(image_size=16, num_blocks=1, hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=16,
                epochs=1, batch_size=6, progress="0")


def write_folder(root, per_class=10):
    """``root/<class>/<i>.png``: bright squares of a colour per class, 24x24."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            image = np.full((24, 24, 3), 20, np.uint8)
            image[4:20, 4:20, label] = 200 + rng.integers(0, 50)
            tf.io.write_file(os.path.join(root, name, f"{i}.png"), tf.io.encode_png(image))
    return root


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """The main job's name taken by a 10-class model; then a run on a 2-class folder."""
    root = tmp_path_factory.mktemp("own")
    folder = write_folder(str(root / "photos"))
    export_dir = str(root / "saved_models")
    served = str(root / "served.keras")
    tiny_classifier().save(served)
    deploy.export_saved_model(served, export_dir, name="mixer")
    config = TrainConfig(data=folder, run_dir=str(root / "runs" / "photos"), export_dir=export_dir,
                         **TINY_RUN)
    results = train(config)
    return dict(root=root, folder=folder, export_dir=export_dir, config=config, results=results,
                model_path=os.path.join(config.run_dir, "model.keras"))


# 1. A run on your own folder never silently replaces the served model.

def test_a_run_exports_under_its_own_name(own_run):
    assert own_run["config"].export_name == "photos"
    assert own_run["results"]["export"] == os.path.join(own_run["export_dir"], "photos", "1")
    assert sorted(os.listdir(os.path.join(own_run["export_dir"], "mixer"))) == ["1"]
    assert TrainConfig().export_name == "mixer"  # the main job keeps its name
    assert TrainConfig(run_dir="runs/my photos").export_name == "my_photos"


@pytest.mark.every_backend  # under jax and torch the export checks the task in the calling process
def test_another_task_is_refused_under_a_served_name(own_run, tmp_path):
    run_dir = str(tmp_path / "run")
    config = TrainConfig(data=own_run["folder"], run_dir=run_dir, export_dir=own_run["export_dir"],
                         export_name="mixer", **TINY_RUN)
    with pytest.raises(ValueError, match=r"serves another model \(classes, image size and architecture differ\).*"
                                         r"--export-name NAME"):
        train(config)
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))  # refused before training
    with pytest.raises(ValueError, match=r"--name NAME.*--allow-new-task"):
        deploy.export_saved_model(own_run["model_path"], own_run["export_dir"], name="mixer")
    assert sorted(os.listdir(os.path.join(own_run["export_dir"], "mixer"))) == ["1"]
    path = deploy.export_saved_model(own_run["model_path"], own_run["export_dir"], name="mixer",
                                     allow_new_task=True)  # asked for: published
    assert path == os.path.join(own_run["export_dir"], "mixer", "2")


# 2. evaluate says which split it scores, and warns about the images the model trained on.

def test_evaluate_scores_the_held_out_split_of_a_flat_folder(own_run):
    lines = []
    result = evaluate.evaluate(own_run["model_path"], own_run["folder"], log=lines.append)
    assert result["num_images"] == 2  # every 10th of 20 images, as training held them out
    assert "every 10th image" in lines[0] and result["training_overlap"] == 0
    assert not [line for line in lines if line.startswith("warning:")]


def test_evaluate_warns_when_it_scores_training_images(own_run):
    for artifact in (own_run["model_path"], own_run["results"]["export"]):
        lines = []
        result = evaluate.evaluate(artifact, own_run["folder"], split="all", log=lines.append)
        assert result["num_images"] == 20 and result["training_overlap"] == 18
        assert [line for line in lines if line.startswith("warning: 18 of these 20 images")], lines


# 3. Own images do not train at 16 px without a word.

def test_folder_data_trains_at_a_photo_size_and_says_so(own_run):
    config = TrainConfig(data=own_run["folder"])
    assert config.image_size == 64
    assert "resized to 64x64 px" in config.image_size_notice()
    assert TrainConfig().image_size == 16 and not TrainConfig().image_size_notice()
    assert TrainConfig(variant="B/16").image_size == 224
    assert not TrainConfig(data=own_run["folder"], image_size=32).image_size_notice()


# 4. Flags are never abbreviated; an unknown flag shows the command's own usage.

@pytest.mark.parametrize("argv", [["train", "--epoch", "3"], ["evaluate", "m.keras", "--data", "f", "--spl", "all"],
                                  ["export", "saved-model", "m.keras", "--nam", "x"]])
def test_abbreviated_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: keras-mixer {argv[0]}" in err and "unrecognized arguments" in err


def test_unknown_flag_prints_the_subcommand_usage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--bogus", "1"])
    err = capsys.readouterr().err
    assert err.startswith("usage: keras-mixer train") and "--epochs" in err
    with pytest.raises(SystemExit):
        cli.main(["--bogus"], command="train", prog="train.py")
    assert capsys.readouterr().err.startswith("usage: train.py")
    assert cli.parse_args(["train", "--epochs", "3"]).epochs == 3  # whole flags work


# 6. A TFLite export prints its rows, not the converter's logs (rejections: test_serving.py).

@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="exports run under TensorFlow whatever the backend: checked once")
def test_tflite_export_prints_no_converter_logs(own_run, tmp_path):
    calibration = str(tmp_path / "calibration.npy")
    np.save(calibration, np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype("uint8"))
    result = run_script("export.py", ["tflite", own_run["model_path"], "--modes", "float32", "int8",
                                      "--representative-images", calibration, "--export-dir",
                                      str(tmp_path)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "fully_quantize" not in output and "XNNPACK" not in output, output
    assert len(result.stdout.splitlines()) == 4, output  # a row per mode, a "Wrote" line per file
    assert os.path.isfile(str(tmp_path / "photos.labels.txt"))  # name and labels from the run

# 7. The gallery names the model's classes; a top-k is named by its k.

def test_gallery_names_the_classes_of_the_run(own_run, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(visualize, "plot_predictions",
                        lambda model, images, out, **kwargs: seen.update(kwargs))
    image = os.path.join(own_run["folder"], "circle", "0.png")
    assert cli.main(["visualize", "gallery", own_run["model_path"], "--out",
                     str(tmp_path / "g.png"), image]) == 0
    assert seen["labels"] == list(CLASSES)  # the run's labels.txt
    predictions, _ = visualize.predict_images(own_run["results"]["model"], [image], top=2,
                                              labels=seen["labels"])
    assert sorted(name for _, name, _ in predictions[0]) == list(CLASSES)


def test_top_k_is_named_by_its_k(own_run):
    result = evaluate.evaluate(own_run["model_path"], own_run["folder"], log=None)
    assert result["top_k"] == 2 and evaluate.summary_line(result).split()[2] == "top-2"
    assert own_run["results"]["top_k"] == 2
