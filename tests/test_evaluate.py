"""`keras-mixer evaluate`: a trained run, its SavedModel and its TFLite file agree image by image.

One tiny Mixer is trained (on this backend) on "photos": scikit-learn's digits
upsampled to 40x48 with colour and noise, saved as JPEG, larger than the model's
16x16 input and not square, so the central crop (0.875) and the antialiased
resize both matter. Evaluating its ``.keras`` file (training's evaluation
pipeline) and its SavedModel (the served ``serving_bytes`` path) must give the
same predictions and the run's own final accuracy.
"""

import csv
import json
import os
import shutil
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.processes import run_script

from keras_mixer import cli, data, deploy, images, models
from keras_mixer.deploy import saved_model, signatures, tflite
from keras_mixer.evaluate import evaluate
from keras_mixer.training import TrainConfig, train

CLASSES = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four"}
TEST_PER_CLASS, TRAIN_PER_CLASS = 40, 100
PHOTO_SHAPE = (40, 48)  # height, width: larger than the model's 16x16, not square
CROP = 0.875


def write_photos(root, seed=0):
    """Digits as coloured, noisy JPEG "photos" in ``root/{train,test}/<class>/``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for digit, name in CLASSES.items():
        pictures = digits.images[digits.target == digit][:TEST_PER_CLASS + TRAIN_PER_CLASS] / 16.0
        for i, picture in enumerate(pictures):
            split = "test" if i < TEST_PER_CLASS else "train"
            ink = tf.image.resize(picture[..., None], PHOTO_SHAPE, method="bilinear").numpy()
            background, colour = rng.uniform(0, 120, 3), rng.uniform(150, 255, 3)
            pixels = background + ink * (colour - background) + rng.normal(0, 8, PHOTO_SHAPE + (3,))
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            encoded = tf.io.encode_jpeg(np.clip(np.round(pixels), 0, 255).astype("uint8"), quality=90)
            tf.io.write_file(os.path.join(folder, f"{i:03d}.jpg"), encoded)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Mixer trained on the photos (this backend) and exported with its labels."""
    root = tmp_path_factory.mktemp("evaluate")
    folder = write_photos(str(root / "photos"))
    config = TrainConfig(data=folder, image_size=16, patch_size=4, num_blocks=1, hidden_dim=16,
                         tokens_mlp_dim=8, channels_mlp_dim=32, epochs=3, batch_size=16,
                         learning_rate=1e-2, crop_fraction=CROP, export=True, export_dir=str(root / "models"),
                         export_name="photos", run_dir=str(root / "run"), progress="0")
    results = train(config)
    with open(os.path.join(config.run_dir, "results.json")) as f:
        recorded = json.load(f)
    return types.SimpleNamespace(
        root=root, folder=folder, keras_path=os.path.join(config.run_dir, "model.keras"),
        model_dir=str(root / "models" / "photos"), version_dir=results["export"],
        results=recorded, num_images=TEST_PER_CLASS * len(CLASSES))


def agreement(a, b):
    return float(np.mean([x["prediction"] == y["prediction"] for x, y in zip(a["rows"], b["rows"])]))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_keras_and_saved_model_agree_image_by_image(trained, tmp_path):
    out = str(tmp_path / "predictions.csv")
    from_keras = evaluate(trained.keras_path, trained.folder, log=None)
    lines = []
    served = evaluate(trained.model_dir, trained.folder, out=out, log=lines.append)

    n = trained.num_images
    assert from_keras["num_images"] == served["num_images"] == n
    assert (from_keras["kind"], served["kind"]) == ("keras", "saved_model")
    assert served["artifact"] == trained.version_dir  # NAME/ -> its highest version
    assert from_keras["crop_fraction"] == served["crop_fraction"] == CROP
    assert from_keras["interpolation"] == served["interpolation"] == "bilinear"
    assert agreement(from_keras, served) >= 0.995
    np.testing.assert_allclose(served["probabilities"], from_keras["probabilities"], atol=1e-4)
    # The run's final evaluation is what the server achieves on the same images.
    assert abs(trained.results["top1"] - served["top1"]) <= 1 / n
    assert abs(trained.results["top1"] - from_keras["top1"]) <= 1 / n
    assert trained.results["test_examples"] == n
    assert 0.5 < served["top1"] <= served["top5"]  # it learnt (chance: 0.2): agreement means something

    assert lines[-1] == f"top-1 {served['top1']:.4f} top-5 {served['top5']:.4f} on {n} images"
    rows = read_csv(out)
    assert rows[0] == ["path", "label", "prediction", "score"]
    assert len(rows) == n + 1
    assert {row[1] for row in rows[1:]} == set(CLASSES.values())
    assert all(row[2] in CLASSES.values() and 0.0 < float(row[3]) <= 1.0 for row in rows[1:])
    assert np.mean([row[1] == row[2] for row in rows[1:]]) == pytest.approx(served["top1"])
    first = served["rows"][0]
    assert rows[1] == [first["path"], first["label"], first["prediction"], f"{first['score']:.6f}"]
    assert os.path.dirname(os.path.dirname(first["path"])) == os.path.join(trained.folder, "test")


