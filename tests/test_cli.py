"""The command line: every command's --help, quiet start-up, user mistakes as one `error:` line."""

import argparse
import os

import numpy as np
import pytest
from helpers import reference
from helpers.processes import run_script
from helpers.tiny import LABELS

from keras_mixer import checkpoints, cli
from keras_mixer.cli import export

# Tests that behave the same under every Keras backend: scripts/test.sh runs them once.
BACKEND_INDEPENDENT = True

# TensorFlow / absl / CUDA start-up lines that must not reach a user's first screen.
NOISE = ("cuInit", "absl::InitializeLog", "oneDNN", "cpu_feature_guard", "Unable to register")


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    for argv, command, usage in (([name, "--help"], None, f"usage: keras-mixer {name}"),
                                 (["--help"], name, f"usage: {name}.py")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv, command=command, prog=None if command is None else f"{name}.py")
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith(usage)
        assert cli.COMMANDS[name] in out
        assert "--backend" in out and "--verbose" in out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


def test_common_options_around_a_subcommand():
    tokens = ["visualize", "tokens", "w.npz", "--out", "x.png"]
    assert cli.parse_args(tokens).verbose is False
    assert cli.parse_args(tokens + ["--verbose"]).verbose is True
    assert cli.parse_args(["visualize", "--verbose", "--backend", "jax"] + tokens[1:]).verbose is True
    assert cli.parse_args(tokens + ["--backend", "torch"]).backend == "torch"


def test_script_help_has_no_startup_noise():
    result = run_script("train.py", ["--help"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: train.py")
    assert not [word for word in NOISE if word in result.stdout + result.stderr], result.stderr


def test_script_user_error_is_one_line_and_verbose_shows_traceback():
    result = run_script("export.py", ["saved-model", "missing.keras"], timeout=300)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == "error: Model file not found: missing.keras"
    assert "Traceback" not in result.stderr
    assert not [word for word in NOISE if word in result.stderr], result.stderr
    verbose = run_script("export.py", ["saved-model", "missing.keras", "--verbose"], timeout=300)
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr and "FileNotFoundError: Model file not found" in verbose.stderr


def assert_user_error(capsys, argv, message):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[0].startswith("error: ") and message in lines[0], captured.err
    assert lines[1:] == ["(run with --verbose for the traceback)"]
    assert captured.out == ""


def test_user_mistakes(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    out = str(tmp_path / "out.png")
    assert_user_error(capsys, ["convert", missing + ".npz", str(tmp_path / "m.keras")],
                      f"Checkpoint file not found: {missing}.npz")
    assert_user_error(capsys, ["convert", missing + ".npz", str(tmp_path / "m.txt")], "Unsupported output")
    assert_user_error(capsys, ["export", "saved-model", missing + ".keras"], "Model file not found")
    assert_user_error(capsys, ["export", "onnx"], "Give a model file or --variant")
    assert_user_error(capsys, ["export", "tflite", "m.keras", "--variant", "B/16"], "not both")
    assert_user_error(capsys, ["visualize", "tokens", missing + ".keras", "--out", out], "Model file not found")
    assert_user_error(capsys, ["visualize", "gallery", missing + ".npz", "--out", out, "a.jpg"],
                      "Checkpoint file not found")
    assert_user_error(capsys, ["serve", missing], "Model base directory not found")
    assert_user_error(capsys, ["predict"], "Give image files")
    assert not os.listdir(tmp_path)


def test_verbose_lists_every_checkpoint_problem(tmp_path, capsys):
    params = reference.random_params(8, 3, 32, 16, 16, 64, 2, num_classes=10)
    for key in [k for k in params if k.startswith("MixerBlock_1/LayerNorm")]:
        del params[key]  # 4 missing keys
    params.update({f"extra_{i}": np.zeros(3, "float32") for i in range(4)})  # 4 unexpected keys
    checkpoint = str(tmp_path / "broken.npz")
    np.savez(checkpoint, **params)
    argv = ["convert", checkpoint, str(tmp_path / "m.keras")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "and 2 more" in err and "extra_3" not in err
    with pytest.raises(checkpoints.CheckpointError) as error:
        cli.main(argv + ["--verbose"])
    err = capsys.readouterr().err
    assert err.startswith("All 8 problems:")
    assert all(f"  - {problem}" in err for problem in error.value.problems)
    assert "extra_3" in err and "MixerBlock_1/LayerNorm_1/bias" in err


def export_args(*argv):
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    return parser.parse_args(argv)


def test_export_builds_variants_as_before(tmp_path):
    model = export.build_model(export_args("saved-model", "--variant", "S/32", "--image-size", "64",
                                           "--num-classes", "3"))
    assert model.config.image_size == (64, 64) and model.config.num_classes == 3
    assert model.config.tokens_mlp_dim == 256  # built at 64 px, not moved there from 224
    weights = str(tmp_path / "s32.weights.h5")
    checkpoints.save_weights(model, weights)
    again = export.build_model(export_args("saved-model", "--variant", "S/32", "--weights", weights,
                                           "--image-size", "64", "--num-classes", "3"))
    np.testing.assert_array_equal(again.head.get_weights()[0], model.head.get_weights()[0])
    with pytest.raises(ValueError, match="go with --variant"):
        export.build_model(export_args("saved-model", "m.keras", "--num-classes", "3"))


def test_export_command(exported_mixer, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    export_dir = str(tmp_path / "models")
    assert_user_error(capsys, ["export", "tflite", exported_mixer.keras_path, "--export-dir", export_dir,
                               "--modes", "float32", "int8"],
                      "TFLite modes int8 need calibration images: pass --representative-images DIR")
    assert cli.main(["export", "all", exported_mixer.keras_path, "--export-dir", export_dir,
                     "--name", "tiny", "--labels", str(labels), "--modes", "float32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"Wrote {os.path.join(export_dir, 'tiny', '1')}",
                          f"Wrote {os.path.join(export_dir, 'tiny.float32.tflite')}"]
    assert sorted(os.listdir(export_dir)) == ["tiny", "tiny.float32.tflite",
                                              "tiny.float32.tflite.json", "tiny.labels.txt"]
    assert os.listdir(os.path.join(export_dir, "tiny")) == ["1"]
