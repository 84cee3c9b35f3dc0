"""What a user sees when something is wrong: one `error:` line naming the problem, never a
traceback, and no setting silently ignored (issue 27 §2, §4, §5).

Most cases fail before any model runs, so they are cheap on every backend; the ones that
need a subprocess or a model keep it tiny.
"""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import reference
from helpers.processes import run_cli_with_file_limit, worker_env
from helpers.tiny import LABELS, tiny_classifier

from keras_mixer import checkpoints, cli, data, distribute, files, models
from keras_mixer.deploy import client as serving
from keras_mixer.deploy.devserver import ModelRepository
from keras_mixer.training import TrainConfig

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

# A run that trains in seconds when it runs at all.
QUICK_RUN = ["--epochs", "1", "--steps-per-epoch", "1", "--num-blocks", "1", "--hidden-dim", "8",
             "--tokens-mlp-dim", "8", "--channels-mlp-dim", "8", "--batch-size", "8",
             "--progress", "0", "--no-export"]


def user_error(capsys, argv, *fragments):
    """``keras-mixer ARGV`` exits 2 with an ``error:`` line holding every fragment, no traceback."""
    assert cli.main([str(arg) for arg in argv]) == 2
    captured = capsys.readouterr()
    first = captured.err.splitlines()[0]
    assert first.startswith("error: ") and "Traceback" not in captured.err, captured.err
    assert captured.err.rstrip().endswith("(run with --verbose for the traceback)")
    for fragment in fragments:
        assert fragment in captured.err, captured.err
    return captured.err


def usage_error(capsys, argv, fragment):
    """argparse refuses ``argv`` (exit 2) naming ``fragment``, before the command runs."""
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args([str(arg) for arg in argv])
    assert exit_.value.code == 2
    assert fragment in capsys.readouterr().err


def write_png(path, size=32, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(tf.fill((size, size, 3), tf.constant(value, tf.uint8))))
    return str(path)


def labelled_folder(root, classes=LABELS, per_class=1, size=32):
    """``root/<class>/<i>.png``: a tiny labelled image folder."""
    for index, name in enumerate(classes):
        for i in range(per_class):
            write_png(os.path.join(root, name, f"{i}.png"), size, (index * 20 + i) % 256)
    return str(root)


# ----------------------------------------------------------------------------- §2 names


@pytest.mark.parametrize("name", ["mixer", "mixer_b16", "b16-224.v2", "M1"])
def test_safe_names_pass(name):
    assert files.check_name(name) == name


@pytest.mark.parametrize("name", ["../../evil46", "", "a/b", "/abs", ".", "..", ".tmp-x", "-x",
                                  "a b", "a:b", "x" * 129, None, 3])
def test_unsafe_names_are_refused_naming_the_rule(name):
    with pytest.raises(ValueError, match="a model name is one path component of at most 128 "):
        files.check_name(name)


def test_training_refuses_an_unsafe_export_name(tmp_path, capsys):
    with pytest.raises(ValueError, match="export_name \\(--export-name\\) '../../evil46': a model name"):
        TrainConfig(export_name="../../evil46", run_dir=str(tmp_path / "run"))
    user_error(capsys, ["train", "--export-name", "a/b", "--run-dir", tmp_path / "run", *QUICK_RUN],
               "Invalid export_name (--export-name) 'a/b'")
    assert not os.path.exists(tmp_path / "run")


def test_clients_and_the_server_refuse_unsafe_model_names(exported_mixer, tmp_path, capsys):
    with pytest.raises(ValueError, match="a model name is"):
        serving.make_client("localhost:8500", "rest", model="../admin")
    base = tmp_path / "models"
    shutil.copytree(exported_mixer.export_dir, base)
    shutil.copytree(base / "mixer", base / "bad name")
    repository = ModelRepository(str(base))
    assert repository.describe() == "mixer (version 1)"
    assert "Skipped " in capsys.readouterr().err


# ----------------------------------------------------------------------------- §4 one error line


def test_unknown_keras_backend_is_one_error_line():
    result = subprocess.run([sys.executable, "-m", "keras_mixer.cli", "train", "--help"],
                            env=worker_env("jax", KERAS_BACKEND="tensorflw"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: KERAS_BACKEND='tensorflw' is not a backend keras-mixer "
                                    "runs on: set it to jax, tensorflow or torch")
    assert "Traceback" not in result.stderr


def test_tfds_offline_is_detected_at_once(tmp_path, monkeypatch, capsys):
    """No network: one error line within seconds, instead of minutes of download retries."""
    tfds = pytest.importorskip("tensorflow_datasets")

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    def download(*args, **kwargs):
        raise AssertionError("tried to download while offline")

    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download)
    started = time.monotonic()
    user_error(capsys, ["train", "--data", "mnist", "--data-dir", tmp_path / "tfds",
                        "--run-dir", tmp_path / "run", *QUICK_RUN],
               "TFDS dataset 'mnist' is not prepared", "this machine is offline",
               "Network is unreachable", "--data-dir DIR")
    assert time.monotonic() - started < 60