def test_a_logits_model_is_evaluated_as_its_test_step_computes(trained, tmp_path, fused_traces):
    # A model ending in logits is evaluated through a softmax wrapper, which Keras' predict
    # would run with plain ops; evaluate fuses it as the model's own test step does (TensorFlow).
    model = models.load_keras_file(trained.keras_path, compile=False)
    logits = models.MlpMixer(**{**model.config.to_kwargs(), "classifier_activation": None})
    logits.set_weights(model.get_weights())
    logits_path = str(tmp_path / "logits.keras")
    logits.save(logits_path)
    fused = fused_traces
    on_tensorflow = keras.backend.backend() == "tensorflow"
    from_logits = evaluate(logits_path, trained.folder, log=None)
    assert bool(fused) == on_tensorflow
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    fused.clear()
    direct = signatures.keras_probabilities(logits, pixels)  # the export checks' Keras side
    assert bool(fused) == on_tensorflow
    from_probabilities = evaluate(trained.keras_path, trained.folder, log=None)
    np.testing.assert_allclose(from_logits["probabilities"], from_probabilities["probabilities"], atol=1e-5)
    np.testing.assert_allclose(direct, signatures.keras_probabilities(model, pixels), atol=1e-5)


def test_tflite_file_agrees_with_keras(trained, tmp_path):
    (row,) = deploy.export_tflite(trained.keras_path, str(tmp_path), name="photos",
                                  modes=["float32"])
    info = tflite.read_info(row["path"])  # the crop travels with the file
    assert info["crop_fraction"] == CROP and info["image_size"] == [16, 16]
    assert info["interpolation"] == "bilinear"
    from_tflite = evaluate(row["path"], trained.folder, log=None)
    from_keras = evaluate(trained.keras_path, trained.folder, log=None)
    assert from_tflite["kind"] == "tflite" and from_tflite["num_images"] == trained.num_images
    assert agreement(from_tflite, from_keras) >= 0.995
    np.testing.assert_allclose(from_tflite["probabilities"], from_keras["probabilities"], atol=1e-4)
    with pytest.raises(ValueError, match="Leave it out"):
        evaluate(row["path"], trained.folder, crop_fraction=1.0, log=None)
    os.remove(row["path"] + tflite.INFO_SUFFIX)
    with pytest.raises(ValueError, match="pass --crop-fraction"):
        evaluate(row["path"], trained.folder, log=None)
    assert evaluate(row["path"], trained.folder, crop_fraction=CROP, log=None)["top1"] == \
        from_tflite["top1"]


def test_served_bytes_see_the_pixels_of_the_image_policy(trained, tmp_path):
    """Fails on the old behaviour: the signature without the crop, eval without antialias."""
    rng = np.random.default_rng(3)
    smooth = tf.image.resize(rng.uniform(0, 255, (12, 18, 3)), (300, 450)).numpy()  # a large photo
    path = str(tmp_path / "large.jpg")
    tf.io.write_file(path, tf.io.encode_jpeg(smooth.astype("uint8"), quality=95))
    policy = images.load_files([path], (16, 16), CROP)

    model = models.load_keras_file(trained.keras_path, compile=False)
    assert model.config.crop_fraction == CROP  # the run's crop travels with the model
    loaded = tf.saved_model.load(trained.version_dir)
    served = loaded.signatures[signatures.SERVING_BYTES](
        image_bytes=tf.constant([open(path, "rb").read()]))["probabilities"].numpy()
    np.testing.assert_allclose(served, signatures.keras_probabilities(model, policy), atol=1e-5)

    # Training's evaluation pipeline gives the same pixels...
    source = data.files_source([path], [0], ["only"])
    (pipeline, _), = data.make_dataset(source, 1, 16, training=False, crop_fraction=CROP)
    np.testing.assert_allclose(pipeline.numpy(), policy, atol=1e-3)
    # ...which the old ones were not: no crop, or no antialias, moves pixels by far more.
    decoded = tf.cast(images.decode(tf.io.read_file(path)), tf.float32)
    no_crop = tf.image.resize(decoded, (16, 16), antialias=True).numpy()
    no_antialias = tf.image.resize(images.center_crop(decoded, CROP), (16, 16)).numpy()
    assert np.abs(no_crop - policy[0]).max() > 5 and np.abs(no_antialias - policy[0]).max() > 5


