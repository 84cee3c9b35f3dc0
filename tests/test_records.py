"""keras-mixer prepare: an image folder written once as TFRecord shards (a TFDS dataset), read
by training as the folder itself: the same images, labels and order."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers.folders import count_decodes, random_classes, write_image_folder
from helpers.processes import ROOT, worker_env

from keras_mixer import data, records, training
from keras_mixer.cli import main

BACKEND_INDEPENDENT = True  # tf.data pipelines and files: the same under every backend


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Class folders directly under the root (every 10th image is the test split): 33 PNGs and
    JPEGs of 3 classes, and one corrupt file."""
    root = str(tmp_path_factory.mktemp("records") / "pets")
    write_image_folder(root, random_classes(30, num_classes=3, size=12))
    rng = np.random.default_rng(5)
    for i in range(3):
        pixels = rng.integers(0, 256, (10, 14, 3)).astype("uint8")
        tf.io.write_file(os.path.join(root, f"c{i}", f"photo{i}.jpg"), tf.io.encode_jpeg(pixels))
    with open(os.path.join(root, "c2", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return root


def examples(source):
    return [(x.numpy(), int(y)) for x, y in source.images()]


def assert_same_examples(got, expected):
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected):
        assert y == ey
        np.testing.assert_array_equal(x, ex)


def test_prepared_records_read_as_the_folder(folder, tmp_path):
    data.load_splits(folder)  # the folder was used before: its images are checked already
    out = str(tmp_path / "out")
    with count_decodes() as decoded:
        result = records.prepare(folder, out, shard_bytes=2000, log=None)
    assert decoded[0] == 0  # the check's results were remembered
    assert result["examples"] == {"train": 30, "test": 3} and result["shards_written"] > 2
    assert [(split, os.path.basename(path)) for split, path, _ in result["unreadable"]] == [
        ("train", "broken.png")]
    assert data.is_prepared(out) and not os.path.exists(out + records.PARTIAL_SUFFIX)
    for split in ("train", "test"):
        with count_decodes() as decoded:
            prepared = data.load_source(out, split)
        assert decoded[0] == 0  # nothing is checked at start
        original = data.load_source(folder, split)
        assert prepared.class_names == original.class_names == ["c0", "c1", "c2"]
        assert prepared.num_examples == original.num_examples
        assert_same_examples(examples(prepared), examples(original))
        # Each process of a job reads its own part; together they are the split.
        parts = [data.load_source(out, split, shard=(2, i)) for i in range(2)]
        assert sum(p.num_examples for p in parts) == original.num_examples
        assert {p.total_examples for p in parts} == {original.num_examples}
        assert sorted(y for p in parts for _, y in examples(p)) == sorted(
            y for _, y in examples(original))
    # TFDS reads it as its own: the format is the library's.
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(out)
    assert builder.info.splits["train"].num_examples == 30
    assert builder.info.features["label"].names == ["c0", "c1", "c2"]


def test_prepare_is_atomic_and_resumes_after_a_kill(folder, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    write_shard = records._write_shard
    calls = []

    def killed_after_two(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill between two shards
        calls.append(args[0])
        write_shard(*args)

    monkeypatch.setattr(records, "_write_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        records.prepare(folder, out, shard_bytes=2000, log=None)
    partial = out + records.PARTIAL_SUFFIX
    assert not os.path.exists(out)  # nothing half-written where training would read it
    assert sorted(os.listdir(partial)) == sorted(
        [records.PLAN_FILE] + [os.path.basename(c) for c in calls])
    monkeypatch.setattr(records, "_write_shard", write_shard)
    result = records.prepare(folder, out, shard_bytes=2000, log=None)
    fresh = records.prepare(folder, str(tmp_path / "fresh"), shard_bytes=2000, log=None)
    assert result["shards_written"] == fresh["shards_written"] - 2  # went on after the two
    assert sorted(os.listdir(out)) == sorted(os.listdir(str(tmp_path / "fresh")))
    for name in os.listdir(out):
        if ".tfrecord-" in name:
            assert open(os.path.join(out, name), "rb").read() == open(
                os.path.join(str(tmp_path / "fresh"), name), "rb").read()
    again = records.prepare(folder, out, shard_bytes=2000, log=None)
    assert again["shards_written"] == 0


def test_prepare_refuses_an_output_of_other_files(folder, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not hold records of these images"):
        records.prepare(folder, str(taken), log=None)
    assert (taken / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="outside the image folder"):
        records.prepare(folder, os.path.join(folder, "records"), log=None)


def test_prepare_command(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--help"])
    assert exit_.value.code == 0 and "TFRecord" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "error: Image folder" in capsys.readouterr().err
    assert main(["prepare", folder, str(tmp_path / "out"), "--shard-mb", "0.002"]) == 0
    printed = capsys.readouterr().out
    assert "shard 1 of" in printed and "prepared" in printed and "broken.png" in printed
    assert data.is_prepared(str(tmp_path / "out"))


@pytest.mark.every_backend  # trains a model
def test_training_on_records_equals_training_on_the_folder(folder, tmp_path):
    """The same run from the folder and from its records: the same batches, the same model."""
    out = str(tmp_path / "records")
    records.prepare(folder, out, shard_bytes=2000, log=None)
    runs = {}
    for name, source in (("folder", folder), ("records", out)):
        config = training.TrainConfig(data=source, image_size=8, patch_size=4, num_blocks=1,
                                      hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=32,
                                      epochs=1, batch_size=8, flip=True, export=False,
                                      progress="0", run_dir=str(tmp_path / name))
        result = training.train(config)
        runs[name] = (result, [keras.ops.convert_to_numpy(w) for w in result["model"].weights])
    (folder_run, folder_weights), (records_run, records_weights) = runs["folder"], runs["records"]
    assert records_run["test_examples"] == folder_run["test_examples"] == 3
    assert records_run["loss"] == pytest.approx(folder_run["loss"], abs=1e-6)
    for a, b in zip(records_weights, folder_weights):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_guide_examples_run_as_written(tmp_path):
    """The `docs: run` blocks of docs/guides/large-data.md, in order, as written (tests/test_docs.py
    runs them with tiny settings, on TensorFlow only), in a folder with the clone's examples/."""
    with open(os.path.join(ROOT, "docs", "guides", "large-data.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"<!-- docs: run[^>]*-->\n```bash\n(.*?)```", text, re.S)
    assert blocks
    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    env = worker_env(keras.backend.backend())
    env["PATH"] = os.path.dirname(os.path.abspath(sys.executable)) + os.pathsep + env["PATH"]
    for command in (line for block in blocks for line in block.splitlines() if line.strip()):
        done = subprocess.run(["bash", "-c", command], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    assert os.path.isfile(tmp_path / "runs" / "photos" / "model.keras")