def rewrite_member(source, target, member, change):
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            content = old.read(info.filename)
            new.writestr(info, change(content) if info.filename == member else content)
    return str(target)


def test_keras_file_with_a_foreign_class_or_bad_json(tmp_path, capsys):
    path = str(tmp_path / "tiny.keras")
    tiny_classifier().save(path)

    def foreign_class(content):
        config = json.loads(content)
        config.update(module="subprocess", class_name="Popen", registered_name=None)
        return json.dumps(config).encode()

    evil = rewrite_member(path, tmp_path / "evil.keras", "config.json", foreign_class)
    user_error(capsys, ["visualize", "tokens", evil, "--out", tmp_path / "t.png"],
               f"Cannot load {evil}: it names the class 'Popen' (module 'subprocess'), which is "
               "not a Keras or keras-mixer class")
    torn = rewrite_member(path, tmp_path / "torn.keras", "config.json", lambda content: content[:40])
    user_error(capsys, ["visualize", "tokens", torn, "--out", tmp_path / "t.png"],
               f"Cannot load {torn}: its member 'config.json' is not valid JSON")
    assert not os.path.exists(tmp_path / "t.png")


def test_corrupt_saved_model_pb_is_named(exported_mixer, tmp_path, capsys):
    version_dir = tmp_path / "mixer" / "1"
    shutil.copytree(exported_mixer.version_dir, version_dir)
    pb = version_dir / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:len(pb.read_bytes()) // 2])
    folder = labelled_folder(tmp_path / "photos")
    user_error(capsys, ["evaluate", version_dir, "--data", folder],
               f"Cannot load the SavedModel {version_dir}: {pb} is truncated or corrupt")
    with pytest.raises(ValueError, match="saved_model.pb is truncated or corrupt"):
        ModelRepository(str(tmp_path))


def test_disk_full_during_training_is_one_error_line(tmp_path):
    """``ulimit -f`` reached while the run writes: one error line, then the same command can go on."""
    run_dir = tmp_path / "run"
    result = run_cli_with_file_limit(["train", "--run-dir", run_dir, *QUICK_RUN], 16_000,
                                     keras.backend.backend())
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: No room to write the run's files in "
                                                     f"{run_dir}: the file size limit (ulimit -f)")
    assert "Traceback" not in result.stderr, result.stderr
    assert not [name for name in os.listdir(run_dir) if name.startswith(".tmp-")]


def fake_tflite(tmp_path, sidecar):
    path = tmp_path / "mixer.float32.tflite"
    path.write_bytes(b"not read: the sidecar is checked first")
    (tmp_path / "mixer.float32.tflite.json").write_text(sidecar)
    return str(path)


@pytest.mark.parametrize("sidecar, fragment", [
    ('{"crop_fraction": "abc"}', "gives crop_fraction 'abc'; it must be a number in (0, 1]"),
    ('{"crop_fraction": 5.0}', "gives crop_fraction 5.0; it must be a number in (0, 1]"),
    ('{"crop_fraction": 0.875', "is not valid JSON"),
    ('[0.875]', "expected a JSON object"),
])
def test_tflite_sidecar_is_checked(tmp_path, capsys, sidecar, fragment):
    path = fake_tflite(tmp_path, sidecar)
    folder = labelled_folder(tmp_path / "photos", classes=("a", "b"))
    user_error(capsys, ["evaluate", path, "--data", folder, "--split", "all"], path + ".json", fragment)


def test_non_utf8_folder_names_are_named(tmp_path, capsys):
    root = tmp_path / "photos"
    labelled_folder(root, classes=("a",))
    bad = os.path.join(os.fsencode(str(root)), b"caf\xe9")
    try:
        os.makedirs(bad)
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses non-UTF-8 names")
    tf.io.write_file(tf.constant(os.path.join(bad, b"0.png")), tf.io.encode_png(tf.zeros((8, 8, 3), tf.uint8)))
    model = tmp_path / "m.keras"
    model.write_text("the folder is read first")
    user_error(capsys, ["evaluate", model, "--data", root], "not valid UTF-8", "caf\\xe9")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        data.load_source(str(root))