def test_evaluate_errors(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="Artifact not found"):
        evaluate(str(tmp_path / "missing.keras"), trained.folder, log=None)
    notes = tmp_path / "model.txt"
    notes.write_text("not a model")
    with pytest.raises(ValueError, match="expected a .keras model file, a .tflite file, or a SavedModel"):
        evaluate(str(notes), trained.folder, log=None)
    with pytest.raises(ValueError, match="baked into its serving signature"):
        evaluate(trained.version_dir, trained.folder, crop_fraction=0.5, log=None)
    os.makedirs(tmp_path / "empty" / "zero")
    with pytest.raises(ValueError, match="has no images"):
        evaluate(trained.keras_path, str(tmp_path / "empty"), log=None)
    with pytest.raises(FileNotFoundError, match="Image folder not found"):
        evaluate(trained.keras_path, str(tmp_path / "nowhere"), log=None)

    # Other classes than the model's: named, before anything runs.
    other = tmp_path / "other"
    for name in ("zero", "one", "two", "three", "five"):
        os.makedirs(other / name)
        tf.io.write_file(str(other / name / "a.jpg"), tf.io.encode_jpeg(tf.zeros((20, 20, 3), tf.uint8)))
    with pytest.raises(ValueError, match="not in the folder: four; not in the model: five"):
        evaluate(trained.version_dir, str(other), split="all", log=None)  # 1 image a class
    os.rename(other / "five", other / "six")
    os.makedirs(other / "seven")
    tf.io.write_file(str(other / "seven" / "a.jpg"), tf.io.read_file(str(other / "six" / "a.jpg")))
    with pytest.raises(ValueError, match="has 5 classes but the folder has 6"):
        evaluate(trained.keras_path, str(other), split="all", log=None)


def test_undecodable_images_are_named(trained, tmp_path, capsys):
    """A zero-byte, a text and a truncated image: every artifact kind names all three files."""
    folder = tmp_path / "photos"
    for name in CLASSES.values():
        os.makedirs(folder / name)
        shutil.copy(os.path.join(trained.folder, "test", name, "000.jpg"), folder / name / "000.jpg")
    good = (folder / "zero" / "000.jpg").read_bytes()
    bad = {"empty.jpg": b"", "text.jpg": b"hello, not a picture", "truncated.jpg": good[:len(good) // 2]}
    for name, content in bad.items():
        (folder / "zero" / name).write_bytes(content)
    tflite_path = deploy.export_tflite(trained.keras_path, str(tmp_path / "tflite"), name="photos",
                                       modes=["float32"])[0]["path"]
    for artifact in (trained.keras_path, trained.version_dir, tflite_path):
        with pytest.raises(ValueError, match="3 of 8 images in .* cannot be decoded") as error:
            evaluate(artifact, str(folder), split="all", log=None)
        assert all(str(folder / "zero" / name) in str(error.value) for name in bad), error.value
    with pytest.raises(ValueError, match=r"No images to evaluate: the test split of .*--split all "
                                         r"scores every image\) holds none\."):
        evaluate(trained.keras_path, str(folder), log=None)  # 1-4 images a class: none held out
    assert cli.main(["evaluate", trained.keras_path, "--data", str(folder), "--split", "all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 3 of 8 images in ") and "Traceback" not in err
    assert all(str(folder / "zero" / name) in err for name in bad)


def test_cli(trained, tmp_path, capsys):
    out = str(tmp_path / "predictions.csv")
    assert cli.main(["evaluate", trained.model_dir, "--data", trained.folder, "--out", out,
                     "--batch-size", "64"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("top-1 ") and printed[-1].endswith(f" on {trained.num_images} images")
    assert len(read_csv(out)) == trained.num_images + 1

    assert cli.main(["evaluate", str(tmp_path / "missing"), "--data", trained.folder]) == 2
    assert "error: Artifact not found" in capsys.readouterr().err
    assert cli.main(["evaluate", trained.version_dir, "--data", trained.folder,
                     "--crop-fraction", "1.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"crops {CROP}" in err
    assert cli.main(["evaluate", trained.version_dir, "--data", trained.folder,
                     "--interpolation", "bicubic"]) == 2  # the export records its filter
    assert "prepares images with 'bilinear' resizing; --interpolation bicubic" in capsys.readouterr().err


def test_script(trained):
    """``python scripts/evaluate.py`` as a user runs it, on the SavedModel's version directory."""
    with open(os.path.join(trained.version_dir, saved_model.REPORT_FILE)) as f:
        report = json.load(f)
    assert (report["crop_fraction"], report["interpolation"]) == (CROP, "bilinear")
    done = run_script("evaluate.py", [trained.version_dir, "--data", trained.folder,
                                      "--crop-fraction", str(CROP)], timeout=300)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("top-1 ") and last.endswith(f" on {trained.num_images} images")