def test_data_and_run_dir_that_are_files(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    user_error(capsys, ["train", "--data", a_file, "--run-dir", tmp_path / "run", *QUICK_RUN],
               f"--data '{a_file}' is a file")
    user_error(capsys, ["train", "--run-dir", a_file, *QUICK_RUN],
               "run_dir (--run-dir) is a file, not a folder")
    model = tmp_path / "m.keras"
    model.write_text("the folder is checked first")
    user_error(capsys, ["evaluate", model, "--data", a_file], f"--data '{a_file}' is a file")
    user_error(capsys, ["export", "saved-model", model, "--export-dir", a_file],
               f"--export-dir '{a_file}' is a file, not a folder")


def test_npz_named_pth_is_read_by_its_content(tmp_path):
    params = reference.random_params(8, 3, 32, 16, 16, 64, 2, num_classes=10)
    path = tmp_path / "mixer.pth"
    with open(path, "wb") as f:
        np.savez(f, **params)
    read = checkpoints.read_checkpoint(str(path))
    assert sorted(read) == sorted(params)
    np.testing.assert_array_equal(read["stem/kernel"], params["stem/kernel"])
    assert models.load_model(str(path)).config.num_classes == 10


def test_predict_reports_the_arrays_own_shape(tmp_path, capsys):
    path = tmp_path / "batch.npy"
    np.save(path, np.zeros((2, 16, 16), "float32"))
    user_error(capsys, ["predict", path, "--server", "127.0.0.1:1"],
               f"{path} has shape (2, 16, 16); expected (n, H, W, 3) or (H, W, 3)")
    with pytest.raises(serving.InvalidInputError, match=r"got \(2, 16, 16\)"):
        serving.prepare_inputs(np.zeros((2, 16, 16)))


# ----------------------------------------------------------------------------- §5 settings


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="model parallelism is JAX's")
def test_model_parallel_is_refused_off_jax():
    with pytest.raises(ValueError, match="model_parallel \\(--model-parallel\\) 3 splits the model "
                                         "over JAX devices"):
        distribute.setup_distribution(model_parallel=3)


def test_flags_out_of_range_are_usage_errors(capsys):
    usage_error(capsys, ["benchmark", "--repeats", "0"], "--repeats: must be at least 1")
    usage_error(capsys, ["visualize", "tokens", "w.npz", "--out", "t.png", "--units", "-5"],
                "--units: must be 0 or more")
    for flag, value in (("--grpc-port", "99999"), ("--rest-port", "-1")):
        usage_error(capsys, ["serve", flag, value], f"{flag}: a port is 0-65535")
    usage_error(capsys, ["serve", "--workers", "0"], "--workers: must be at least 1")


def test_predict_refuses_a_port_out_of_range(capsys):
    user_error(capsys, ["predict", "cat.jpg", "--server", "localhost:99999", "--timeout", "1"],
               "Invalid server address 'localhost:99999': the port must be a number in 1-65535")


def test_no_export_with_re_export_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="re_export \\(--re-export\\) exports the run again"):
        TrainConfig(export=False, re_export=True, run_dir=str(tmp_path / "run"))
    user_error(capsys, ["train", "--run-dir", tmp_path / "run", *QUICK_RUN, "--re-export"],
               "--no-export")


def test_init_from_a_model_with_no_matching_layer(tmp_path, capsys):
    other = str(tmp_path / "other.keras")
    models.MlpMixer(2, 1, 12, 6, 12, input_shape=(16, 16, 3), num_classes=10).save(other)
    user_error(capsys, ["train", "--init", other, "--run-dir", tmp_path / "run", *QUICK_RUN],
               f"--init {other}: none of its layers matches this model")
    assert not os.path.exists(tmp_path / "run" / "model.keras")


def test_a_class_of_undecodable_files_is_not_dropped(tmp_path, capsys):
    root = labelled_folder(tmp_path / "photos", classes=("a", "b"), per_class=10, size=16)
    for i in range(10):
        (tmp_path / "photos" / "c").mkdir(exist_ok=True)
        (tmp_path / "photos" / "c" / f"{i}.png").write_text("not a picture")
    err = user_error(capsys, ["train", "--data", root, "--run-dir", tmp_path / "run", *QUICK_RUN],
                     "Every image of class folder(s)", os.path.join(root, "c"))
    assert "so the class would have no examples" in err
    assert not os.path.exists(tmp_path / "run" / "model.keras")


def test_evaluate_refuses_a_model_with_nan_weights(tmp_path, capsys):
    model = tiny_classifier()
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    path = str(tmp_path / "nan.keras")
    model.save(path)
    folder = labelled_folder(tmp_path / "photos")
    user_error(capsys, ["evaluate", path, "--data", folder], f"Model {path} outputs NaN or Inf")
